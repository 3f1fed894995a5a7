"""``DistillationFCOS``: a Detectron2 ``FCOS`` student taught by a frozen teacher.

Detectron2 builds FCOS from LazyConfig only (it has no yacs ``from_config``), so this class is
LazyConfig-only too."""
from typing import Dict, List, Sequence

import torch

from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.fcos import FCOS

from ...records import DetectorRecord, fcos_head_outputs
from ...teacher import Teacher
from .distillation import DistillationMixin


@META_ARCH_REGISTRY.register()
class DistillationFCOS(DistillationMixin, FCOS):
    """Training: FCOS's focal, box and centerness losses plus every distiller's losses.
    Inference: ``FCOS.forward`` of the student alone; the teacher is not run."""

    student_class = FCOS
    student_parts = ("features", "head")

    def __init__(self, *, teacher: Teacher, distillers: Sequence = (), input_format: str = "BGR", **kwargs):
        """``input_format``: the channel order of the pixels (Detectron2's FCOS has no such
        argument and reads BGR, ``pixel_mean``'s order); the teacher's images are converted
        from it."""
        super().__init__(**kwargs)
        self.input_format = input_format
        self._init_distillation(teacher, distillers)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        self.before_distillation_step()
        images, teacher_images = self.preprocess_pair(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        head = fcos_head_outputs(self, features)
        # FCOS.forward_training, with the GT matching kept in the record.
        gt_labels, gt_boxes = self.label_anchors(head.anchors, gt_instances)
        # FCOS's losses in float32 (a no-op without autocast): under train.amp the head's outputs
        # are float16/bfloat16 and fvcore's giou_loss, FCOS's box loss, fails on them (an
        # index_put of float32 into a half tensor; facebookresearch/fvcore pull request #114).
        with torch.autocast(images.tensor.device.type, enabled=False):
            losses = self.scale_detector_losses(self.losses(
                head.anchors, _float(head.cls_logits), gt_labels, _float(head.box_deltas), gt_boxes,
                _float(head.centerness)))
        head.gt_labels, head.gt_boxes = torch.stack(gt_labels), torch.stack(gt_boxes)
        student = DetectorRecord(images=images, features=features, gt_instances=gt_instances, head=head)
        losses.update(self.distillation_losses(student, teacher_images))
        return losses


def _float(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    return [t.float() for t in tensors]
