"""Check d2kd on a CUDA GPU: every shapes distillation family and method trains, evaluates and
exports there, and the shipped teachers evaluate on the GPU as they did on the CPU.

The test suite runs on CPU (CI has no GPU); this script is the GPU counterpart, run by hand on a
machine with one. For each case it runs ``train_net.py`` (the user's command, in a subprocess)
for ``--iters`` iterations in mixed precision (``train.amp.enabled=True``: Detectron2's
``AMPTrainer``, float16 with its grad scaler), then checks, from the run's own files:

- the process succeeded and every logged loss is finite;
- the teacher's AP on the GPU (``teacher/bbox/AP``, its evaluation before training) against the
  AP its model card records for the CPU (``d2kd/model_zoo/shapes/<name>.json``);
- the exported student (``<run>/student/predictor.yaml``) predicts the same detections on the GPU
  as on the CPU (numbers, nearest same-class box, sorted scores; :func:`compare_predictors`);
- seconds per iteration (the median of ``metrics.json``'s ``time``) and the peak GPU memory.

    python3 tools/cuda_check.py --iters 100 --parallel 4 --output output/cuda_check

It prints one table row per case and writes ``results.json`` and ``results.md`` under
``--output``. Results: docs/gpu.md.
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from d2kd.export import build_predictor, load_predictor_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = "d2kd/model_zoo/shapes"
TEACHERS = {  # the config's teacher output path -> the shipped checkpoint that replaces it
    "retinanet": f"{ZOO}/retinanet_teacher_12000",
    "faster_rcnn": f"{ZOO}/faster_rcnn_teacher_8000",
    "fcos": f"{ZOO}/fcos_teacher_6000",
}

# (name, config, teacher family or None, extra overrides). "ssd_teacher" trains first: there is
# no shipped SSD teacher, and ssd_chen2017 distils from the one trained here.
CASES = [
    ("retinanet_teacher", "retinanet_teacher.py", None, []),
    ("ssd_teacher", "ssd_teacher.py", None, []),
    ("retinanet_fgfi", "retinanet_fgfi.py", "retinanet", []),
    ("retinanet_gkd", "retinanet_gkd.py", "retinanet", []),
    ("retinanet_adl", "retinanet_adl.py", "retinanet", []),
    ("retinanet_cwd", "retinanet_cwd.py", "retinanet", []),
    ("retinanet_pkd", "retinanet_pkd.py", "retinanet", []),
    ("retinanet_mgd", "retinanet_mgd.py", "retinanet", []),
    ("retinanet_fgd", "retinanet_fgd.py", "retinanet", []),
    ("faster_rcnn_fgfi_gkd", "faster_rcnn_fgfi_gkd.py", "faster_rcnn", []),
    ("faster_rcnn_chen2017", "faster_rcnn_chen2017.py", "faster_rcnn", []),
    ("faster_rcnn_softlabel", "faster_rcnn_softlabel.py", "faster_rcnn", []),
    ("faster_rcnn_lshfm_lsh", "faster_rcnn_lshfm_lsh.py", "faster_rcnn", []),
    ("faster_rcnn_fgd", "faster_rcnn_fgd.py", "faster_rcnn", []),
    ("faster_rcnn_pkd_from_retinanet", "faster_rcnn_pkd_from_retinanet.py", "retinanet", []),
    ("mask_rcnn_fgfi", "mask_rcnn_fgfi.py", "faster_rcnn", []),
    ("fcos_fgfi", "fcos_fgfi.py", "fcos", []),
    ("fcos_cwd", "fcos_cwd.py", "fcos", []),
    ("fcos_adl", "fcos_adl.py", "fcos", []),
    ("retinanet_fitnet_from_fcos", "retinanet_fitnet_from_fcos.py", "fcos", []),
]
AFTER_SSD_TEACHER = [("ssd_chen2017", "ssd_chen2017.py", "ssd", [])]


def run_case(case, args):
    name, config, family, extra = case
    out = os.path.join(args.output, name)
    cmd = [
        sys.executable, "-X", "faulthandler", "train_net.py", "--config-file", f"configs/shapes/{config}",
        f"train.max_iter={args.iters}", f"train.eval_period={args.iters}",
        f"train.checkpointer.period={args.iters}", "train.seed=0", "train.amp.enabled=True",
        "train.log_period=10", f"train.output_dir={out}", "train.device=cuda",
    ] + extra
    if family == "ssd":
        cmd.append(f"model.teacher.weights={os.path.join(args.output, 'ssd_teacher', 'model_final.pth')}")
    elif family is not None:
        cmd.append(f"model.teacher.weights={TEACHERS[family]}.pth")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    start = time.time()
    with open(os.path.join(args.output, f"{name}.log"), "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    row = {"name": name, "config": config, "rc": rc, "wall_s": round(time.time() - start, 1)}
    row.update(read_metrics(out))
    row["peak_mem_mb"] = peak_memory_mb(os.path.join(args.output, f"{name}.log"))
    if family in TEACHERS:
        with open(os.path.join(ROOT, f"{TEACHERS[family]}.json")) as f:
            card = json.load(f)
        row["teacher_ap_card"] = card_ap(card)
    if rc == 0 and os.path.isfile(os.path.join(out, "student", "predictor.yaml")):
        try:
            row.update(compare_predictors(os.path.join(out, "student", "predictor.yaml"), args.images))
        except Exception as e:  # reported in the row; the other cases still run
            row["predictor_error"] = f"{type(e).__name__}: {e}"
    return row


def card_ap(card):
    return round(card["eval"]["AP"], 2)


def read_metrics(out):
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return {"losses_finite": None}
    rows = [json.loads(line) for line in open(path) if line.strip()]
    losses = [v for r in rows for k, v in r.items() if "loss" in k and isinstance(v, (int, float))]
    times = [r["time"] for r in rows if "time" in r]
    last = {}
    for r in rows:
        last.update(r)
    return {
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "last_total_loss": last.get("total_loss"),
        "s_per_iter": round(statistics.median(times), 4) if times else None,
        "student_ap": last.get("bbox/AP"),
        "student_segm_ap": last.get("segm/AP"),
        "teacher_ap": last.get("teacher/bbox/AP"),
    }


def peak_memory_mb(log_path):
    """The largest ``max_mem: <N>M`` Detectron2's CommonMetricPrinter logged (CUDA's
    ``max_memory_allocated``, not written to metrics.json)."""
    found = re.findall(r"max_mem: (\d+)M", open(log_path).read())
    return max(int(x) for x in found) if found else None


def compare_predictors(predictor_yaml, n_images):
    """How far the exported student's detections on CUDA are from its detections on CPU: each
    GPU box's distance (largest coordinate difference, pixels) to the nearest CPU box of its
    class, and the largest difference of the sorted scores. Near-equal scores (an untrained
    student's) may swap order between devices, so boxes are matched, not compared by rank."""
    cfg = load_predictor_config(predictor_yaml)
    on_gpu = build_predictor(predictor_yaml, device="cuda")
    on_cpu = build_predictor(predictor_yaml, device="cpu")
    dataset = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "shapes_val"
    box_diff, score_diff, counts = 0.0, 0.0, []
    for record in DatasetCatalog.get(dataset)[:n_images]:
        image = read_image(record["file_name"], format="BGR")  # shapes:// too (PathManager)
        a = on_gpu(image)["instances"].to("cpu")
        b = on_cpu(image)["instances"].to("cpu")
        counts.append((len(a), len(b)))
        boxes, scores = detection_gap(a, b)
        box_diff, score_diff = max(box_diff, boxes), max(score_diff, scores)
    return {
        "predictor_box_diff_px": round(box_diff, 4),
        "predictor_score_diff": round(score_diff, 5),
        "predictor_counts_equal": all(x == y for x, y in counts),
    }


def detection_gap(a, b):
    """``(box px, score)`` between two ``Instances``: the largest distance (largest coordinate
    difference) from a box of ``a`` to the nearest box of ``b`` of its class (inf where the class
    is missing from ``b``), and the largest difference of their scores sorted. ``(0, 0)`` where
    either is empty."""
    if not len(a) or not len(b):
        return 0.0, 0.0
    gap = (a.pred_boxes.tensor[:, None] - b.pred_boxes.tensor[None]).abs().amax(-1)
    gap[a.pred_classes[:, None] != b.pred_classes[None]] = float("inf")
    n = min(len(a), len(b))
    sa, sb = a.scores.sort(descending=True)[0][:n], b.scores.sort(descending=True)[0][:n]
    return float(gap.amin(1).max()), float((sa - sb).abs().max())


def markdown(rows, args):
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        f"{gpu}, torch {torch.__version__}, CUDA {torch.version.cuda}; {args.iters} iterations "
        f"per case in float16 AMP, {args.parallel} cases at a time.",
        "",
        "| case | ok | losses finite | s/iter | peak MB | teacher AP (GPU / CPU card) | student AP "
        "| exported: max Δbox px, Δscore (GPU vs CPU) |",
        "|---|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        teacher = "" if r.get("teacher_ap") is None else f"{r['teacher_ap']:.2f} / {r.get('teacher_ap_card')}"
        student = "" if r.get("student_ap") is None else f"{r['student_ap']:.2f}"
        if r.get("student_segm_ap") is not None:
            student += f" (segm {r['student_segm_ap']:.2f})"
        pred = ""
        if "predictor_box_diff_px" in r:
            pred = f"{r['predictor_box_diff_px']}, {r['predictor_score_diff']}"
            if not r["predictor_counts_equal"]:
                pred += " (counts differ)"
        lines.append(
            f"| {r['name']} | {'yes' if r['rc'] == 0 else 'rc ' + str(r['rc'])} | {r.get('losses_finite')} "
            f"| {r.get('s_per_iter')} | {r.get('peak_mem_mb')} | {teacher} | {student} | {pred} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4, help="cases run at once on the one GPU")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads per case")
    parser.add_argument("--images", type=int, default=8, help="images for the GPU/CPU predictor comparison")
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    parser.add_argument("--output", default="output/cuda_check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_check.py: no CUDA device (torch.cuda.is_available() is False)")
    args.output = os.path.abspath(args.output)
    os.makedirs(args.output, exist_ok=True)
    cases = [c for c in CASES + AFTER_SSD_TEACHER if not args.only or c[0] in args.only]
    first = [c for c in cases if c not in AFTER_SSD_TEACHER]
    rows = []

    def record(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    with ThreadPoolExecutor(args.parallel) as pool:
        for row in pool.map(lambda c: run_case(c, args), first):
            record(row)
    for case in [c for c in cases if c in AFTER_SSD_TEACHER]:
        record(run_case(case, args))
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    table = markdown(rows, args)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table)
    print(table)
    failed = [r["name"] for r in rows if r["rc"] != 0 or r.get("losses_finite") is False]
    sys.exit(f"cuda_check.py: failed: {failed}" if failed else 0)


if __name__ == "__main__":
    main()
