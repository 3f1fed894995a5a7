#!/usr/bin/env python3
"""Teacher / baseline student / distilled students' predictions side by side, plus FGFI's mask.

    # from a benchmark's output folder (its results.json names every run):
    python tools/visualize_predictions.py --from-benchmark output/benchmark/quick --num 4
    # or any models, NAME=CONFIG:WEIGHTS (a distillation config draws its student):
    python tools/visualize_predictions.py --dataset shapes_val --num 4 --output output/vis_pred \
        --models teacher=configs/shapes/retinanet_teacher.py:output/shapes/retinanet_teacher/model_final.pth \
                 fgfi=configs/shapes/retinanet_fgfi.py:output/shapes/retinanet_fgfi/model_final.pth

For each of the first ``--num`` images of ``--dataset`` it writes ``<output>/pred_<image>.png``:
ground truth, then each model's detections above ``--score-thresh`` (Detectron2 ``Visualizer``;
a box's colour is its class, as the legend under the panels says, its label the class and
score), then, for every model whose config has an FGFI distiller, the FGFI imitation mask of that
image (``compute_masks`` of tools/visualize_fgfi_mask.py with the config's ψ: the finest level,
and the union of every level's cells; red = imitated, yellow = GT boxes). From a benchmark, each
student panel names the seed of the run it draws (``--seed``, default the first seed that ran).
"""
import argparse
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

# FGFI settings from a config and per-level masks: the sibling tool (tools/ is sys.path[0] when a
# tool runs as a script)
import visualize_fgfi_mask


def load_student(config: str, weights: str, overrides=()):
    """The (student) model of ``config`` with ``weights``, as ``train_net.py --eval-only`` builds it."""
    import torch
    from detectron2.config import LazyConfig, instantiate

    import d2kd  # noqa: F401
    from d2kd.checkpoint import ReportingCheckpointer
    from d2kd.export import DISTILLER_PREFIX, student_model_config

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config), list(overrides))
    model = instantiate(student_model_config(cfg.model))
    # The config's own pickle opt-in, as train_net.py --eval-only honours it.
    allow_pickle = bool(cfg.train.get("allow_pickle_checkpoints", False)) if "train" in cfg else False
    ReportingCheckpointer(model, drop_prefixes=(DISTILLER_PREFIX,), allow_pickle=allow_pickle).load(weights)
    model.eval()
    return model, cfg


def fgfi_spec(cfg) -> Optional[Dict]:
    """The FGFI distiller's settings in a distillation config (None if it has none)."""
    for d in cfg.model.get("distillers", None) or []:
        target = d.get("_target_")
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        if name.split(".")[-1] == "FGFI":
            spec = visualize_fgfi_mask.fgfi_settings(cfg)
            return {"in_features": list(spec.get("in_features", d.get("in_features")) or []),
                    "psi": float(spec.get("psi", d.get("psi", 0.5))),
                    "max_over": spec.get("max_over", d.get("max_over", "all_levels")),
                    "iou_plus_one": spec.get("iou_plus_one", d.get("iou_plus_one", True))}
    return None


def fgfi_level_masks(model, spec: Dict, image_chw, gt_boxes) -> Dict:
    """Per FGFI level: (bool (H, W) mask, stride), by tools/visualize_fgfi_mask.compute_masks."""
    import torch

    gt = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
    return visualize_fgfi_mask.compute_masks(model, image_chw, gt, in_features=spec["in_features"] or None,
                                             psi=spec["psi"], iou_plus_one=spec["iou_plus_one"],
                                             max_over=spec["max_over"])


def union_mask(level_masks: Dict, height: int, width: int) -> np.ndarray:
    """(H, W) bool: a pixel is set when the cell covering it is imitated at any level."""
    out = np.zeros((height, width), dtype=bool)
    for mask, stride in level_masks.values():
        up = mask.numpy().repeat(stride, axis=0).repeat(stride, axis=1)[:height, :width]
        out[: up.shape[0], : up.shape[1]] |= up
    return out


def class_color(meta, class_id: int):
    """The class's colour (0-1 RGB): the dataset's ``thing_colors``, else a fixed palette."""
    colors = meta.get("thing_colors", None)
    if colors:
        return tuple(c / 255.0 for c in colors[class_id % len(colors)])
    import matplotlib

    return tuple(matplotlib.colormaps["tab10"](class_id % 10)[:3])


