"""GKD's Prototype Generation Module (PGM): Tang et al., ECCV 2022, "Distilling Object Detectors
with Global Knowledge", §3.2 of the paper; docs/methods.md §4.1.

Reference: ``hikvision-research/DAVAR-Lab-ML``, ``ECCV22_Distilling_Object_Detectors_with_Global_
Knowledge``: ``mmdet/strategy/prototype_generation_module.py`` (features, density filter, matching
pursuit) and ``mmcv/runner/hooks/pgm_hook.py`` (run before every epoch).

Per class ``c`` and FPN level ``ℓ``:

1. instances: GT boxes of class ``c`` with width and height > ``min_box_size`` (30 px; measured in
   the annotation's own coordinates, as the reference filters its json), crowd boxes excluded,
   from at most ``max_images_per_class`` (800) randomly chosen training images containing ``c``;
   the choice is made once (seeded) and kept, so the teacher's features are computed once;
2. ``x_i = AvgPool(P_ℓ[box_i])``: the box scaled by ``feature size / padded image size``,
   integer-truncated, inclusive crop (:func:`pool_box_inclusive`), in the teacher's and the
   current student's space; images get the test-time resize (the test mapper's augmentations,
   no flip);
3. ``x̂ = x / ||x||``; density ``ρ_i = Σ_j exp(−((1 − x̂_i·x̂_j)/σ)²)``, σ = 0.1; candidates Γ =
   instances whose density is strictly greater than ``sort_asc(ρ)[⌊0.4·N⌋]`` in BOTH spaces
   (:func:`density_candidates`);
4. joint matching pursuit, K = 10 iterations, α = 10 (:func:`joint_matching_pursuit`); the
   prototypes are the RAW (un-normalised) features of the picked instances (a candidate may be
   picked more than once).

A class (at a level) with no candidate (no instance, or densities all equal) keeps its previous
prototypes (the reference falls back to the previous prototypes file).

:class:`PrototypeGenerator` runs the PGM, from the distiller's own step (the training forward,
under any trainer), before the first step and at the start of every ``period``
iterations (an "epoch-equivalent"; default one pass over the training set), over the sampled
subset, distributed over the processes (each rank extracts features for its share of the images,
``comm.all_gather`` joins them; each rank then solves its share of the classes and the
prototypes are gathered again). The prototypes live in buffers of the :class:`~d2kd.distill.gkd.
GKD` distiller (``proto_student``, ``proto_teacher``, ``proto_valid``, ``proto_period``), so they
are saved with every checkpoint; on resume the generator does not recompute them when the checkpoint
already holds the prototypes of the current period.
"""
import logging
import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.utils import comm

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Pure functions (tensors in, tensors out)
# ---------------------------------------------------------------------------------------------
def l2_normalize_rows(x: Tensor) -> Tensor:
    """``x / ||x||`` row-wise (the reference divides by the norm; eps only guards all-zero rows)."""
    return F.normalize(x.float(), p=2, dim=1, eps=1e-12)


def density(x_hat: Tensor, sigma: float = 0.1) -> Tensor:
    """``ρ_i = Σ_j exp(−((1 − x̂_i·x̂_j)/σ)²)`` over the rows of the L2-normalised ``x_hat`` (N, D)."""
    dist = 1.0 - x_hat @ x_hat.t()
    return torch.exp(-((dist / sigma) ** 2)).sum(dim=1)


def density_candidates(
    x_hat_s: Tensor, x_hat_t: Tensor, *, sigma: float = 0.1, quantile: float = 0.4
) -> Tensor:
    """Indices of the instances dense in BOTH spaces (the candidate set Γ).

    ``ρ_i > sort_asc(ρ)[⌊quantile·N⌋]`` (0-based, strict) in the student space and in the teacher
    space. Returns a LongTensor (possibly empty), ascending.
    """
    n = x_hat_s.shape[0]
    if x_hat_t.shape[0] != n:
        raise ValueError(f"PGM: {n} student features but {x_hat_t.shape[0]} teacher features")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=x_hat_s.device)
    rho_s, rho_t = density(x_hat_s, sigma), density(x_hat_t, sigma)
    middle = int(n * quantile)
    lb_s = rho_s.sort().values[middle]
    lb_t = rho_t.sort().values[middle]
    return torch.nonzero((rho_s > lb_s) & (rho_t > lb_t), as_tuple=False).flatten()


