"""The frozen teacher: built from its own config, loaded with Detectron2's checkpointer.

The teacher is deliberately *not* an ``nn.Module`` attribute of the student model: it stays out
of ``parameters()``, ``state_dict()``, the optimizer and DDP, so student checkpoints are
student-only by construction. The distillation meta-architectures move it with the student
(``_apply``) and keep it in ``eval()`` whatever mode the student is put in.
"""
import logging
import os
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor, nn

from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.modeling import build_model
from detectron2.structures import ImageList

from .modeling.parts import dense_head_layout, retinanet_head_outputs, roi_box_outputs, rpn_outputs
from .modeling.records import DenseHeadLayout, DetectorRecord

logger = logging.getLogger(__name__)

#: Parts of the teacher a distiller may ask for (see ``Distiller.teacher_needs``).
#: "ssd": an SSD teacher's per-prior logits/deltas/priors, recorded in ``extras["ssd"]``
#: (:func:`d2kd.modeling.meta_arch.distill_ssd.ssd_outputs`).
TEACHER_PARTS = ("features", "rpn", "roi", "head", "ssd")
#: Values of ``Teacher(autocast_dtype=...)``.
AUTOCAST_DTYPES = (None, "float16", "bfloat16", "auto")


def native_bfloat16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX (there the quick benchmark's teacher forward ran 1.64x faster than
    in fp32; elsewhere CPU bfloat16 is emulated and slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = getattr(torch, "cpu", None)  # private probes: absent in some builds -> not native
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    return False


def resolve_config_file(config_file: str) -> str:
    """A path as given, else a Detectron2 model-zoo name (``COCO-Detection/…yaml``)."""
    if os.path.isfile(config_file):
        return config_file
    try:
        from detectron2 import model_zoo

        return model_zoo.get_config_file(config_file)
    except RuntimeError:
        raise FileNotFoundError(
            f"teacher config '{config_file}' is neither a file nor a Detectron2 model-zoo config "
            f"name; give a path to its .py/.yaml file"
        ) from None


def _is_yacs_yaml(path: str) -> bool:
    import yaml

    with open(path) as f:
        content = yaml.safe_load(f) or {}
    return "_BASE_" in content or "MODEL" in content


def build_model_from_config_file(config_file: str, opts: Sequence[str] = ()) -> nn.Module:
    """Build (but do not load) a model from a LazyConfig ``.py``/``.yaml`` or a yacs ``.yaml``."""
    path = resolve_config_file(config_file)
    if path.endswith(".yaml") and _is_yacs_yaml(path):
        from .config import add_d2kd_config

        cfg = get_cfg()
        add_d2kd_config(cfg)
        cfg.merge_from_file(path)
        cfg.merge_from_list(list(opts))
        cfg.MODEL.DEVICE = "cpu"
        return build_model(cfg)
    cfg = LazyConfig.load(path)
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    return instantiate(cfg.model)


def load_weights(
    model: nn.Module,
    weights: str,
    *,
    what: str,
    strict: bool = True,
    allow_pickle: bool = False,
    opt_in: Optional[str] = None,
) -> None:
    """Load ``weights`` with ``DetectionCheckpointer``; mismatches are an error unless not strict.

    ``opt_in``: how the caller's config allows full pickle, named when a file is refused
    (default: the LazyConfig keys, ``d2kd.checkpoint.OPT_IN_TRAIN``).
    """
    if not weights:
        raise ValueError(f"{what}: no weights file given; a frozen random {what} teaches nothing")
    if not os.path.isfile(weights) and "://" not in weights:
        raise FileNotFoundError(f"{what} weights file not found: {weights}")
    from .checkpoint import ReportingCheckpointer

    # weights_only loading; full pickle only with allow_pickle (see d2kd.checkpoint)
    checkpointer = ReportingCheckpointer(model, allow_pickle=allow_pickle, **({"opt_in": opt_in} if opt_in else {}))
    try:
        checkpointer.load(weights)
    except Exception as e:
        raise RuntimeError(f"{what} weights file {weights} could not be read ({type(e).__name__}: {e})") from e
    incompatible = checkpointer.incompatible
    if incompatible is None:
        raise RuntimeError(f"{what} weights file {weights} holds no model state")
    problems = []
    if incompatible.incorrect_shapes:
        shapes = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes[:3])
        problems.append(f"{len(incompatible.incorrect_shapes)} shape mismatches ({shapes})")
    if incompatible.missing_keys:
        problems.append(
            f"{len(incompatible.missing_keys)} missing keys (e.g. {incompatible.missing_keys[:3]})"
        )
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected keys (e.g. {incompatible.unexpected_keys[:3]})"
        )
    if problems:
        msg = f"{what} weights {weights} do not fit its config: " + "; ".join(problems)
        if strict:
            raise RuntimeError(msg + ". Check the config/weights pair (or pass strict=False).")
        logger.warning(msg)


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
        return self.model.backbone.output_shape()

    def parts(self) -> List[str]:
        """The parts (of ``TEACHER_PARTS``) this teacher's architecture can produce."""
        parts = ["features"]
        if getattr(self.model, "proposal_generator", None) is not None:
            parts.append("rpn")
        if getattr(self.model, "roi_heads", None) is not None:
            parts.append("roi")
        if self.dense_head_layout() is not None:  # not every model with a `head` (FCOS's is not)
            parts.append("head")
        if hasattr(self.model, "prior_generator") and hasattr(self.model, "predict"):
            parts.append("ssd")
        return parts

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
        out = DetectorRecord(images=images, features=features, gt_instances=student.gt_instances)
        if "rpn" in needs:
            out.rpn, _, _ = rpn_outputs(model.proposal_generator, images, features, proposals=False)
        if "roi" in needs:
            # Same sampled boxes as the student: box coordinates are in the shared image frame.
            out.roi = roi_box_outputs(model.roi_heads, features, student.roi.proposals)
        if "head" in needs:
            out.head = retinanet_head_outputs(model, features)
        if "ssd" in needs:
            from .modeling.meta_arch.distill_ssd import ssd_outputs

            out.extras["ssd"] = ssd_outputs(model, features)
        return out


def detector_num_classes(model: nn.Module) -> Optional[int]:
    if hasattr(model, "num_classes"):
        return model.num_classes
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return roi_heads.num_classes
    return None


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