def draw_boxes(img_rgb, boxes, classes, scores, meta, scale: float):
    """Boxes in their class's colour, labelled with the class (and the score, if given)."""
    from detectron2.utils.visualizer import Visualizer

    names = meta.get("thing_classes", None) or []
    labels = [(names[c] if c < len(names) else str(c)) + (f" {100 * s:.0f}%" if s is not None else "")
              for c, s in zip(classes, scores if scores is not None else [None] * len(classes))]
    vis = Visualizer(img_rgb, metadata=meta, scale=scale)
    for box, label, c in zip(np.asarray(boxes).reshape(-1, 4), labels, classes):
        color = class_color(meta, c)
        # opaque edges: Visualizer's default half-transparent ones take the background's hue
        vis.draw_box(box, alpha=1.0, edge_color=color)
        # inside the box's top-left corner (Visualizer's text hangs down from its position)
        vis.draw_text(label, (box[0], box[1]), color=color, horizontal_alignment="left",
                      font_size=0.8 * vis._default_font_size)
    return vis.get_output().get_image()


def draw_predictions(img_rgb, instances, meta, scale: float, thresh: float):
    inst = instances.to("cpu")
    inst = inst[inst.scores >= thresh]
    return draw_boxes(img_rgb, inst.pred_boxes.tensor.numpy(), inst.pred_classes.tolist(), inst.scores.tolist(),
                      meta, scale)


def legend_entries(meta, class_ids, with_mask: bool) -> List[Tuple[str, tuple]]:
    """``[(label, colour)]`` for the figure's legend: each class drawn, then the mask colours."""
    names = meta.get("thing_classes", None) or []
    out = [(names[c] if c < len(names) else str(c), class_color(meta, c)) for c in sorted(set(class_ids))]
    if with_mask:
        out += [("FGFI: imitated cells", (1.0, 40 / 255, 40 / 255)), ("FGFI panels: ground-truth box", (1.0, 1.0, 0.0))]
    return out


def draw_mask(img_rgb, mask, gt_boxes, scale: float):
    from detectron2.utils.visualizer import Visualizer

    tint = img_rgb.astype(np.float32).copy()
    sel = mask > 0
    tint[sel] = 0.45 * tint[sel] + 0.55 * np.array([255, 40, 40], dtype=np.float32)
    tint[~sel] = 0.6 * tint[~sel]
    vis = Visualizer(tint.astype(np.uint8), scale=scale)
    for b in gt_boxes:
        vis.draw_box(b, edge_color="yellow")
    return vis.get_output().get_image()


def from_benchmark(folder: str, seed: Optional[int], detector: Optional[str]) -> Tuple[List, str]:
    """``[(name, config, weights)]`` of a benchmark's teacher, baseline and distilled runs."""
    with open(os.path.join(folder, "results.json")) as f:
        res = json.load(f)
    det = detector or next(iter(res["detectors"]))
    d = res["detectors"][det]
    models = [("teacher", d["teacher"]["config"], d["teacher"]["weights"])]

    def pick(runs):
        ok = [r for r in runs if r.get("status") in ("done", "reused")]
        ok = [r for r in ok if seed is None or r["seed"] == seed] or ok
        return ok[0] if ok else None

    # each student is named with the seed of the run drawn (the asked one, else the first that ran)
    for bname, b in d["baselines"].items():
        r = pick(b["runs"])
        if r:
            models.append((f"{'baseline' if bname == 'default' else f'baseline_{bname}'}, seed {r['seed']}", b["config"],
                           os.path.join(r["out_dir"], "model_final.pth")))
    for m, mr in d["methods"].items():
        r = pick(mr["runs"])
        if r:
            models.append((f"{m}, seed {r['seed']}", mr["config"], os.path.join(r["out_dir"], "model_final.pth")))
    val = res.get("settings", {}).get("val_set") or "shapes_val"
    return models, val


