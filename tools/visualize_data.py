#!/usr/bin/env python3
"""Draw the ground-truth boxes of a registered dataset (shapes, VOC, COCO, ...) into PNGs.

    python tools/visualize_data.py --dataset shapes_val --num 8 --output output/vis_shapes
    python tools/visualize_data.py --dataset shapes_train --num 16 --grid 4 --scale 3 \
        --output output/vis_shapes

Images go through ``detection_utils.read_image`` (so ``shapes://`` files work) and boxes are
drawn with Detectron2's ``Visualizer`` and the dataset's metadata.
"""
import argparse
import os

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="shapes_val")
    p.add_argument("--num", type=int, default=8, help="number of images (from the start)")
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--scale", type=float, default=3.0, help="upscaling of small images")
    p.add_argument("--grid", type=int, default=0, help="also write one grid image, N per row")
    p.add_argument("--output", default="output/vis_data")
    args = p.parse_args(argv)

    import d2kd.data  # noqa: F401  (registers datasets)
    from d2kd.data.builtin import check_dataset_available
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.utils.visualizer import Visualizer

    check_dataset_available(args.dataset)
    dicts = DatasetCatalog.get(args.dataset)[args.start : args.start + args.num]
    meta = MetadataCatalog.get(args.dataset)
    os.makedirs(args.output, exist_ok=True)
    drawn = []
    for d in dicts:
        img = utils.read_image(d["file_name"], format="RGB")
        vis = Visualizer(img, metadata=meta, scale=args.scale)
        out = vis.draw_dataset_dict(d).get_image()
        drawn.append(out)
        name = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(args.output, f"{args.dataset}_{name}.png")
        _write(path, out)
        print(f"{path}: {len(d.get('annotations', []))} boxes")
    if args.grid and drawn:
        h, w = drawn[0].shape[:2]
        same = [x for x in drawn if x.shape[:2] == (h, w)]
        rows = [same[i : i + args.grid] for i in range(0, len(same), args.grid)]
        rows[-1] += [np.zeros_like(same[0])] * (args.grid - len(rows[-1]))
        grid = np.vstack([np.hstack(r) for r in rows])
        path = os.path.join(args.output, f"{args.dataset}_grid.png")
        _write(path, grid)
        print(path)


def _write(path, rgb):
    import cv2

    cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1]))


if __name__ == "__main__":
    main()