def joint_matching_pursuit(
    x_hat_s: Tensor,
    x_hat_t: Tensor,
    candidates: Tensor,
    *,
    num_iters: int = 10,
    alpha: float = 10.0,
    return_errors: bool = False,
):
    """Joint matching pursuit over the two spaces (docs/methods.md §4.1 step 4).

    Residuals ``R^S = X̂^S``, ``R^T = X̂^T`` (D×N). For each candidate k with atoms
    ``a^S_k, a^T_k``: ``u = a^S_kᵀR^S``, ``v = a^T_kᵀR^T``, ``w^S = ((1+α)u + αv)/(1+2α)``,
    ``w^T = (αu + (1+α)v)/(1+2α)``, ``E_k = ||a^S_k w^S − R^S||²_F + ||a^T_k w^T − R^T||²_F +
    α||w^S − w^T||²``; pick ``k* = argmin E`` (first on ties), ``R ← R − a_{k*} w_{k*}`` in both
    spaces; ``num_iters`` picks, repeats allowed.

    ``||a w − R||²_F`` is evaluated as ``||a||²·||w||² − 2·w·(aᵀR) + ||R||²_F`` (algebraically
    identical to the reference's (K, D, N) tensor, without its memory).

    Args:
        x_hat_s, x_hat_t: (N, Ds), (N, Dt) L2-normalised instance features (rows).
        candidates: LongTensor of candidate instance indices (rows of ``x_hat_*``).
    Returns:
        LongTensor (num_iters,) of picked instance indices (empty if there is no candidate);
        with ``return_errors``, also a (num_iters, num_candidates) tensor of ``E``.
    """
    x_hat_s, x_hat_t = x_hat_s.float(), x_hat_t.float()
    device = x_hat_s.device
    if candidates.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return (empty, torch.zeros(0, 0, device=device)) if return_errors else empty
    candidates = candidates.to(device)
    res_s, res_t = x_hat_s.t().clone(), x_hat_t.t().clone()  # (D, N)
    atoms_s, atoms_t = x_hat_s[candidates].t(), x_hat_t[candidates].t()  # (D, K)
    sq_s, sq_t = (atoms_s**2).sum(0), (atoms_t**2).sum(0)  # (K,)
    picked, errors = [], []
    for _ in range(num_iters):
        u = atoms_s.t() @ res_s  # (K, N)
        v = atoms_t.t() @ res_t
        w_s = ((1 + alpha) * u + alpha * v) / (1 + 2 * alpha)
        w_t = (alpha * u + (1 + alpha) * v) / (1 + 2 * alpha)
        err_s = sq_s * (w_s**2).sum(1) - 2 * (w_s * u).sum(1) + (res_s**2).sum()
        err_t = sq_t * (w_t**2).sum(1) - 2 * (w_t * v).sum(1) + (res_t**2).sum()
        err = err_s + err_t + alpha * ((w_s - w_t) ** 2).sum(1)
        k = int(torch.argmin(err))
        picked.append(int(candidates[k]))
        errors.append(err)
        res_s = res_s - atoms_s[:, k : k + 1] @ w_s[k : k + 1]
        res_t = res_t - atoms_t[:, k : k + 1] @ w_t[k : k + 1]
    picked = torch.tensor(picked, dtype=torch.long, device=device)
    return (picked, torch.stack(errors)) if return_errors else picked


def generate_prototypes(
    feats_s: Tensor,
    feats_t: Tensor,
    *,
    num_prototypes: int = 10,
    alpha: float = 10.0,
    sigma: float = 0.1,
    quantile: float = 0.4,
) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """Prototypes of one (class, level) from raw instance features (N, Ds) and (N, Dt).

    Returns ``(P^S (K, Ds), P^T (K, Dt), picked indices (K,))`` — raw features of the picked
    instances — or ``None`` when there is no candidate (the caller keeps the previous ones).
    """
    if feats_s.shape[0] == 0:
        return None
    xs, xt = l2_normalize_rows(feats_s), l2_normalize_rows(feats_t)
    cand = density_candidates(xs, xt, sigma=sigma, quantile=quantile)
    if cand.numel() == 0:
        return None
    idx = joint_matching_pursuit(xs, xt, cand, num_iters=num_prototypes, alpha=alpha)
    return feats_s[idx], feats_t[idx], idx