def main(argv=None) -> List[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", nargs="*", default=[], metavar="NAME=CONFIG:WEIGHTS")
    p.add_argument("--from-benchmark", metavar="FOLDER", help="take the models from FOLDER/results.json")
    p.add_argument("--detector", help="with --from-benchmark: which detector (default: the first)")
    p.add_argument("--seed", type=int, default=None,
                   help="with --from-benchmark: which seed's runs (default: each method's first run; "
                        "the panel titles say which)")
    p.add_argument("--dataset", default=None, help="default shapes_val (or the benchmark's validation set)")
    p.add_argument("--num", type=int, default=4)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--score-thresh", type=float, default=0.3)
    p.add_argument("--scale", type=float, default=3.0)
    p.add_argument("--output", default=None, help="default <benchmark folder>/predictions or output/vis_predictions")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils

    import d2kd  # noqa: F401

    torch.set_num_threads(1)
    models = []
    dataset = args.dataset
    if args.from_benchmark:
        models, val = from_benchmark(args.from_benchmark, args.seed, args.detector)
        dataset = dataset or val
    for spec in args.models:
        name, rest = spec.split("=", 1)
        config, weights = rest.rsplit(":", 1)
        models.append((name, config, weights))
    if not models:
        p.error("give --models NAME=CONFIG:WEIGHTS ... or --from-benchmark FOLDER")
    dataset = dataset or "shapes_val"
    out_dir = args.output or (os.path.join(args.from_benchmark, "predictions") if args.from_benchmark
                              else "output/vis_predictions")
    os.makedirs(out_dir, exist_ok=True)

    loaded = []
    for name, config, weights in models:
        model, cfg = load_student(config, weights)
        loaded.append((name, model, fgfi_spec(cfg)))
    meta = MetadataCatalog.get(dataset)
    dicts = DatasetCatalog.get(dataset)[args.start: args.start + args.num]
    written = []
    for d in dicts:
        bgr = utils.read_image(d["file_name"], format="BGR")
        rgb = bgr[:, :, ::-1]
        image = torch.as_tensor(np.ascontiguousarray(bgr.transpose(2, 0, 1))).float()
        from detectron2.structures import BoxMode

        gt = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d.get("annotations", [])]
        gt_classes = [a["category_id"] for a in d.get("annotations", [])]
        panels = [("ground truth", draw_boxes(rgb, gt, gt_classes, None, meta, args.scale))]
        drawn = list(gt_classes)
        for name, model, spec in loaded:
            with torch.no_grad():
                inst = model([{"image": image, "height": bgr.shape[0], "width": bgr.shape[1]}])[0]["instances"]
            n = int((inst.scores >= args.score_thresh).sum())
            drawn += inst.pred_classes[inst.scores >= args.score_thresh].tolist()
            panels.append((f"{name}\n{n} detection(s) with score ≥ {args.score_thresh}",
                           draw_predictions(rgb, inst, meta, args.scale, args.score_thresh)))
        for name, model, spec in loaded:
            if spec is not None:
                per_level = fgfi_level_masks(model, spec, image, gt)
                finest = min(per_level, key=lambda f: per_level[f][1])
                counts = " ".join(f"{f}:{int(m.sum())}" for f, (m, _) in per_level.items())
                for title, levels in ((f"FGFI mask {finest} ({name}, ψ={spec['psi']})", {finest: per_level[finest]}),
                                      (f"FGFI mask, all levels ({counts})", per_level)):
                    mask = union_mask(levels, *rgb.shape[:2])
                    panels.append((title, draw_mask(rgb, mask, gt, args.scale)))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 4.3), squeeze=False)
        for ax, (title, img) in zip(axes[0], panels):
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        stem = os.path.splitext(os.path.basename(str(d["file_name"])))[0]
        source = f" — runs of {args.from_benchmark}" if args.from_benchmark else ""
        fig.suptitle(f"{dataset}, image {stem}{source}; box colour = class, label = class and score", fontsize=9)
        from matplotlib.patches import Patch

        entries = legend_entries(meta, drawn, with_mask=any(spec is not None for _, _, spec in loaded))
        if entries:
            fig.legend(handles=[Patch(facecolor=c, edgecolor="black", label=lab) for lab, c in entries],
                       loc="lower center", ncol=min(len(entries), 10), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        path = os.path.join(out_dir, f"pred_{dataset}_{stem}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
        print(path)
    return written


if __name__ == "__main__":
    main()
