"""The embedded synthetic detection dataset "shapes": no files, no downloads.

Every image is rendered on the fly, deterministically, from ``(seed, index)``. Images are served
to Detectron2 through an iopath ``PathHandler`` registered with
``detectron2.utils.file_io.PathManager`` for the prefix ``shapes://``, so the stock
``DatasetMapper`` (``detection_utils.read_image``), ``Visualizer``, demos and
``PathManager.get_local_path`` all work unchanged::

    from detectron2.data import detection_utils as utils
    img = utils.read_image("shapes://shapes_train/000123.png", format="BGR")

Paths
    ``shapes://<source>/<index:06d>.png``, where ``<source>`` is a split registered with
    :func:`register_shapes` (e.g. ``shapes_train``), or the self-describing form
    ``shapes://seed<seed>_<size>px/<index>.png`` which needs no registration at all. Dataset
    dicts hold them as :class:`ShapesFileName` (a ``str``) whose unpickling imports this module
    and re-declares the source, so ``spawn``/``forkserver`` DataLoader workers work too.

Content (what the generator draws; see ``_sample_layout`` / ``_render_pixels``)
    * 8 classes of filled shapes (:data:`CLASS_NAMES`): circle, square, triangle, star, cross,
      ring, hexagon, ellipse; each object is plain (with a shading gradient), striped or
      checkered, optionally with a darker rim, in a random colour (5 % close to the
      background's), randomly rotated.
    * 3..8 objects per image before occlusion; sizes (diameter of the circumscribed circle)
      log-uniform from 12 px (or 8 % of the image) to half the image, so most objects are
      small; centres uniform over the image, so objects at the border are truncated.
    * Drawing order: roughly large to small with random swaps, so objects occlude one another.
      An object whose visible pixel count is below 50 % of its full area (occluded and/or cut
      by the border) or below 12 pixels is **not annotated** (its pixels are still drawn).
    * Background: a smooth low-frequency colour field (bicubic upsampling of a 2..4 px random
      grid) plus mid-frequency blotches; 0..2 distractor strokes under the objects (lines,
      arcs, open partial outlines of the same shape classes, zig-zags), often in the colour of
      an object; per-pixel Gaussian noise over the whole image.
    * Boxes: XYXY_ABS, tight around the *visible* pixels of each object (pixel-coverage
      convention: a box ``[x1, y1, x2, y2]`` covers columns ``x1..x2-1``).

Annotations come from the layout alone (object masks on a label map), which uses its own
random stream; the pixel appearance uses a second stream. Building the dataset dicts therefore
never renders colour pixels (2000 images take well under a second), and the two can never
disagree.
"""
from __future__ import annotations

import collections
import colorsys
import functools
import io
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathHandler, PathManager

__all__ = [
    "CLASS_NAMES",
    "PREFIX",
    "ShapesPathHandler",
    "ShapesFileName",
    "register_shapes",
    "render_shapes_image",
    "load_shapes_dicts",
    "shapes_file_name",
    "is_shapes_dataset",
    "resolve_shapes_source",
]

logger = logging.getLogger(__name__)

CLASS_NAMES: Tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "ellipse",
)
# RGB, for detectron2's Visualizer (metadata.thing_colors)
CLASS_COLORS: List[Tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
]
PREFIX = "shapes://"

# Bump when the generator changes in a way that changes pixels or boxes for a given seed.
GENERATOR_VERSION = 2

# ---- generation parameters (relative to image size S) -------------------------------------
# Version 1 (4..16 objects from 5 px, 15 % camouflaged, 2..8 distractors) was too hard to learn
# from scratch in a CPU budget (docs/results.md, "How the shapes recipe was calibrated").
_MIN_OBJECTS, _MAX_OBJECTS = 3, 8  # objects drawn per image, before the occlusion filter
_MIN_SIZE_PX = 12.0  # smallest circumscribed diameter (at any S, but >= 0.08 S)
_MIN_SIZE_FRAC = 0.08
_MAX_SIZE_FRAC = 0.5  # largest circumscribed diameter, fraction of S
_MIN_VISIBLE_FRAC = 0.5  # objects more than half hidden/cut are not annotated
_MIN_VISIBLE_PX = 12
_MIN_DISTRACTORS, _MAX_DISTRACTORS = 0, 2
_CAMOUFLAGE_PROB = 0.05  # objects coloured close to the background under them
_SHIFT = 4  # sub-pixel bits for cv2.fillPoly
_SCALE = 1 << _SHIFT