def pool_box_inclusive(feature: Tensor, boxes: Tensor, ratio_w: float, ratio_h: float) -> Tensor:
    """PGM instance features: mean of ``feature[:, y1':y2'+1, x1':x2'+1]`` with
    ``x' = int(x·ratio_w)``, ``y' = int(y·ratio_h)`` (the reference's ``astype(int)`` crop).

    ``feature``: (C, H, W) of one image; ``boxes``: (n, 4) XYXY in the (resized) image frame.
    Returns (n, C). A crop that falls outside the map is clamped to its border cell.
    """
    C, H, W = feature.shape
    out = []
    scaled = boxes.detach().double().cpu().clone()
    scaled[:, 0::2] *= ratio_w
    scaled[:, 1::2] *= ratio_h
    for x1, y1, x2, y2 in scaled.tolist():
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        x1, y1 = min(max(x1, 0), W - 1), min(max(y1, 0), H - 1)
        x2, y2 = max(x2, x1), max(y2, y1)
        out.append(feature[:, y1 : y2 + 1, x1 : x2 + 1].mean(dim=(1, 2)))
    if not out:
        return feature.new_zeros((0, C))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# Which instances the PGM uses
# ---------------------------------------------------------------------------------------------
def select_pgm_instances(
    dataset_dicts: Sequence[dict],
    num_classes: int,
    *,
    min_box_size: float = 30.0,
    max_images_per_class: int = 800,
    seed: int = 1,
) -> List[Tuple[int, np.ndarray, np.ndarray]]:
    """The PGM's instance set: ``[(dict index, boxes (n, 4) XYXY_ABS, classes (n,))]`` sorted by
    dict index.

    For every class, the images holding at least one non-crowd box of that class with width and
    height > ``min_box_size`` are shuffled with ``np.random.RandomState(seed)`` and the first
    ``max_images_per_class`` are kept; an image contributes its valid boxes of every class it was
    chosen for. Deterministic, so every process computes the same set.
    """
    from detectron2.structures import BoxMode

    per_image: Dict[int, List[Tuple[List[float], int]]] = {}
    images_of_class: List[List[int]] = [[] for _ in range(num_classes)]
    for i, d in enumerate(dataset_dicts):
        seen = set()
        for ann in d.get("annotations", []) or []:
            if ann.get("iscrowd", 0):
                continue
            c = int(ann["category_id"])
            if not 0 <= c < num_classes:
                continue
            box = BoxMode.convert(list(ann["bbox"]), ann.get("bbox_mode", BoxMode.XYXY_ABS), BoxMode.XYXY_ABS)
            w, h = abs(box[2] - box[0]), abs(box[3] - box[1])
            if w > min_box_size and h > min_box_size:
                per_image.setdefault(i, []).append((box, c))
                if c not in seen:
                    seen.add(c)
                    images_of_class[c].append(i)
    rng = np.random.RandomState(seed)
    chosen: Dict[int, set] = {}
    for c in range(num_classes):
        imgs = np.asarray(images_of_class[c], dtype=np.int64)
        if len(imgs) > max_images_per_class:
            order = np.arange(len(imgs))
            rng.shuffle(order)
            imgs = imgs[order[:max_images_per_class]]
        for i in imgs.tolist():
            chosen.setdefault(i, set()).add(c)
    selection = []
    for i in sorted(chosen):
        items = [(b, c) for b, c in per_image[i] if c in chosen[i]]
        boxes = np.asarray([b for b, _ in items], dtype=np.float64).reshape(-1, 4)
        classes = np.asarray([c for _, c in items], dtype=np.int64)
        selection.append((i, boxes, classes))
    return selection


