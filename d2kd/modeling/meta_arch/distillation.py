"""What every distillation meta-architecture shares, whatever the detector and the methods.

A distillation model *is* the student detector (a subclass of its Detectron2 class), plus a
frozen teacher held outside the module tree and a ``ModuleList`` of distillers. In inference it
is exactly the student. This file knows nothing of any particular method.
"""
import math
from typing import Dict, List, Sequence

from torch import Tensor, nn

from detectron2.structures import ImageList

from ...checkpoint import OPT_IN_YACS_TEACHER
from ...distill.base import Distiller
from ...teacher import TEACHER_PARTS, Teacher
from ..records import DetectorRecord


def current_iteration() -> int:
    from detectron2.utils.events import get_event_storage

    try:
        return get_event_storage().iter
    except AssertionError:  # outside a trainer (e.g. a unit test): schedules see iteration 0
        return 0


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
        for d in self.distillers:
            if not isinstance(d, Distiller):
                raise TypeError(f"distillers must be d2kd Distiller instances, got {type(d).__name__}")
            d.bind(self, teacher)  # may decide its needs from the two models
            self._check_needs(d)
        self.teacher_needs = sorted(set().union(*[d.teacher_needs() for d in self.distillers]) | {"features"})
        # Student and teacher see the same padded size, so same-stride maps align cell by cell.
        s, t = self.backbone.size_divisibility, teacher.size_divisibility
        self.train_size_divisibility = s * t // math.gcd(s, t) if s and t else max(s, t)
        teacher.apply(lambda x: x.to(self.device))

    @classmethod
    def from_config(cls, cfg):
        """yacs: the student's own arguments plus ``MODEL.DISTILL``'s teacher and distillers."""
        from ...distill.build import build_distillers_from_cfg
        from ...teacher import build_teacher

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
        from ...teacher import detector_num_classes

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
            raise ValueError(
                f"{d.name} needs teacher outputs {sorted(lacking)} that the teacher "
                f"({type(self.teacher.model).__name__}) does not have (it has {self.teacher.parts()})"
            )
        lacking = set(d.student_needs()) - set(self.student_parts)
        if lacking:
            raise ValueError(
                f"{d.name} needs student outputs {sorted(lacking)} that {type(self).__name__} "
                f"does not record (it records {list(self.student_parts)})"
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
                losses[f"loss_kd_{d.name}_{term}"] = value.float() * factor
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

    # ---- trainer integration ----------------------------------------------------------------
    def build_hooks(self, cfg) -> List:
        hooks = []
        for d in self.distillers:
            hooks.extend(d.build_hooks(cfg))
        return hooks
