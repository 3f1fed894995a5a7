"""``DistillationRCNN``: a Detectron2 ``GeneralizedRCNN`` student taught by a frozen teacher."""
from typing import Dict, List, Sequence

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.utils.events import get_event_storage

from ...records import DetectorRecord, roi_heads_training, rpn_outputs
from ...teacher import Teacher
from .distillation import DistillationMixin


@META_ARCH_REGISTRY.register()
class DistillationRCNN(DistillationMixin, GeneralizedRCNN):
    """Training: the student's RPN/ROI losses plus every distiller's losses.
    Inference: ``GeneralizedRCNN.forward`` of the student alone; the teacher is not run."""

    student_class = GeneralizedRCNN
    student_parts = ("features", "rpn", "roi")

    @configurable
    def __init__(self, *, teacher: Teacher, distillers: Sequence = (), **kwargs):
        """
        Args:
            teacher: the frozen teacher (:func:`d2kd.teacher.build_teacher`).
            distillers: :class:`d2kd.distill.Distiller` instances, composed in one run.
            kwargs: the student's ``GeneralizedRCNN`` arguments.
        """
        super().__init__(**kwargs)
        if self.proposal_generator is None:
            raise ValueError("DistillationRCNN needs an RPN (precomputed proposals are not supported)")
        self._init_distillation(teacher, distillers)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        self.before_distillation_step()
        images, teacher_images = self.preprocess_pair(batched_inputs)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        features = self.backbone(images.tensor)
        rpn, proposals, proposal_losses = rpn_outputs(self.proposal_generator, images, features, gt_instances)
        roi, detector_losses = roi_heads_training(self.roi_heads, features, proposals, gt_instances)
        if self.vis_period > 0:
            if get_event_storage().iter % self.vis_period == 0:  # as GeneralizedRCNN.forward
                self.visualize_training(batched_inputs, proposals)
        student = DetectorRecord(images=images, features=features, gt_instances=gt_instances, rpn=rpn, roi=roi)
        losses = self.scale_detector_losses({**detector_losses, **proposal_losses})
        losses.update(self.distillation_losses(student, teacher_images))
        return losses