# ---------------------------------------------------------------------------------------------
# Where the PGM reads its images
# ---------------------------------------------------------------------------------------------
class PGMData:
    """The images the PGM reads: the training set, the test-time augmentations (the resize, no
    flip), and the training batch size over all processes (the default period is one epoch)."""

    def __init__(
        self,
        *,
        dataset,
        augmentations: Sequence = (),
        total_batch_size: Optional[int] = None,
        image_format: Optional[str] = None,
    ):
        """
        Args:
            dataset: Detectron2 dataset dicts, the name(s) of datasets registered in
                ``DatasetCatalog``, or a LazyConfig node that instantiates to the dicts (e.g.
                ``dataloader.train.dataset``); read when the PGM first runs.
            augmentations: test-time augmentations (instances or LazyConfig nodes).
            total_batch_size: images per training iteration over all processes.
            image_format: format to read images in (default: the model's ``input_format``).
        """
        self.dataset = dataset
        self.augmentations = list(augmentations or ())
        self.total_batch_size = None if total_batch_size is None else int(total_batch_size)
        self.image_format = image_format
        self._dicts = None

    @classmethod
    def from_dataloader_config(cls, dataloader) -> "PGMData":
        """From a LazyConfig ``dataloader`` section (``train.dataset``, ``train.total_batch_size``,
        ``test.mapper.augmentations`` and the mappers' ``image_format``)."""
        train = dataloader["train"]
        mapper = (dataloader.get("test", None) or {}).get("mapper", None) or {}
        fmt = mapper.get("image_format", None) or (train.get("mapper", None) or {}).get("image_format", None)
        return cls(
            dataset=train["dataset"],
            augmentations=mapper.get("augmentations", None) or (),
            total_batch_size=train.get("total_batch_size", None),
            image_format=fmt,
        )

    @classmethod
    def from_yacs(cls, cfg) -> "PGMData":
        """From a Detectron2 yacs config: ``DATASETS.TRAIN``, the test-time resize
        (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``), ``SOLVER.IMS_PER_BATCH``, ``INPUT.FORMAT``."""
        from detectron2.data import detection_utils as utils
        from detectron2.data import get_detection_dataset_dicts

        names = list(cfg.DATASETS.TRAIN)
        filter_empty = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        return cls(
            dataset=lambda: get_detection_dataset_dicts(names, filter_empty=filter_empty),
            augmentations=utils.build_augmentation(cfg, is_train=False),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            image_format=cfg.INPUT.FORMAT,
        )

    def dicts(self) -> List[Dict]:
        if self._dicts is None:
            from detectron2.config import instantiate
            from detectron2.data import get_detection_dataset_dicts

            data = [self.dataset] if isinstance(self.dataset, str) else self.dataset
            if isinstance(data, (list, tuple)) and data and all(isinstance(x, str) for x in data):
                data = get_detection_dataset_dicts(list(data))  # registered names
            elif callable(data):
                data = data()
            elif not isinstance(data, (list, tuple)):
                data = instantiate(data)  # a LazyConfig node (e.g. dataloader.train.dataset)
            self._dicts = list(data)
        return self._dicts

    def augmentation_list(self) -> List:
        from detectron2.config import instantiate

        return [instantiate(a) for a in self.augmentations]


