"""The frozen teacher: built from its own config, loaded with Detectron2's checkpointer.

The teacher is deliberately *not* an ``nn.Module`` attribute of the student model: it stays out
of ``parameters()``, ``state_dict()``, the optimizer and DDP, so student checkpoints are
student-only by construction. The distillation meta-architectures move it with the student
(``_apply``) and keep it in ``eval()`` whatever mode the student is put in.
"""
import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from detectron2.structures import ImageList

from .checkpoint import load_weights
from .config import build_model_from_config_file
from .records import (
    TEACHER_PART_TABLE,
    DenseHeadLayout,
    DetectorRecord,
    RecordLayout,
    dense_head_layout,
    detector_num_classes,
    record_layout,
)
from .runtime import native_bfloat16

logger = logging.getLogger(__name__)

#: Values of ``Teacher(autocast_dtype=...)``.
AUTOCAST_DTYPES = (None, "float16", "bfloat16", "auto")


class Teacher:
    """A frozen detector that computes, without autograd, the parts distillers ask for."""

    def __init__(
        self, model: nn.Module, *, config_file: str = "", weights: str = "", autocast_dtype: Optional[str] = None
    ):
        """
        Args:
            autocast_dtype: run the teacher under ``torch.autocast`` in this dtype ("float16" or
                "bfloat16"), e.g. on CUDA to halve its cost; its outputs then reach the losses in
                that dtype and the distillers compute in fp32. ``"auto"``: bfloat16 where the
                device computes it natively (:func:`native_bfloat16`), else the model's own
                dtype. ``None`` (or "float32"): the model's own dtype.
        """
        self.model = model
        self.config_file = config_file
        self.weights = weights
        if autocast_dtype in ("float32", "None"):  # "None": a command-line override reaches here as a string
            autocast_dtype = None
        if autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"teacher autocast_dtype must be one of {AUTOCAST_DTYPES}, got {autocast_dtype!r}"
            )
        self.autocast_dtype = autocast_dtype
        self._auto_dtypes: Dict[str, Optional[torch.dtype]] = {}  # device type -> "auto" resolved once
        self.level_aliases: Dict[str, str] = {}  # the student's level name -> the teacher's (align_levels)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    # ---- what it is -------------------------------------------------------------------------
    @property
    def input_format(self) -> str:
        return getattr(self.model, "input_format", "BGR")

    @property
    def size_divisibility(self) -> int:
        return self.model.backbone.size_divisibility

    @property
    def num_classes(self) -> Optional[int]:
        return detector_num_classes(self.model)

    def output_shape(self):
        """The backbone's levels, plus each alias of :meth:`align_levels` (the student's name)."""
        shapes = dict(self.model.backbone.output_shape())
        shapes.update({alias: shapes[own] for alias, own in self.level_aliases.items()})
        return shapes

    def align_levels(self, student_shapes) -> Dict[str, str]:
        """Also name each teacher level by the student's name for the same stride, where the
        names differ (e.g. a VGG teacher's ``fc7`` is the MobileNet student's ``expand14``, both
        stride 16): feature methods then pair levels by stride with no change. Only unambiguous
        pairs (one level of that stride on each side, the student's name unused by the teacher);
        the teacher's own names stay valid. Returns ``{student name: teacher name}``."""
        own = self.model.backbone.output_shape()

        def by_stride(shapes):
            out = {}
            for name, shape in shapes.items():
                out.setdefault(shape.stride, []).append(name)
            return out

        s_strides, t_strides = by_stride(student_shapes), by_stride(own)
        self.level_aliases = {
            s_names[0]: t_strides[stride][0]
            for stride, s_names in s_strides.items()
            if len(s_names) == 1 and len(t_strides.get(stride, ())) == 1
            and s_names[0] not in own and t_strides[stride][0] not in student_shapes
        }
        return dict(self.level_aliases)

    def parts(self) -> List[str]:
        """The parts (of ``d2kd.records.TEACHER_PARTS``) this teacher's architecture can produce."""
        return [name for name, part in TEACHER_PART_TABLE.items() if part.present(self.model)]

    def layout(self) -> RecordLayout:
        """What a record of the teacher's model holds (:func:`d2kd.records.record_layout`)."""
        return record_layout(self.model)

    def dense_head_layout(self) -> Optional[DenseHeadLayout]:
        """The anchor layout of the dense head that ``record`` fills ``head`` from, or None."""
        return dense_head_layout(self.model)

    # ---- staying frozen ---------------------------------------------------------------------
    def apply(self, fn) -> None:
        """Follow the student's device/dtype moves (called from the student's ``_apply``)."""
        self.model._apply(fn)

    def train(self, mode: bool = True) -> "Teacher":
        # Frozen BN statistics and deterministic heads: the teacher never leaves eval mode.
        self.model.eval()
        return self

    # ---- computing --------------------------------------------------------------------------
    def normalize(self, images: List[Tensor], student_format: str, size_divisibility: int) -> ImageList:
        """The teacher's own normalisation of the student's augmented (raw pixel) images."""
        model = self.model
        if self.input_format != student_format:
            if {self.input_format, student_format} != {"RGB", "BGR"}:
                raise ValueError(
                    f"teacher input format {self.input_format} cannot be derived from the "
                    f"student's {student_format}; only RGB<->BGR is supported"
                )
            images = [x.flip(0) for x in images]
        images = [(x - model.pixel_mean) / model.pixel_std for x in images]
        constraints = dict(getattr(model.backbone, "padding_constraints", {}) or {})
        constraints["size_divisibility"] = size_divisibility
        return ImageList.from_tensors(images, size_divisibility, padding_constraints=constraints)

    @torch.no_grad()
    def record(self, images: ImageList, needs: Sequence[str], student: DetectorRecord) -> DetectorRecord:
        """Run only the teacher parts in ``needs`` on ``images``.

        ``torch.no_grad`` rather than ``inference_mode``: inference tensors cannot be saved for
        the student's backward (``s * t`` saves ``t``), and no graph is kept either way.
        """
        model = self.model
        device_type = images.tensor.device.type
        dtype = self.compute_dtype(device_type)
        if dtype is not None:
            with torch.autocast(device_type, dtype=dtype):
                return self._record(model, images, needs, student)
        return self._record(model, images, needs, student)

    def compute_dtype(self, device_type: str) -> Optional[torch.dtype]:
        """The autocast dtype the teacher runs in on ``device_type`` (None: no autocast)."""
        if self.autocast_dtype == "auto":  # probed once per device type, not on every step
            if device_type not in self._auto_dtypes:
                self._auto_dtypes[device_type] = torch.bfloat16 if native_bfloat16(device_type) else None
            return self._auto_dtypes[device_type]
        return None if self.autocast_dtype is None else getattr(torch, self.autocast_dtype)

    def _record(self, model, images: ImageList, needs: Sequence[str], student: DetectorRecord) -> DetectorRecord:
        features: Dict[str, Tensor] = model.backbone(images.tensor)
        # the student's names for the same-stride levels (align_levels): the same tensors
        recorded = {**features, **{alias: features[own] for alias, own in self.level_aliases.items()}}
        out = DetectorRecord(images=images, features=recorded, gt_instances=student.gt_instances)
        for name, part in TEACHER_PART_TABLE.items():  # the table's order, whatever the order of needs
            if part.record is not None and name in needs:
                setattr(out, name, part.record(model, images, features, student))
        return out


