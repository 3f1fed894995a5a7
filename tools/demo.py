#!/usr/bin/env python3
"""Draw a trained model's predictions on images with Detectron2's Visualizer, as PNG files.

    python3 tools/demo.py --predictor output/shapes/retinanet_fitnet/student/predictor.yaml \
        --input photo.jpg shapes://shapes_val/000003.png --output output/demo [--score-thresh 0.3]

``--predictor`` is the ``predictor.yaml`` every d2kd run writes next to its exported student;
the model is served by Detectron2's ``DefaultPredictor`` (``d2kd.export.build_predictor``: its
weights are read without running code from the file; ``--allow-pickle`` for a trusted ``.pkl``
of arbitrary objects). Inputs are image paths (anything Detectron2's ``read_image`` opens,
``shapes://`` included) or folders of images.
"""
import argparse
import os
import pickle
import sys

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def expand_inputs(inputs):
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS))
        else:
            paths.append(item)
    return paths


def draw_predictions(predictor, path, score_thresh, metadata):
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    image = read_image(path, format=predictor.input_format)
    instances = predictor(image)["instances"].to("cpu")
    instances = instances[instances.scores >= score_thresh]
    rgb = image[:, :, ::-1] if predictor.input_format == "BGR" else image
    scale = max(1.0, 512 / max(rgb.shape[:2]))  # small images are enlarged so labels stay legible
    drawn = Visualizer(rgb, metadata, scale=scale).draw_instance_predictions(instances)
    return drawn.get_image(), len(instances)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predictor", required=True, help="predictor.yaml written by a d2kd run or export")
    parser.add_argument("--input", nargs="+", required=True, help="images or folders of images")
    parser.add_argument("--output", default="output/demo", help="folder for the PNG files")
    parser.add_argument("--score-thresh", type=float, default=0.3)
    parser.add_argument(
        "--allow-pickle", action="store_true",
        help="load MODEL.WEIGHTS even if it is a pickle of arbitrary objects (it can run code: trusted files only)",
    )
    args = parser.parse_args(argv)
    if not os.path.isfile(args.predictor):
        sys.exit(f"demo.py: error: predictor config not found: {args.predictor} (a run writes <output_dir>/student/predictor.yaml)")

    import cv2
    from detectron2.data import MetadataCatalog

    from d2kd.export import build_predictor, load_predictor_config

    cfg = load_predictor_config(args.predictor)
    try:
        predictor = build_predictor(cfg, allow_pickle=args.allow_pickle)
    except (pickle.UnpicklingError, ValueError, OSError) as e:  # refused, not a checkpoint, missing
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"demo.py: error: cannot load the model of {args.predictor}: {first}")
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    os.makedirs(args.output, exist_ok=True)
    written = []
    for i, path in enumerate(expand_inputs(args.input)):
        drawn, n = draw_predictions(predictor, path, args.score_thresh, metadata)
        name = os.path.splitext(os.path.basename(path))[0] or f"image{i}"
        out = os.path.join(args.output, f"{i:03d}_{name}.png")
        cv2.imwrite(out, drawn[:, :, ::-1])
        print(f"{path}: {n} detections -> {out}")
        written.append(out)
    return written


if __name__ == "__main__":
    main()
