"""``DistillationSSD``: a d2kd ``SSD`` student taught by a frozen SSD teacher.

The SSD-KD reference (docs/methods.md §1.2) distils per prior: the teacher (VGG16-SSD300 re-headed to
the student's 3000-prior layout, ``VGG16SSD(layout="aligned")``) and the student
(MobileNetV2-SSDLite) predict on the *same* priors, so their logits/deltas are compared row by
row. Training: the student's own ``SSD.training_step`` (SSD multibox loss) + distillers; the
student record's ``ssd`` slot is its :class:`d2kd.records.SSDRecord`. Inference: the plain
student ``SSD``; the teacher is never run in eval.
"""
from typing import Dict, List, Sequence

from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import move_device_like
from detectron2.modeling import META_ARCH_REGISTRY

from ...records import DetectorRecord
from ...teacher import Teacher
from .distillation import DistillationMixin
from .ssd import SSD

__all__ = ["DistillationSSD"]


@META_ARCH_REGISTRY.register()
class DistillationSSD(DistillationMixin, SSD):
    """Training: the SSD multibox loss (matching, 3:1 hard-negative mining) of the student plus
    every distiller's losses. Inference: ``SSD.forward`` of the student alone; the teacher is not
    run. The student record's ``ssd`` slot is a :class:`d2kd.records.SSDRecord`; the teacher's
    record gets one too when a distiller asks for the part ``"ssd"``.

    An exported checkpoint (``distillers.`` stripped) loads into the stock :class:`SSD`."""

    student_class = SSD
    student_parts = ("features", "ssd")

    @configurable
    def __init__(self, *, teacher: Teacher, distillers: Sequence = (), **kwargs):
        """
        Args:
            teacher: the frozen teacher (:func:`d2kd.teacher.build_teacher`).
            distillers: :class:`d2kd.distill.Distiller` instances, composed in one run.
            kwargs: the student's ``SSD`` arguments.
        """
        super().__init__(**kwargs)
        self._init_distillation(teacher, distillers)

    def _move_to_current_device(self, x: Tensor) -> Tensor:  # used by preprocess_pair
        return move_device_like(x, self.pixel_mean)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            return super().forward(batched_inputs)
        if not all("instances" in x for x in batched_inputs):
            raise ValueError("DistillationSSD training needs 'instances' in every input")
        self.before_distillation_step()
        images, teacher_images = self.preprocess_pair(batched_inputs)
        features = self.extract_features(images)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        ssd, losses = self.training_step(images, features, gt_instances)  # the plain SSD's step
        losses = self.scale_detector_losses(losses)
        student = DetectorRecord(images=images, features=features, gt_instances=gt_instances, ssd=ssd)
        losses.update(self.distillation_losses(student, teacher_images))
        return losses
