"""LSHFM: mimicking the teacher's penultimate features with L2 and LSH (Wang, Ge, Wu, TPAMI 2021;
docs/methods.md §3).

Reference: ``DoctorKey/LSHFM.detection`` (``src/model/KD/L2.py``, ``src/model/KD/LSH.py``,
``src/model/faster_rcnn_KD.py``, ``src/model/retinanet_KD.py``, ``src/model/retinanet.py``).

For matched feature vectors ``f_s, f_t ∈ R^D`` (rows of an R×D matrix), §3.1:

- ``L_L2  = mean_{r,d} (f_s − f_t)²``                        (``nn.MSELoss(reduction='mean')``)
- hash ``h(f) = W f + b``, ``W ∈ R^{N_h×D} ~ N(0, std²)``, ``b = 0``, frozen;
  teacher bits ``y = 1[h(f_t) > 0]``;
  ``L_LSH = mean_{r,k} BCEWithLogits(h(f_s), y)``
- modes: ``l2``: β·L_L2; ``lsh``: β·L_LSH; ``lshl2``: β·(L_L2 + L_LSH)  (β = the distiller weight,
  7 by default); the two terms are returned (and logged) separately and both get β.

``std`` = std of the teacher's final classifier weight (``roi_heads.box_predictor.cls_score`` /
RetinaNet ``head.cls_score``); ``N_h`` = 4·D (Faster R-CNN: 4096 for D = 1024), RetinaNet 4096
(the scripts' ``--hash-num 4096``). W is a **buffer**: not trained, not in the optimizer, but in
the state_dict so that a resumed run hashes with the same hyperplanes. It is drawn from a
dedicated ``torch.Generator`` seeded with ``seed`` (the reference uses the global RNG).

Where the features come from (§3.2):

- Faster R-CNN: the box head's output (fc7 after ReLU, ``roi.box_features``) for the student's
  sampled proposals; the teacher's box head runs on the same boxes.
- RetinaNet: the classification tower's output (before ``cls_score``) of every level, unfolded
  over 3×3 (``F.unfold``, padding 1) → D = C·9 per location, all levels concatenated. A location
  is used unless all its A anchors are ignored (``gt_labels == −1``; the reference tests
  ``matched_idx.reshape(-1, 9).sum(1) > −2·9``). Per image: the mean loss over its selected
  locations; then summed over images and divided by ``n_img + 1e-7`` (n_img = images with a
  selected location). As in the reference, an image without GT boxes is skipped (its matcher
  output is empty there) — ``skip_images_without_gt``.

Student and teacher dims may differ (d2kd extension; the reference pairs have equal dims): a
linear adapter (Faster R-CNN, D_s → D_t) or a 1×1 conv (RetinaNet, C_s → C_t, before unfolding)
is then added on the student side, trained with it and dropped at export. ``adapter="always"``
forces one, ``"never"`` makes a mismatch an error.

All losses are computed in fp32; a batch with nothing selected contributes a graph-keeping zero.
"""
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..records import record_layout
from .base import DISTILLER_REGISTRY, Distiller, float32, zero_loss

__all__ = ["LSHFM", "lsh_loss", "l2_loss", "unfold_locations"]

MODES = ("l2", "lsh", "lshl2")
LSH_LOSSES = ("bce", "l2", "l1")


def l2_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """``mean_{r,d} (f_s − f_t)²`` (``nn.MSELoss(reduction='mean')``)."""
    return F.mse_loss(float32(f_s), float32(f_t), reduction="mean")


def lsh_loss(f_s: Tensor, f_t: Tensor, weight: Tensor, bias: Optional[Tensor] = None, kind: str = "bce") -> Tensor:
    """``mean_{r,k} BCEWithLogits(W f_s + b, 1[W f_t + b > 0])`` (or L2/L1 between the
    projections, the reference's ``--LSH_loss L2|L1``)."""
    hs = F.linear(float32(f_s), float32(weight), None if bias is None else float32(bias))
    with torch.no_grad():
        ht = F.linear(float32(f_t), float32(weight), None if bias is None else float32(bias))
    if kind == "bce":
        # NaN teacher projections stay NaN (not bit 0), so a broken teacher is reported by the
        # non-finite loss guard instead of silently training the student towards garbage.
        bits = torch.where(torch.isnan(ht), ht, (ht > 0).to(ht.dtype))
        return F.binary_cross_entropy_with_logits(hs, bits, reduction="mean")
    if kind == "l2":
        return F.mse_loss(hs, ht, reduction="mean")
    if kind == "l1":
        return F.l1_loss(hs, ht, reduction="mean")
    raise ValueError(f"LSHFM: lsh_loss must be one of {LSH_LOSSES}, got {kind!r}")


