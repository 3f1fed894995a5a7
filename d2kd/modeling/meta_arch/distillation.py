"""What every distillation meta-architecture shares, whatever the detector and the methods.

A distillation model *is* the student detector (a subclass of its Detectron2 class), plus a
frozen teacher held outside the module tree and a ``ModuleList`` of distillers. In inference it
is exactly the student. This file knows nothing of any particular method.
"""
import logging
import math
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from detectron2.structures import ImageList

from ...checkpoint import OPT_IN_YACS_TEACHER
from ...distill.base import Distiller, kd_loss_key
from ...distill.build import build_distillers_from_cfg
from ...records import (
    TEACHER_PART_TABLE,
    TEACHER_PARTS,
    DetectorRecord,
    check_paired_part,
    detector_num_classes,
)
from ...runtime import current_iteration
from ...teacher import Teacher, build_teacher

logger = logging.getLogger(__name__)


class DistillationMixin:
    """Teacher handling, paired preprocessing and loss collection for a student detector.

    The student class (``GeneralizedRCNN``, ``RetinaNet``, ...) comes after this mixin in the
    MRO; subclasses call :meth:`_init_distillation` at the end of ``__init__``.
    """

    #: The stock Detectron2 class of the student, what an exported checkpoint loads into.
    student_class: type = None
    #: Student parts this meta-architecture records (distillers' ``student_needs`` must fit).
    student_parts: Sequence[str] = ("features",)

    def _init_distillation(self, teacher: Teacher, distillers: Sequence[Distiller]) -> None:
        if not isinstance(teacher, Teacher):
            raise TypeError(
                f"{type(self).__name__}: 'teacher' must be a d2kd Teacher (build it with "
                f"d2kd.teacher.build_teacher), got {type(teacher).__name__}"
            )
        # object.__setattr__ keeps the teacher out of nn.Module's registries on purpose.
        object.__setattr__(self, "teacher", teacher)
        self.distillers = nn.ModuleList(distillers)
        self._check_teacher()
        # levels of equal stride pair under the student's names, whatever the teacher calls them
        teacher.align_levels(self.backbone.output_shape())
        for d in self.distillers:
            if not isinstance(d, Distiller):
                raise TypeError(f"distillers must be d2kd Distiller instances, got {type(d).__name__}")
            d.bind(self, teacher)  # may decide its needs from the two models
            self._check_needs(d)
        self._check_weights()
        self.teacher_needs = sorted(set().union(*[d.teacher_needs() for d in self.distillers]) | {"features"})
        # Student and teacher see the same padded size, so same-stride maps align cell by cell.
        s, t = self.backbone.size_divisibility, teacher.size_divisibility
        self.train_size_divisibility = s * t // math.gcd(s, t) if s and t else max(s, t)
        teacher.apply(lambda x: x.to(self.device))

    @classmethod
    def from_config(cls, cfg):
        """yacs: the student's own arguments plus ``MODEL.DISTILL``'s teacher and distillers."""
        ret = cls.student_class.from_config(cfg)
        t = cfg.MODEL.DISTILL.TEACHER
        ret["teacher"] = build_teacher(
            config_file=t.CONFIG_FILE,
            weights=t.WEIGHTS,
            opts=t.OPTS,
            allow_pickle=t.get("ALLOW_PICKLE", False),
            opt_in=OPT_IN_YACS_TEACHER,
        )
        ret["distillers"] = build_distillers_from_cfg(cfg)
        return ret

    # ---- checks at build time -----------------------------------------------------------------
    def _check_teacher(self):
        s, t = detector_num_classes(self), self.teacher.num_classes
        if s is not None and t is not None and s != t:
            raise ValueError(
                f"teacher has {t} classes but the student has {s} ({self.teacher.config_file}, "
                f"{self.teacher.weights}): distil between models of the same label space"
            )
        if self.teacher.input_format not in ("RGB", "BGR") or self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"teacher input format {self.teacher.input_format} and student "
                f"{self.input_format}: only RGB/BGR images are supported"
            )

    def _check_needs(self, d: Distiller):
        unknown = set(d.teacher_needs()) - set(TEACHER_PARTS)
        if unknown:
            raise ValueError(f"{d.name}: unknown teacher parts {sorted(unknown)}; known: {TEACHER_PARTS}")
        lacking = set(d.teacher_needs()) - set(self.teacher.parts())
        if lacking:
            workaround = [w for w in (d.without(part) for part in sorted(lacking)) if w]
            hint = (f"; {type(d).__name__} runs without it with {' and '.join(dict.fromkeys(workaround))}"
                    if workaround else "; pick a teacher that has it")
            raise ValueError(
                f"{type(d).__name__} needs teacher outputs {sorted(lacking)} ({', '.join(TEACHER_PART_TABLE[p].meaning for p in sorted(lacking))}) "
                f"that the teacher ({type(self.teacher.model).__name__}) does not have (it has "
                f"{self.teacher.parts()}){hint}"
            )
        lacking = set(d.student_needs()) - set(self.student_parts)
        if lacking:
            raise ValueError(
                f"{type(d).__name__} needs student outputs {sorted(lacking)} that {type(self).__name__} "
                f"does not record (it records {list(self.student_parts)})"
            )
        for part in sorted(d.paired_needs()):
            check_paired_part(part, type(d).__name__, self, self.teacher.model)

    def _check_weights(self):
        """A run whose every KD multiplier is 0 trains the student alone, at the teacher's cost."""
        if self.distillers and all(d.weight == 0 for d in self.distillers):
            logger.warning(
                "every distiller's weight is 0 (%s): this run trains the student without "
                "distillation, but still runs the teacher at every step",
                ", ".join(f"{type(d).__name__}.weight" for d in self.distillers),
            )

    # ---- the teacher follows the student, but stays frozen ----------------------------------
    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if "teacher" in self.__dict__:
            self.teacher.apply(fn)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if "teacher" in self.__dict__:
            self.teacher.train(False)
        return self

    # ---- one training step ------------------------------------------------------------------
    def before_distillation_step(self) -> None:
        """Each distiller's own periodic work (``Distiller.before_step``), at the start of every
        training forward: the model, not the trainer, keeps the methods' state up to date, so
        any trainer that calls ``model(batch)`` trains the methods as published."""
        iteration = current_iteration()
        for d in self.distillers:
            d.before_step(iteration, self)

    @torch.no_grad()
    def inference_features(self, image: Tensor, *, teacher: bool = True):
        """Backbone features of one raw image (C, H, W) as the student and the teacher see it in
        training (``preprocess_pair``), both models in eval mode, outside any autocast. Returns
        ``(student features, padded (H, W), teacher features or None, padded (H, W))``."""
        was_training = self.training
        self.train(False)
        try:
            with torch.autocast(self.device.type, enabled=False):
                s_images, t_images = self.preprocess_pair([{"image": image}])
                s = self.backbone(s_images.tensor)
                t = self.teacher.model.backbone(t_images.tensor) if teacher else None
        finally:
            self.train(was_training)
        return s, tuple(s_images.tensor.shape[-2:]), t, tuple(t_images.tensor.shape[-2:])

    def preprocess_pair(self, batched_inputs: List[Dict]):
        """The student's and the teacher's normalisation of the same augmented images."""
        raw = [self._move_to_current_device(x["image"]) for x in batched_inputs]
        div = self.train_size_divisibility
        constraints = dict(getattr(self.backbone, "padding_constraints", {}) or {})
        constraints["size_divisibility"] = div
        student = ImageList.from_tensors(
            [(x - self.pixel_mean) / self.pixel_std for x in raw], div, padding_constraints=constraints
        )
        teacher = self.teacher.normalize([x.float() for x in raw], self.input_format, div)
        return student, teacher

    def distillation_losses(self, student: DetectorRecord, teacher_images: ImageList) -> Dict[str, Tensor]:
        teacher = self.teacher.record(teacher_images, self.teacher_needs, student)
        iteration = current_iteration()
        losses = {}
        for d in self.distillers:
            factor = d.loss_factor(iteration)
            for term, value in d(student, teacher).items():
                losses[kd_loss_key(d.name, term)] = value.float() * factor
        return losses

    def scale_detector_losses(self, losses: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Apply every distiller's ``detector_loss_scales()`` to the student's own losses."""
        iteration = current_iteration()
        for d in self.distillers:
            on = d.schedule(iteration)
            for key, factor in d.detector_loss_scales().items():
                if key not in losses:
                    raise KeyError(
                        f"{d.name} scales the detector loss '{key}', but {type(self).__name__} "
                        f"computes only {sorted(losses)}"
                    )
                losses[key] = losses[key] * (1.0 + on * (factor - 1.0))
        return losses
