#!/usr/bin/env python3
"""Annotate images with a trained teacher and write the boxes as a COCO json (docs/methods.md §5.2).

    # shapes: the RetinaNet teacher annotates the 2000 unlabeled shapes images
    python3 tools/pseudo_label.py --config-file configs/shapes/retinanet_teacher.py \
        --weights output/shapes/retinanet_teacher/model_final.pth \
        --source shapes_unlabeled \
        --output output/shapes/pseudo_labels/shapes_unlabeled_retinanet_teacher.json

    # COCO unlabeled2017 with the R101 teacher at scale 600 (max 1000), on 8 GPUs
    python3 tools/pseudo_label.py --config-file COCO-Detection/retinanet_R_101_FPN_3x.yaml \
        --weights /path/to/teacher_r101.pth --source coco_2017_unlabeled \
        --min-size 600 --max-size 1000 --num-gpus 8 --batch-size 8 --num-workers 4 \
        --output output/coco/pseudo_labels/unlabeled2017_r101_600.json

    # or as independent jobs (e.g. on a cluster), then merge
    python3 tools/pseudo_label.py ... --num-shards 4 --shard-id 0   # 1, 2, 3 elsewhere
    python3 tools/pseudo_label.py ... --num-shards 4 --merge-only

``--source`` is a registered dataset name or a folder of images. Boxes with score ≥
``--score-thresh`` (default 0.5) are kept. Progress (with ETA) is logged; every annotated image
is appended at once to ``<output>.parts/shard-*.jsonl``, so re-running the same command after a
crash resumes where it stopped. When all shards are complete the json is written atomically
(the last shard to finish does it; ``--merge-only`` does only that). ``--num-gpus N`` runs N
processes (Detectron2 ``launch``; N CPU processes where there is no GPU); with ``--num-shards S``
as well, each of the S jobs splits its shard over its N processes.
"""
import argparse
import logging
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True, help="teacher config (.py, .yaml, or model-zoo name)")
    p.add_argument("--weights", required=True, help="teacher weights (.pth/.pkl)")
    p.add_argument("--source", required=True, help="registered dataset name or folder of images")
    p.add_argument("--output", required=True, help="COCO json to write")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--min-size", type=int, default=None, help="test short edge (default: teacher config)")
    p.add_argument("--max-size", type=int, default=None, help="test max size (default: teacher config)")
    p.add_argument("--metadata-from", default=None,
                   help="dataset whose classes/category ids the boxes get (default: --source if "
                        "registered, else coco_2017_train for an 80-class teacher)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images (a trial run)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    p.add_argument("--num-workers", type=int, default=0, help="image loading workers per process")
    p.add_argument("--num-shards", type=int, default=1, help="independent jobs the image set is split into")
    p.add_argument("--shard-id", type=int, default=0)
    p.add_argument("--num-gpus", type=int, default=1, help="processes (via detectron2 launch) per job")
    p.add_argument("--dist-url", default="auto")
    p.add_argument("--merge-only", action="store_true", help="only merge finished part files")
    p.add_argument("--force", action="store_true", help="annotate again even if --output exists")
    p.add_argument("--keep-parts", action="store_true", help="keep <output>.parts/ after the merge")
    p.add_argument("--log-period", type=float, default=30.0, help="seconds between progress lines")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="teacher config overrides")
    args = p.parse_args(argv)
    if not 0 <= args.shard_id < args.num_shards:
        p.error(f"--shard-id {args.shard_id} must be in [0, --num-shards={args.num_shards})")
    return args


def _setup(args):
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    import d2kd  # noqa: F401  (datasets, models)
    from d2kd.data import pseudo_labels as pl

    setup_logger(name="d2kd", distributed_rank=comm.get_rank())
    setup_logger(name="detectron2", distributed_rank=comm.get_rank())
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, comm.get_world_size())))
    dicts, image_root = pl.image_dicts_from_source(args.source)
    if args.max_images is not None:
        dicts = dicts[: args.max_images]
    meta_name = args.metadata_from
    if meta_name is None and args.source in DatasetCatalog.list():
        meta_name = args.source
    return dicts, image_root, meta_name


def main(args):
    import torch
    from detectron2.utils import comm

    from d2kd.data import pseudo_labels as pl

    logger = logging.getLogger("d2kd.pseudo_label")
    if os.path.exists(args.output) and not args.force and not args.merge_only:
        try:
            pl.read_pseudo_label_json(args.output)
        except ValueError as e:
            # An empty or truncated file (an interrupted copy, a full disk) is no result: "nothing
            # to do" would keep it, and training would fail on it.
            print(f"{args.output} exists but cannot be read ({e}); annotating again")
        else:
            print(f"{args.output} exists: nothing to do (--force to annotate again)")
            return 0
    dicts, image_root, meta_name = _setup(args)
    world, rank = comm.get_world_size(), comm.get_rank()
    num_parts = args.num_shards * world
    part_id = args.shard_id * world + rank
    info = {
        "description": "d2kd teacher pseudo-labels (tools/pseudo_label.py)",
        "teacher_config": args.config_file,
        "teacher_weights": args.weights,
        "score_thresh": args.score_thresh,
        "source": args.source,
        "image_root": image_root,
    }

    model = None
    if not args.merge_only:
        device = args.device or (f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
        model, mapper = pl.build_annotator(
            args.config_file, args.weights, opts=args.opts, device=device,
            min_size=args.min_size, max_size=args.max_size,
        )
        num_classes = getattr(model, "num_classes", None) or model.roi_heads.num_classes
    else:
        from d2kd.config import build_model_from_config_file

        num_classes = getattr(build_model_from_config_file(args.config_file, args.opts), "num_classes", None)
    if meta_name is None and num_classes == 80:
        meta_name = "coco_2017_train"
    categories, to_dataset = pl.category_info(meta_name, num_classes)

    if not args.merge_only:
        mine = pl.shard_dicts(dicts, num_parts, part_id)
        n = pl.annotate_images(
            model, mine, mapper, pl.part_file(args.output, part_id, num_parts),
            output_json=args.output, to_dataset_id=to_dataset, image_root=image_root,
            score_thresh=args.score_thresh, batch_size=args.batch_size,
            num_workers=args.num_workers, log_period_s=args.log_period,
            desc=f"[part {part_id + 1}/{num_parts}] ",
        )
        logger.info("part %d/%d: annotated %d images in this run (%d in the part)",
                    part_id + 1, num_parts, n, len(mine))
    comm.synchronize()
    if comm.is_main_process():
        summary = pl.merge_parts(args.output, dicts, categories, info, remove_parts=not args.keep_parts)
        if summary is None:
            logger.info("other shards are not finished: the json is written by the last one "
                        "(or run again with --merge-only)")
            return 1 if args.merge_only else 0
        print(f"{args.output}: {summary['images']} images, {summary['images_with_boxes']} with boxes, "
              f"{summary['boxes']} boxes with score >= {args.score_thresh}")
    return 0


def cli(argv=None):
    args = parse_args(argv)
    if args.num_gpus > 1:
        from detectron2.engine import launch

        launch(main, args.num_gpus, num_machines=1, machine_rank=0, dist_url=args.dist_url, args=(args,))
        return 0
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