def unfold_locations(x: Tensor, kernel_size: int = 3) -> Tensor:
    """(N, C, H, W) → (N, H*W, C·k²): the k×k neighbourhood (padding k//2) of every location,
    as ``F.unfold(x, (3, 3), padding=1).transpose(1, 2)`` in the reference (k = 3)."""
    return F.unfold(x, (kernel_size, kernel_size), padding=kernel_size // 2).transpose(1, 2)


@DISTILLER_REGISTRY.register()
class LSHFM(Distiller):
    name = "lshfm"

    def __init__(
        self,
        *,
        mode: str = "lshl2",
        hash_bits: Optional[int] = None,
        std: Optional[float] = None,
        lsh_loss: str = "bce",
        seed: int = 0,
        adapter: str = "auto",
        skip_images_without_gt: bool = True,
        weight: float = 7.0,
        schedule=None,
    ):
        """
        Args:
            mode: ``"l2"`` | ``"lsh"`` | ``"lshl2"`` (§3.1; ``lshl2`` is the recommended LSH mode).
            hash_bits: N_h; None = 4·D (Faster R-CNN) or 4096 (RetinaNet), as the reference runs.
            std: std of the hash weights; None = std of the teacher's final classifier weight.
            lsh_loss: ``"bce"`` (reference default) | ``"l2"`` | ``"l1"``.
            seed: seed of the hash weights' generator.
            adapter: ``"auto"`` (only if D_s ≠ D_t) | ``"always"`` | ``"never"``.
            skip_images_without_gt: RetinaNet only: images without GT select nothing (reference).
            weight: β (7; the RetinaNet VGG runs use 6 for lsh and 8 for lshl2).
        """
        super().__init__(weight=weight, schedule=schedule)
        if mode not in MODES:
            raise ValueError(f"LSHFM: mode must be one of {MODES}, got {mode!r}")
        if lsh_loss not in LSH_LOSSES:
            raise ValueError(f"LSHFM: lsh_loss must be one of {LSH_LOSSES}, got {lsh_loss!r}")
        if adapter not in ("auto", "always", "never"):
            raise ValueError(f"LSHFM: adapter must be 'auto', 'always' or 'never', got {adapter!r}")
        if hash_bits is not None and hash_bits <= 0:
            raise ValueError(f"LSHFM: hash_bits must be > 0, got {hash_bits}")
        self.mode = mode
        self.hash_bits = hash_bits
        self.std = std
        self.lsh_loss_kind = lsh_loss
        self.seed = int(seed)
        self.adapter_mode = adapter
        self.skip_images_without_gt = bool(skip_images_without_gt)
        self._classifier = None  # the student's ClassifierLayout, from bind()
        self.adapter: Optional[nn.Module] = None
        self.feature_dim = None

    @property
    def uses_hash(self) -> bool:
        return self.mode in ("lsh", "lshl2")

    @property
    def uses_l2(self) -> bool:
        return self.mode in ("l2", "lshl2")

    # ---- building ---------------------------------------------------------------------------
    def bind(self, student, teacher) -> None:
        s_cls, t_cls = record_layout(student).classifier, teacher.layout().classifier
        if s_cls is None or t_cls is None or s_cls.input_form != t_cls.input_form:
            raise ValueError(
                f"LSHFM needs the features both final classifiers read, in the same form (box-head "
                f"rows, as Faster R-CNN's; or tower maps, as RetinaNet's); the student "
                f"{type(student).__name__} records {record_layout(student).parts}, the teacher "
                f"{type(teacher.model).__name__} {teacher.layout().parts}"
            )
        self._classifier = s_cls
        rows = s_cls.input_form == "rows"
        d_s, d_t = s_cls.input_channels, t_cls.input_channels
        what = "box-head output dim" if rows else "classification-tower channels"
        if d_s != d_t and self.adapter_mode == "never":
            raise ValueError(
                f"LSHFM: student {what} {d_s} but teacher {d_t}; use adapter='auto' to add a "
                f"student-side {'linear' if rows else '1x1 conv'} adapter"
            )
        if d_s != d_t or self.adapter_mode == "always":
            if rows:
                self.adapter = nn.Linear(d_s, d_t)
            else:
                self.adapter = nn.Conv2d(d_s, d_t, kernel_size=1)
                nn.init.kaiming_uniform_(self.adapter.weight, a=1)
                nn.init.zeros_(self.adapter.bias)
        # maps: every location's k×k neighbourhood, what the conv classifier reads there (§3.2)
        self.feature_dim = d_t * t_cls.input_kernel**2
        if self.uses_hash:
            # the reference's N_h: 4·D for box-head rows, --hash-num 4096 for tower maps
            n_h = self.hash_bits or (4 * self.feature_dim if rows else 4096)
            classifier = t_cls.weight
            std = float(classifier.detach().float().std()) if self.std is None else float(self.std)
            if not std > 0:
                raise ValueError(f"LSHFM: hash std must be > 0, got {std} (teacher classifier std)")
            self.std = std
            self.hash_bits = n_h
            gen = torch.Generator().manual_seed(self.seed)
            w = torch.randn(n_h, self.feature_dim, generator=gen) * std
            dev = classifier.device
            self.register_buffer("hash_weight", w.to(dev))
            self.register_buffer("hash_bias", torch.zeros(n_h, device=dev))

    def teacher_needs(self):
        return {"features", self._classifier.part} if self._classifier is not None else {"features"}

    def student_needs(self):
        return {self._classifier.part} if self._classifier is not None else set()

    # ---- computing --------------------------------------------------------------------------
    def _terms(self, f_s: Tensor, f_t: Tensor) -> Dict[str, Tensor]:
        out = {}
        if self.uses_l2:
            out["l2"] = l2_loss(f_s, f_t)
        if self.uses_hash:
            out["lsh"] = lsh_loss(f_s, f_t, self.hash_weight, self.hash_bias, self.lsh_loss_kind)
        return out

    def _zero_terms(self, ref: Tensor) -> Dict[str, Tensor]:
        z = zero_loss(ref)
        return {k: z for k in (["l2"] if self.uses_l2 else []) + (["lsh"] if self.uses_hash else [])}

    def forward(self, student, teacher) -> Dict[str, Tensor]:
        s_in, t_in = student.classifier_input_view(), teacher.classifier_input_view()
        if s_in.rows is not None:
            return self.forward_rows(s_in, t_in)
        return self.forward_maps(student, s_in, t_in)

    def forward_rows(self, s_in, t_in) -> Dict[str, Tensor]:
        """One feature vector per classifier row (an R-CNN box head's output): mean over rows."""
        f_s = s_in.rows
        if self.adapter is not None:
            f_s = self.adapter(f_s)
        f_t = t_in.rows.detach()
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"LSHFM: student box features {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}; "
                f"the teacher's box head must run on the student's sampled proposals"
            )
        if f_s.shape[0] == 0:
            return self._zero_terms(f_s)
        return self._terms(f_s, f_t)

    def selected_locations(self, student) -> Tensor:
        """(N, L) bool over all levels' locations: used unless all A anchors are ignored (−1);
        images without GT select nothing when ``skip_images_without_gt``."""
        labels = student.classifier_input_view().labels  # (N, L, A)
        selected = ~(labels == -1).all(dim=2)
        if self.skip_images_without_gt:
            has_gt = torch.tensor([len(x) > 0 for x in student.gt_instances], device=labels.device)
            selected = selected & has_gt[:, None]
        return selected

    def forward_maps(self, student, s_in, t_in) -> Dict[str, Tensor]:
        """A conv classifier's input maps: every location's k×k neighbourhood is one vector; per
        image the mean over its selected locations, then the sum over images / images used."""
        s_feats = s_in.maps
        if self.adapter is not None:
            s_feats = [self.adapter(x) for x in s_feats]
        k = s_in.kernel_size
        f_s = torch.cat([unfold_locations(float32(x), k) for x in s_feats], dim=1)  # (N, L, D)
        f_t = torch.cat([unfold_locations(float32(x.detach()), k) for x in t_in.maps], dim=1)
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"LSHFM: unfolded student tower features {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}"
            )
        selected = self.selected_locations(student)
        if selected.shape != f_s.shape[:2]:
            raise ValueError(
                f"LSHFM: {selected.shape[1]} anchor locations but {f_s.shape[1]} feature locations"
            )
        sums: Dict[str, Tensor] = {}
        n_img = 0
        for i in range(f_s.shape[0]):
            sel = selected[i]
            if not bool(sel.any()):
                continue
            n_img += 1
            for key, v in self._terms(f_s[i][sel], f_t[i][sel]).items():
                sums[key] = v if key not in sums else sums[key] + v
        if n_img == 0:
            return self._zero_terms(f_s)
        return {key: v / (n_img + 1e-7) for key, v in sums.items()}
