"""``DistillationRetinaNet``: a Detectron2 ``RetinaNet`` student taught by a frozen teacher."""
from typing import Dict, List, Sequence

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from ...records import DetectorRecord, retinanet_head_outputs
from ...teacher import Teacher
from .distillation import DistillationMixin


@META_ARCH_REGISTRY.register()
class DistillationRetinaNet(DistillationMixin, RetinaNet):
    """Training: focal + box losses plus every distiller's losses.
    Inference: ``RetinaNet.forward`` of the student alone; the teacher is not run."""

    student_class = RetinaNet
    student_parts = ("features", "head")

    @configurable
    def __init__(self, *, teacher: Teacher, distillers: Sequence = (), **kwargs):
        super().__init__(**kwargs)
        self._init_distillation(teacher, distillers)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        self.before_distillation_step()
        images, teacher_images = self.preprocess_pair(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        head = retinanet_head_outputs(self, features)
        # RetinaNet.forward_training, with the GT matching kept in the record.
        gt_labels, gt_boxes = self.label_anchors(head.anchors, gt_instances)
        losses = self.scale_detector_losses(
            self.losses(head.anchors, head.cls_logits, gt_labels, head.box_deltas, gt_boxes))
        head.gt_labels, head.gt_boxes = torch.stack(gt_labels), torch.stack(gt_boxes)
        student = DetectorRecord(images=images, features=features, gt_instances=gt_instances, head=head)
        losses.update(self.distillation_losses(student, teacher_images))
        return losses