# ---------------------------------------------------------------------------------------------
# The generator: run by the distiller itself, from the training forward
# ---------------------------------------------------------------------------------------------
class PrototypeGenerator:
    """Runs the PGM for a :class:`~d2kd.distill.gkd.GKD` distiller, from the distiller's own
    ``before_step`` (called at the start of every training forward): at the first step and at
    the start of every ``period`` iterations, whatever trainer calls the model.

    Every process runs the same training forward, so the collectives here (``all_gather`` of
    the features and of the prototypes) meet on every rank.
    """

    def __init__(self, distiller, data: PGMData):
        self.distiller = distiller
        self.data = data
        self._selection = None
        self._teacher_cache: Optional[Dict[int, Tensor]] = None
        self.period = None

    def epoch_iters(self) -> int:
        d = self.distiller
        if d.pgm_period:
            return int(d.pgm_period)
        return max(1, math.ceil(len(self.data.dicts()) / int(self.data.total_batch_size or 1)))

    def maybe_update(self, iteration: int, model) -> None:
        if self.period is None:
            self.period = self.epoch_iters()
            self.distiller.set_training_length(period=self.period)
        wanted = iteration // self.period
        if int(self.distiller.proto_period) == wanted:
            return  # already generated for this period (e.g. restored from a checkpoint)
        self.update(wanted, iteration, model)

    # ---- one PGM run --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, period_index: int, iteration: int, model) -> None:
        d = self.distiller
        start = time.perf_counter()
        if self._selection is None:
            self._selection = select_pgm_instances(
                self.data.dicts(),
                d.num_classes,
                min_box_size=d.pgm_min_box_size,
                max_images_per_class=d.pgm_max_images_per_class,
                seed=d.pgm_seed,
            )
        need_teacher = self._teacher_cache is None
        feats_s, feats_t = self.extract(model, need_teacher)
        if need_teacher:
            self._teacher_cache = feats_t
        self.solve(feats_s, self._teacher_cache)
        d.proto_period.fill_(period_index)
        logger.info(
            "GKD PGM: prototypes for period %d (iteration %d) from %d images in %.1f s; "
            "valid (class, level) pairs: %d/%d",
            period_index, iteration, len(self._selection), time.perf_counter() - start,
            int(d.proto_valid.sum()), d.proto_valid.numel(),
        )

    def extract(self, model, with_teacher: bool):
        """Per selected image, (n, L, C) pooled features of its instances; all ranks get all.

        ``model.inference_features`` gives the student's (and the teacher's) backbone features
        of one raw image, both in eval mode (see ``DistillationMixin``)."""
        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T

        augs = self.data.augmentation_list()
        fmt = self.data.image_format or model.input_format
        dicts = self.data.dicts()
        rank, world = comm.get_rank(), comm.get_world_size()
        mine_s, mine_t = {}, {}
        for k in range(rank, len(self._selection), world):
            index, boxes, _ = self._selection[k]
            record = dicts[index]
            image = utils.read_image(record["file_name"], format=fmt)
            aug_input = T.AugInput(image)
            transforms = T.AugmentationList(augs)(aug_input)
            image = aug_input.image
            boxes_t = torch.as_tensor(transforms.apply_box(boxes.copy()), dtype=torch.float64)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            s_feats, s_size, t_feats, t_size = model.inference_features(tensor, teacher=with_teacher)
            mine_s[index] = self._pool(s_feats, s_size, boxes_t)
            if with_teacher:
                mine_t[index] = self._pool(t_feats, t_size, boxes_t)
        feats_s, feats_t = {}, {}
        for part in comm.all_gather((mine_s, mine_t)):
            feats_s.update(part[0])
            feats_t.update(part[1])
        return feats_s, (feats_t if with_teacher else None)

    def _pool(self, features: Dict[str, Tensor], padded_size, boxes: Tensor) -> Tensor:
        pad_h, pad_w = padded_size
        per_level = []
        for level in self.distiller.in_features:
            f = features[level][0].float()
            per_level.append(pool_box_inclusive(f, boxes, f.shape[-1] / pad_w, f.shape[-2] / pad_h))
        return torch.stack(per_level, dim=1).cpu()  # (n, L, C)

    def solve(self, feats_s: Dict[int, Tensor], feats_t: Dict[int, Tensor]):
        """Prototypes per (class, level); this rank solves classes ``c ≡ rank (mod world)``."""
        d = self.distiller
        device = d.proto_student.device
        rank, world = comm.get_rank(), comm.get_world_size()
        L = len(d.in_features)
        by_class_s: Dict[int, List[Tensor]] = {}
        by_class_t: Dict[int, List[Tensor]] = {}
        for index, _, classes in self._selection:
            cls = torch.as_tensor(classes)
            for c in range(rank, d.num_classes, world):
                keep = cls == c
                if keep.any():
                    by_class_s.setdefault(c, []).append(feats_s[index][keep])
                    by_class_t.setdefault(c, []).append(feats_t[index][keep])
        results = []
        for c in sorted(by_class_s):
            xs_all = torch.cat(by_class_s[c]).to(device)
            xt_all = torch.cat(by_class_t[c]).to(device)
            if xs_all.shape[0] < d.pgm_min_instances:
                continue  # too few instances: the class keeps its previous prototypes
            for level in range(L):
                out = generate_prototypes(
                    xs_all[:, level], xt_all[:, level],
                    num_prototypes=d.num_prototypes, alpha=d.alpha,
                    sigma=d.density_sigma, quantile=d.density_quantile,
                )
                if out is not None:
                    results.append((c, level, out[0].cpu(), out[1].cpu()))
        for part in comm.all_gather(results):
            for c, level, ps, pt in part:
                d.set_prototypes(level, c, ps, pt)