def build_teacher(
    *,
    config_file: str,
    weights: str,
    opts: Sequence[str] = (),
    strict: bool = True,
    autocast_dtype: Optional[str] = None,
    allow_pickle: bool = False,
    opt_in: Optional[str] = None,
) -> Teacher:
    """Build a teacher from its own config file and weights (the LazyConfig target).

    Args:
        config_file: LazyConfig ``.py``/``.yaml``, yacs ``.yaml`` or a model-zoo config name.
        weights: checkpoint for ``DetectionCheckpointer`` (``.pth`` or model-zoo ``.pkl``).
        opts: overrides in the config's own syntax (``key=value`` lazy, ``KEY value`` yacs).
        strict: missing/unexpected keys or shape mismatches are an error (else a warning).
        autocast_dtype: see :class:`Teacher` (e.g. "float16" on CUDA, "auto": bfloat16 where native).
        allow_pickle: load weight files that need full pickle (arbitrary objects), with a
            warning; without it only tensors/numpy arrays and plain types are read.
        opt_in: the caller's name for ``allow_pickle``, given in a refusal (the yacs route:
            ``MODEL.DISTILL.TEACHER.ALLOW_PICKLE``); default the LazyConfig keys.
    """
    model = build_model_from_config_file(config_file, opts)
    load_weights(
        model, weights, what=f"teacher ({config_file})", strict=strict, allow_pickle=allow_pickle, opt_in=opt_in
    )
    logger.info("Teacher built from %s with weights %s", config_file, weights)
    return Teacher(model, config_file=config_file, weights=weights, autocast_dtype=autocast_dtype)