# ============================================================================================
# Geometry
# ============================================================================================
def _circle(n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _regular(n: int, phase: float) -> np.ndarray:
    t = phase + np.arange(n) * (2.0 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


_UNIT_CIRCLE = _circle()


def _unit_polygons(cls: int, u: float) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(outer polygon, optional hole polygon) of class ``cls`` inscribed in the unit circle.

    ``u`` in [0, 1) is the class-specific shape parameter (aspect, inner ratio, arm width).
    """
    name = CLASS_NAMES[cls]
    if name == "circle":
        return _UNIT_CIRCLE, None
    if name == "square":
        return _regular(4, np.pi / 4), None
    if name == "triangle":
        return _regular(3, -np.pi / 2), None
    if name == "star":
        inner = 0.38 + 0.14 * u
        t = -np.pi / 2 + np.arange(10) * (np.pi / 5)
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1), None
    if name == "cross":
        w = 0.24 + 0.14 * u
        p = np.array(
            [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
             (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)], dtype=np.float64,
        )
        return p / math.sqrt(1.0 + w * w), None
    if name == "ring":
        return _UNIT_CIRCLE, _UNIT_CIRCLE * (0.45 + 0.2 * u)
    if name == "hexagon":
        return _regular(6, 0.0), None
    if name == "ellipse":
        return _UNIT_CIRCLE * np.array([1.0, 0.38 + 0.27 * u]), None
    raise AssertionError(name)


def _place(poly: np.ndarray, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return poly @ rot.T * radius + np.array([cx, cy])


def _fill(canvas: np.ndarray, pts: np.ndarray, value: int, ox: int, oy: int) -> None:
    """Fill polygon ``pts`` (continuous image coordinates, pixel (j, i) covers [j, j+1)x[i, i+1))
    into ``canvas`` whose top-left pixel is image pixel (ox, oy)."""
    local = (pts - np.array([ox + 0.5, oy + 0.5])) * _SCALE
    cv2.fillPoly(canvas, [np.round(local).astype(np.int32)], value, cv2.LINE_8, _SHIFT)


@dataclass
class _Object:
    cls: int
    cx: float
    cy: float
    size: float  # circumscribed diameter
    angle: float
    u: float  # class-specific shape parameter
    ox: int = 0  # image coordinates of mask[0, 0]
    oy: int = 0
    mask: Optional[np.ndarray] = None  # uint8 0/1, full (untruncated, unoccluded) shape
    area: int = 0


@dataclass
class _Layout:
    size: int
    objects: List[_Object]  # in drawing order (later ones on top)
    label: np.ndarray  # int16 HxW, index into objects of the top-most object, -1 background
    kept: List[int]  # indices into objects that are annotated, in drawing order
    boxes: List[Tuple[int, int, int, int]]  # XYXY of the visible pixels, aligned with ``kept``


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([int(seed), int(index), stream, GENERATOR_VERSION]))
    )


def _sample_layout(seed: int, index: int, size: int) -> _Layout:
    rng = _rng(seed, index, 0)
    S = size
    n = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
    smin = max(_MIN_SIZE_PX, _MIN_SIZE_FRAC * S)
    smax = max(smin + 1.0, _MAX_SIZE_FRAC * S)
    cls = rng.integers(0, len(CLASS_NAMES), size=n)
    diam = np.exp(rng.uniform(math.log(smin), math.log(smax), size=n))
    cxy = rng.uniform(0.0, S, size=(n, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
    u = rng.uniform(0.0, 1.0, size=n)
    order = np.argsort(-np.log(diam) + rng.normal(0.0, 0.75, size=n), kind="stable")

    objects: List[_Object] = []
    label = np.full((S, S), -1, dtype=np.int16)
    for k, i in enumerate(order):
        ob = _Object(int(cls[i]), float(cxy[i, 0]), float(cxy[i, 1]), float(diam[i]),
                     float(angle[i]), float(u[i]))
        r = ob.size / 2.0
        ob.ox, ob.oy = int(math.floor(ob.cx - r)) - 1, int(math.floor(ob.cy - r)) - 1
        m = int(math.ceil(2 * r)) + 3
        mask = np.zeros((m, m), dtype=np.uint8)
        outer, hole = _unit_polygons(ob.cls, ob.u)
        _fill(mask, _place(outer, ob.cx, ob.cy, r, ob.angle), 1, ob.ox, ob.oy)
        if hole is not None:
            _fill(mask, _place(hole, ob.cx, ob.cy, r, ob.angle), 0, ob.ox, ob.oy)
        ob.mask, ob.area = mask, int(mask.sum())
        objects.append(ob)
        y0, y1, x0, x1 = _clip(ob, S)
        if y1 > y0 and x1 > x0:
            sub = mask[y0 - ob.oy : y1 - ob.oy, x0 - ob.ox : x1 - ob.ox].astype(bool)
            label[y0:y1, x0:x1][sub] = k

    visible = np.bincount(label.ravel().astype(np.int64) + 1, minlength=n + 1)[1:]
    kept, boxes = [], []
    for k, ob in enumerate(objects):
        v = int(visible[k])
        if ob.area == 0 or v < _MIN_VISIBLE_PX or v < _MIN_VISIBLE_FRAC * ob.area:
            continue
        y0, y1, x0, x1 = _clip(ob, S)
        sub = label[y0:y1, x0:x1] == k
        rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
        kept.append(k)
        boxes.append((x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1,
                      y0 + int(rows[-1]) + 1))
    return _Layout(S, objects, label, kept, boxes)


def _clip(ob: _Object, S: int) -> Tuple[int, int, int, int]:
    m = ob.mask.shape[0]
    return max(ob.oy, 0), min(ob.oy + m, S), max(ob.ox, 0), min(ob.ox + m, S)


def _annotations(layout: _Layout) -> List[dict]:
    return [
        {
            "bbox": [float(b) for b in box],
            "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": layout.objects[k].cls,
            "iscrowd": 0,
        }
        for k, box in zip(layout.kept, layout.boxes)
    ]


# ============================================================================================
# Pixels
# ============================================================================================
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return np.array([b, g, r], dtype=np.float32) * 255.0  # BGR


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv(rng.uniform(), rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.0))


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    k = int(rng.integers(2, 5))
    base = _hsv(rng.uniform(), rng.uniform(0.1, 0.8), rng.uniform(0.3, 0.95))
    grid = base + rng.normal(0.0, 30.0, size=(k, k, 3)).astype(np.float32)
    bg = cv2.resize(grid, (S, S), interpolation=cv2.INTER_CUBIC)
    g = int(rng.integers(6, 13))
    blot = rng.normal(0.0, rng.uniform(3.0, 10.0), size=(g, g, 3)).astype(np.float32)
    bg += cv2.resize(blot, (S, S), interpolation=cv2.INTER_LINEAR)
    return bg


def _draw_distractors(img: np.ndarray, rng: np.random.Generator, layout: _Layout,
                      colors: List[np.ndarray]) -> None:
    S = layout.size
    n = int(rng.integers(_MIN_DISTRACTORS, _MAX_DISTRACTORS + 1))
    for _ in range(n):
        kind = int(rng.integers(0, 4))
        if colors and rng.uniform() < 0.5:
            col = colors[int(rng.integers(0, len(colors)))]
        else:
            col = _random_color(rng)
        col = tuple(float(c) for c in col)
        th = int(rng.integers(1, 3))
        if kind == 0:  # straight line
            p = np.round(rng.uniform(-0.1 * S, 1.1 * S, size=4)).astype(int)
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, th, cv2.LINE_AA)
        elif kind == 1:  # arc of an ellipse
            c = np.round(rng.uniform(0, S, size=2)).astype(int)
            ax = np.round(rng.uniform(3, S / 3, size=2)).astype(int)
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(c[0]), int(c[1])), (int(ax[0]), int(ax[1])),
                        float(rng.uniform(0, 180)), start, start + float(rng.uniform(40, 250)),
                        col, th, cv2.LINE_AA)
        elif kind == 2:  # open, partial outline of a shape class
            cls = int(rng.integers(0, len(CLASS_NAMES)))
            outer, _ = _unit_polygons(cls, float(rng.uniform()))
            d = math.exp(rng.uniform(math.log(_MIN_SIZE_PX * 1.5), math.log(_MAX_SIZE_FRAC * S)))
            c = rng.uniform(0, S, size=2)
            pts = _place(outer, float(c[0]), float(c[1]), d / 2, float(rng.uniform(0, 2 * np.pi)))
            m = len(pts)
            start, length = int(rng.integers(0, m)), max(2, int(m * rng.uniform(0.3, 0.7)))
            idx = (start + np.arange(length + 1)) % m
            cv2.polylines(img, [np.round(pts[idx] * _SCALE).astype(np.int32)], False, col, 1,
                          cv2.LINE_AA, _SHIFT)
        else:  # zig-zag
            c = rng.uniform(0, S, size=2)
            k = int(rng.integers(3, 6))
            pts = c + np.cumsum(rng.normal(0.0, S / 10, size=(k, 2)), axis=0)
            cv2.polylines(img, [np.round(pts * _SCALE).astype(np.int32)], False, col, th,
                          cv2.LINE_AA, _SHIFT)


def _object_texture(rng: np.random.Generator, ob: _Object, base: np.ndarray,
                    y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Colours (h, w, 3) float32 for the image region [y0:y1, x0:x1] of one object."""
    xx = (np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - ob.cx))[None, :]
    yy = (np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - ob.cy))[:, None]
    variant = rng.uniform()
    phi = float(rng.uniform(0, np.pi))
    period = float(rng.uniform(2.5, 7.0))
    second = _random_color(rng) if rng.uniform() < 0.6 else base * float(rng.uniform(0.3, 0.7))
    shade = rng.normal(0.0, 1.2, size=2).astype(np.float32)
    rim = rng.uniform() < 0.25
    proj = xx * np.float32(math.cos(phi)) + yy * np.float32(math.sin(phi))
    if variant < 0.8:  # plain, with a linear shading gradient
        tex = base + (xx * shade[0] + yy * shade[1])[..., None]
    elif variant < 0.93:  # stripes
        stripe = (np.floor(proj / period) % 2).astype(bool)
        tex = np.where(stripe[..., None], second, base)
    else:  # checker
        orth = yy * np.float32(math.cos(phi)) - xx * np.float32(math.sin(phi))
        chk = ((np.floor(proj / period) + np.floor(orth / period)) % 2).astype(bool)
        tex = np.where(chk[..., None], second, base)
    tex = np.ascontiguousarray(tex, dtype=np.float32)
    if rim and ob.size >= 10:
        full = ob.mask[y0 - ob.oy : y1 - ob.oy, x0 - ob.ox : x1 - ob.ox]
        inner = cv2.erode(full, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        edge = (full > 0) & (inner == 0)
        tex[edge] *= 0.45
    return tex


def _render_pixels(seed: int, index: int, layout: _Layout) -> np.ndarray:
    rng = _rng(seed, index, 1)
    S = layout.size
    bg = _background(rng, S)
    colors = []
    for ob in layout.objects:
        if rng.uniform() < _CAMOUFLAGE_PROB:  # camouflage: close to the background under the object
            cy, cx = int(np.clip(ob.cy, 0, S - 1)), int(np.clip(ob.cx, 0, S - 1))
            c = bg[cy, cx] + rng.normal(0.0, 30.0, size=3).astype(np.float32)
        else:
            c = _random_color(rng)
        colors.append(np.clip(c, 0, 255).astype(np.float32))
    img = np.clip(bg, 0, 255).astype(np.uint8)
    _draw_distractors(img, rng, layout, colors)
    out = img.astype(np.float32)
    for k, ob in enumerate(layout.objects):
        y0, y1, x0, x1 = _clip(ob, S)
        tex = _object_texture(rng, ob, colors[k], y0, y1, x0, x1) if (y1 > y0 and x1 > x0) else None
        if tex is None:
            continue
        vis = layout.label[y0:y1, x0:x1] == k
        out[y0:y1, x0:x1][vis] = tex[vis]
    sigma = float(rng.uniform(2.0, 6.0))
    out += _gaussian_noise(rng, (S, S, 3)) * np.float32(sigma if rng.uniform() < 0.5 else -sigma)
    out += np.float32(0.5)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


_NOISE_BANK_SIZE = 1 << 20


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """1M fixed standard-normal values: a per-image random window of it is much cheaper than
    drawing fresh Gaussian noise (an order of magnitude) and just as deterministic."""
    return np.random.default_rng(20240917).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def _gaussian_noise(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    if n > _NOISE_BANK_SIZE // 2:
        return rng.standard_normal(size=shape, dtype=np.float32)
    start = int(rng.integers(0, _NOISE_BANK_SIZE - n + 1))
    return _noise_bank()[start : start + n].reshape(shape)


# ============================================================================================
# Sources (seed/size per path name) and the public rendering API
# ============================================================================================
@dataclass(frozen=True)
class ShapesSource:
    seed: int
    image_size: int
    num_images: Optional[int]  # None: unbounded (seed form)


_SOURCES: Dict[str, ShapesSource] = {}
_SEED_FORM = re.compile(r"^seed(\d+)_(\d+)px$")


def resolve_shapes_source(name: str) -> ShapesSource:
    """The :class:`ShapesSource` behind a path name, a registered dataset name or a seed form."""
    if name in _SOURCES:
        return _SOURCES[name]
    m = _SEED_FORM.match(name)
    if m:
        return ShapesSource(int(m.group(1)), int(m.group(2)), None)
    # Fall back to the catalogs (e.g. after importlib.reload of this module): a dataset name, or
    # the path name shared by registered shapes datasets.
    found: Optional[ShapesSource] = None
    for ds in MetadataCatalog.list():
        meta = MetadataCatalog.get(ds)
        if not hasattr(meta, "shapes_source") or name not in (ds, meta.shapes_source):
            continue
        if ds == name:
            return _SOURCES.get(meta.shapes_source) or ShapesSource(
                meta.shapes_seed, meta.shapes_image_size, meta.shapes_num_images)
        n = max(meta.shapes_num_images, found.num_images if found else 0)
        found = ShapesSource(meta.shapes_seed, meta.shapes_image_size, n)
    if found is not None:
        return found
    raise KeyError(
        f"'{name}' is not a shapes source: registered ones are {sorted(_SOURCES)}; "
        "or use the form 'seed<seed>_<size>px'"
    )


class ShapesFileName(str):
    """A ``shapes://`` file name (a plain ``str`` to everything else) that survives being sent
    to a process that never imported d2kd: unpickling it (e.g. in a DataLoader worker started
    with ``spawn``/``forkserver``) imports this module, which registers the ``shapes://``
    handler, and re-declares its source's seed and size there."""

    __slots__ = ()

    def __reduce__(self):
        try:
            src = resolve_shapes_source(_parse_path(self)[0])
        except (KeyError, FileNotFoundError):
            src = None
        spec = (src.seed, src.image_size, src.num_images) if src is not None else None
        return (_restore_file_name, (str(self), spec))


def _restore_file_name(path: str, spec) -> "ShapesFileName":
    source, _ = _parse_path(path)
    if spec is not None and source not in _SOURCES:
        _SOURCES[source] = ShapesSource(*spec)
    return ShapesFileName(path)


def shapes_file_name(source: str, index: int) -> str:
    return ShapesFileName(f"{PREFIX}{source}/{index:06d}.png")


@functools.lru_cache(maxsize=64)
def _layout_cached(seed: int, index: int, size: int) -> _Layout:
    return _sample_layout(seed, index, size)


def render_shapes_image(
    name_or_seed: Union[str, int],
    index: int,
    *,
    image_size: Optional[int] = None,
    return_label_map: bool = False,
):
    """Render image ``index`` of a shapes split.

    Args:
        name_or_seed: a registered shapes dataset/source name (``"shapes_train"``), a seed form
            (``"seed7_128px"``), a ``shapes://`` path (then ``index`` is ignored if the path has
            one — pass ``None``), or an int seed.
        index: image index (>= 0).
        image_size: only with an int seed (default 128).
        return_label_map: also return an int16 HxW map: ``k >= 0`` where annotation ``k`` is the
            visible object, ``-1`` background, ``-2`` a drawn but unannotated (mostly hidden)
            object.

    Returns:
        ``(image, annotations)``: HxWx3 uint8 BGR and the Detectron2 annotation dicts
        (XYXY_ABS boxes). Unlabeled splits render the same way: their hidden ground truth is
        returned here (useful to score pseudo-labels), not in their dataset dicts.
    """
    seed, size, index = _resolve(name_or_seed, index, image_size)
    layout = _layout_cached(seed, index, size)
    img = _render_pixels(seed, index, layout)
    annos = _annotations(layout)
    if not return_label_map:
        return img, annos
    lab = np.full(layout.label.shape, -2, dtype=np.int16)
    lab[layout.label < 0] = -1
    for j, k in enumerate(layout.kept):
        lab[layout.label == k] = j
    return img, annos, lab


def shapes_annotations(name_or_seed: Union[str, int], index: int, *,
                       image_size: Optional[int] = None) -> List[dict]:
    """The annotations of one image, without rendering its pixels."""
    seed, size, index = _resolve(name_or_seed, index, image_size)
    return _annotations(_sample_layout(seed, index, size))


def _resolve(name_or_seed, index, image_size) -> Tuple[int, int, int]:
    if isinstance(name_or_seed, (int, np.integer)):
        return int(name_or_seed), int(image_size or 128), _check_index(index)
    if image_size is not None:
        raise ValueError("image_size can only be given with an int seed")
    name = str(name_or_seed)
    if name.startswith(PREFIX):
        source, idx = _parse_path(name)
        if idx is None:
            raise ValueError(f"{name} names no image")
        index = idx
    else:
        source = name
    src = resolve_shapes_source(source)
    return src.seed, src.image_size, _check_index(index)


def _check_index(index) -> int:
    index = int(index)
    if index < 0:
        raise ValueError(f"image index must be >= 0, got {index}")
    return index


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    if not ok:  # pragma: no cover
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


class _PngCache:
    """The encoded PNGs of the most recently served images, within a byte budget.

    A training run draws each image several times (1000 iterations x 8 images of a 2000-image
    split: 4 times), and rendering + encoding is most of what loading an image costs (the PNG
    decode in ``read_image`` is the rest). 128 MB holds a 128 px split of 2600 images. One per process (DataLoader workers each
    fill their own)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: "collections.OrderedDict[tuple, bytes]" = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: tuple, make) -> bytes:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
            return data
        data = make()
        if len(data) <= self.max_bytes:
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                self._bytes -= len(self._items.popitem(last=False)[1])
        return data


_PNG_CACHE = _PngCache(max_bytes=128 * 2**20)


# ============================================================================================
# PathHandler for shapes://
# ============================================================================================
_PATH_RE = re.compile(r"^([A-Za-z0-9_.\-]+)(?:/(?:(\d+)\.png)?)?$")


def _parse_path(path: str) -> Tuple[str, Optional[int]]:
    rest = path[len(PREFIX):]
    m = _PATH_RE.match(rest)
    if not m:
        raise FileNotFoundError(f"malformed shapes path {path!r}: expected "
                                f"{PREFIX}<split>/<index>.png")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


class ShapesPathHandler(PathHandler):
    """Serves rendered PNGs for ``shapes://<source>/<index>.png`` (read-only)."""

    def _get_supported_prefixes(self) -> List[str]:
        return [PREFIX]

    def _lookup(self, path: str) -> Tuple[str, ShapesSource, Optional[int]]:
        source, index = _parse_path(path)
        try:
            src = resolve_shapes_source(source)
        except KeyError as e:
            raise FileNotFoundError(f"{path}: {e.args[0]}") from None
        if index is not None and src.num_images is not None and index >= src.num_images:
            raise FileNotFoundError(f"{path}: index {index} out of range, "
                                    f"'{source}' has {src.num_images} images")
        return source, src, index

    def _png(self, path: str) -> bytes:
        _, src, index = self._lookup(path)
        if index is None:
            raise IsADirectoryError(path)
        def render() -> bytes:
            img, _ = render_shapes_image(src.seed, index, image_size=src.image_size)
            return encode_png(img)

        return _PNG_CACHE.get((src.seed, src.image_size, index), render)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs):
        self._check_kwargs(kwargs)
        if any(c in mode for c in "wax+"):
            raise PermissionError(f"{path}: shapes:// is read-only")
        if "b" not in mode:
            raise ValueError(f"{path}: shapes:// serves binary PNG data; open it with mode='rb'")
        return io.BytesIO(self._png(path))

    def _get_local_path(self, path: str, force: bool = False, **kwargs) -> str:
        self._check_kwargs(kwargs)
        source, src, index = self._lookup(path)
        if index is None:
            raise IsADirectoryError(f"{path}: get_local_path needs an image path")
        from iopath.common.file_io import get_cache_dir

        folder = os.path.join(get_cache_dir(), "d2kd_shapes",
                              f"v{GENERATOR_VERSION}_seed{src.seed}_{src.image_size}px")
        local = os.path.join(folder, f"{index:06d}.png")
        if force or not os.path.isfile(local):
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(self._png(path))
            os.replace(tmp, local)
        return local

    def _exists(self, path: str, **kwargs) -> bool:
        self._check_kwargs(kwargs)
        try:
            self._lookup(path)
        except FileNotFoundError:
            return False
        return True

    def _isfile(self, path: str, **kwargs) -> bool:
        return self._exists(path, **kwargs) and _parse_path(path)[1] is not None

    def _isdir(self, path: str, **kwargs) -> bool:
        return self._exists(path, **kwargs) and _parse_path(path)[1] is None

    def _ls(self, path: str, **kwargs) -> List[str]:
        self._check_kwargs(kwargs)
        source, src, index = self._lookup(path)
        if index is not None:
            raise NotADirectoryError(path)
        if src.num_images is None:
            raise OSError(f"{path}: a seed-form source has no fixed length to list")
        return [f"{i:06d}.png" for i in range(src.num_images)]


def _register_path_handler() -> None:
    """Idempotent: a second import (or a re-import in a worker) keeps the existing handler."""
    existing = getattr(PathManager, "_path_handlers", {}).get(PREFIX)
    if isinstance(existing, ShapesPathHandler):
        return
    # Another class of the same name means this module was reloaded: replace the stale handler.
    PathManager.register_handler(ShapesPathHandler(), allow_override=True)


_register_path_handler()


# ============================================================================================
# Dataset dicts and registration
# ============================================================================================
@functools.lru_cache(maxsize=16)
def _all_annotations(seed: int, size: int, num_images: int) -> Tuple[Tuple[tuple, ...], ...]:
    out = []
    for i in range(num_images):
        lay = _sample_layout(seed, i, size)
        out.append(tuple((lay.objects[k].cls, box) for k, box in zip(lay.kept, lay.boxes)))
    return tuple(out)


def visible_mask_rles(seed: int, index: int, size: int) -> List[dict]:
    """Per annotation of image ``index`` (in annotation order), the COCO RLE (``counts`` as str)
    of its VISIBLE pixels: the object's exact rasterised outline (holes included) minus what
    objects drawn over it hide — the pixels the renderer paints with it."""
    lay = _sample_layout(seed, index, size)
    return [_rle(lay.label == k) for k in lay.kept]


@functools.lru_cache(maxsize=8)
def _all_mask_rles(seed: int, size: int, num_images: int) -> Tuple[Tuple[dict, ...], ...]:
    return tuple(tuple(visible_mask_rles(seed, i, size)) for i in range(num_images))


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def load_shapes_dicts(source: str, seed: int, num_images: int, image_size: int = 128,
                      labeled: bool = True, masks: bool = False) -> List[dict]:
    """Detectron2 dataset dicts for ``num_images`` images of ``(seed, image_size)``, named under
    ``shapes://<source>/``. Fresh dicts on every call (the annotations are cached per process).
    ``masks``: each annotation also has its visible pixels as an RLE ``segmentation`` (load with
    ``DatasetMapper(use_instance_mask=True, instance_mask_format="bitmask")``)."""
    annos = _all_annotations(seed, image_size, num_images) if labeled else None
    rles = _all_mask_rles(seed, image_size, num_images) if labeled and masks else None
    dicts = []
    for i in range(num_images):
        d = {
            "file_name": shapes_file_name(source, i),
            "image_id": i,
            "height": image_size,
            "width": image_size,
        }
        if labeled:
            d["annotations"] = [
                {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS,
                 "category_id": c, "iscrowd": 0}
                for c, box in annos[i]
            ]
            if masks:
                for a, rle in zip(d["annotations"], rles[i]):
                    a["segmentation"] = dict(rle)
        dicts.append(d)
    return dicts


def is_shapes_dataset(name: str) -> bool:
    """True for a registered dataset made by :func:`register_shapes`."""
    return (name in DatasetCatalog.list() and name in MetadataCatalog.list()
            and hasattr(MetadataCatalog.get(name), "shapes_source"))


def register_shapes(
    name: str,
    *,
    num_images: int,
    seed: int,
    image_size: int = 128,
    labeled: bool = True,
    source: Optional[str] = None,
    masks: bool = False,
) -> None:
    """Register a shapes split in ``DatasetCatalog``/``MetadataCatalog``.

    Args:
        name: dataset name.
        num_images: images 0..num_images-1 of the stream ``(seed, image_size)``.
        seed: non-negative int; different splits should use different seeds.
        image_size: square image side in pixels.
        labeled: False gives dicts without ``annotations`` (an unlabeled split).
        source: the path name of the images (``shapes://<source>/...``), default ``name``. Give
            another split's name to make a subset that shares its files, e.g. the first 500
            images of ``shapes_train``; its seed and size must then match that split's.
        masks: annotations carry instance masks (their visible pixels, RLE), for Mask R-CNN
            and ``COCOEvaluator(tasks=("bbox", "segm"))``.

    Idempotent: registering the same name again with the same arguments does nothing;
    with different arguments it replaces the old registration.
    """
    if seed < 0 or num_images < 0 or image_size < 16:
        raise ValueError(f"bad shapes split {name}: seed={seed} num_images={num_images} "
                         f"image_size={image_size}")
    source = source or name
    src = ShapesSource(int(seed), int(image_size), int(num_images))
    prev = _SOURCES.get(source)
    if prev is not None and (prev.seed, prev.image_size) != (src.seed, src.image_size):
        if source != name:
            raise ValueError(
                f"shapes split '{name}' wants source '{source}' with seed={seed}, "
                f"image_size={image_size}, but '{source}' has seed={prev.seed}, "
                f"image_size={prev.image_size}"
            )
    elif prev is not None:
        src = ShapesSource(src.seed, src.image_size, max(src.num_images, prev.num_images))
    _SOURCES[source] = src

    spec = {"shapes_source": source, "shapes_seed": int(seed), "shapes_num_images": int(num_images),
            "shapes_image_size": int(image_size), "shapes_labeled": bool(labeled), "shapes_masks": bool(masks)}
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if all(getattr(meta, k, None) == v for k, v in spec.items()):
            return
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(
        name,
        functools.partial(load_shapes_dicts, source, int(seed), int(num_images), int(image_size),
                          bool(labeled), bool(masks)),
    )
    MetadataCatalog.get(name).set(
        thing_classes=list(CLASS_NAMES),
        thing_colors=[tuple(c) for c in CLASS_COLORS],
        evaluator_type="coco",
        shapes_generator_version=GENERATOR_VERSION,
        **spec,
    )
