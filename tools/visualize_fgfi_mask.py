#!/usr/bin/env python3
"""Draw FGFI's imitation mask (docs/methods.md §2.1) over input images, one PNG per level.

    python tools/visualize_fgfi_mask.py --config-file configs/shapes/retinanet_fgfi.py \
        --output output/fgfi_masks [--dataset shapes_val] [--num-images 4] [--psi 0.5] \
        [--max-over all_levels|per_level] [--no-plus-one] [key=value ...]

The mask only depends on the student's anchors, its feature-map sizes and the GT boxes, so the
student is built with random weights (no teacher, no checkpoint needed). The FGFI settings
(levels, ψ, "+1" IoU, max rule) come from the config's ``FGFI`` distiller unless overridden on
the command line; a config without FGFI (e.g. a plain student) uses the anchor source's levels
and FGFI's defaults. Images: the config's test resize applied to ``--dataset`` (default: the
config's training set), no flip.

Output: ``<output>/<image_id>_<level>.png`` (red fill + yellow outline = imitated cells, each
drawn over the stride×stride pixels it covers; green = GT boxes; the title bar gives the mask count) and
``<output>/<image_id>_all.png`` (all levels side by side).
"""
import argparse
import os
from typing import List

import numpy as np
import torch
from PIL import Image, ImageDraw
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.structures import ImageList

import d2kd  # noqa: F401
from d2kd.distill.fgfi import FGFI, fgfi_masks
from d2kd.export import student_model_config


def fgfi_settings(cfg):
    """The FGFI distiller's kwargs from the config (empty dict if it has none)."""
    for d in cfg.model.get("distillers", []) or []:
        if d.get("_target_") is FGFI or getattr(d.get("_target_"), "__name__", "") == "FGFI":
            return {k: d[k] for k in ("in_features", "psi", "iou_plus_one", "max_over") if k in d}
    return {}


def anchor_source(model):
    """(levels with anchors, callable features -> per-level anchors) of an RPN or dense head."""
    pg = getattr(model, "proposal_generator", None)
    if pg is not None:
        return list(pg.in_features), pg.anchor_generator
    if hasattr(model, "head_in_features"):
        return list(model.head_in_features), model.anchor_generator
    raise ValueError(f"{type(model).__name__} has neither an RPN nor a dense head with anchors")


def compute_masks(model, image: torch.Tensor, gt_boxes: torch.Tensor, *, in_features=None, psi=0.5,
                  iou_plus_one=True, max_over="all_levels"):
    """Per level of ``in_features``: (mask (H, W) bool, stride in px) for one (C, H, W) image in
    the model's input format, with ``gt_boxes`` in that image's frame."""
    levels, generator = anchor_source(model)
    in_features = list(in_features) if in_features else levels
    x = (image.to(model.pixel_mean.device).float() - model.pixel_mean) / model.pixel_std
    images = ImageList.from_tensors([x], model.backbone.size_divisibility)
    with torch.no_grad():
        feats = model.backbone(images.tensor)
        anchors = generator([feats[f] for f in levels])
    grids = [tuple(feats[f].shape[-2:]) for f in in_features]
    masks = fgfi_masks([anchors[levels.index(f)] for f in in_features], grids, gt_boxes.to(x.device),
                       psi=psi, iou_plus_one=iou_plus_one, max_over=max_over)
    strides = model.backbone.output_shape()
    return {f: (m.cpu(), strides[f].stride) for f, m in zip(in_features, masks)}


def overlay(rgb: np.ndarray, mask: torch.Tensor, stride: int, boxes, title: str, alpha=0.45) -> Image.Image:
    h, w = rgb.shape[:2]
    up = mask.numpy().repeat(stride, axis=0).repeat(stride, axis=1)[:h, :w]
    pad = np.zeros((h, w), dtype=bool)
    pad[: up.shape[0], : up.shape[1]] = up
    out = rgb.astype(np.float32)
    out[pad] = (1 - alpha) * out[pad] + alpha * np.array([255.0, 0.0, 0.0])
    img = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for y, x in mask.nonzero().tolist():  # outline every imitated cell (yellow)
        draw.rectangle([x * stride, y * stride, (x + 1) * stride - 1, (y + 1) * stride - 1], outline=(255, 255, 0))
    for b in boxes:
        draw.rectangle([float(v) for v in b], outline=(0, 255, 0), width=1)
    canvas = Image.new("RGB", (w, h + 14), (0, 0, 0))
    canvas.paste(img, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), title, fill=(255, 255, 255))
    return canvas


def to_rgb(image: torch.Tensor, input_format: str) -> np.ndarray:
    arr = image.permute(1, 2, 0).numpy().astype(np.uint8)
    return arr[:, :, ::-1] if input_format == "BGR" else arr


def main(argv: List[str] = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--dataset", default=None, help="registered dataset (default: the config's train set)")
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--levels", nargs="*", default=None, help="levels to draw (default: the FGFI levels)")
    ap.add_argument("--psi", type=float, default=None)
    ap.add_argument("--max-over", choices=["all_levels", "per_level"], default=None)
    ap.add_argument("--no-plus-one", action="store_true", help="Detectron2's IoU instead of the '+1' one")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = ap.parse_args(argv)

    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    settings = fgfi_settings(cfg)
    if args.levels:
        settings["in_features"] = args.levels
    if args.psi is not None:
        settings["psi"] = args.psi
    if args.max_over is not None:
        settings["max_over"] = args.max_over
    if args.no_plus_one:
        settings["iou_plus_one"] = False
    settings.setdefault("in_features", None)

    torch.manual_seed(0)
    model = instantiate(student_model_config(cfg.model)).eval()
    names = args.dataset or cfg.dataloader.train.dataset.names
    names = [names] if isinstance(names, str) else list(names)
    dicts = [d for n in names for d in DatasetCatalog.get(n)][: args.num_images]
    mapper = DatasetMapper(
        is_train=True,  # keeps the annotations
        augmentations=instantiate(cfg.dataloader.test.mapper.augmentations),
        image_format=model.input_format,
    )
    os.makedirs(args.output, exist_ok=True)
    written = []
    for d in dicts:
        item = mapper(d)
        boxes = item["instances"].gt_boxes.tensor
        masks = compute_masks(model, item["image"], boxes, **settings)
        rgb = to_rgb(item["image"], model.input_format)
        panels = []
        for level, (mask, stride) in masks.items():
            title = f"{level} s{stride}: {int(mask.sum())}/{mask.numel()} cells"
            panel = overlay(rgb, mask, stride, boxes.tolist(), title)
            path = os.path.join(args.output, f"{d.get('image_id', len(written))}_{level}.png")
            panel.save(path)
            written.append(path)
            panels.append(panel)
        row = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), max(p.height for p in panels)))
        x = 0
        for p in panels:
            row.paste(p, (x, 0))
            x += p.width + 4
        path = os.path.join(args.output, f"{d.get('image_id', len(written))}_all.png")
        row.save(path)
        written.append(path)
    print(f"wrote {len(written)} PNGs to {args.output}")
    return written


if __name__ == "__main__":
    main()
