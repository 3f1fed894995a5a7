#!/usr/bin/env python3
"""AP-vs-iteration curves of training runs evaluated along the way, with the plateau test.

    python3 tools/learning_curves.py --run "teacher=output/curves/faster_rcnn_teacher_4000" \
        --run "student=output/curves/faster_rcnn_student_6000" --output docs/curves/faster_rcnn \
        [--window 0.25 --tol 1.0] [--title TEXT]

Each run folder is a ``train_net.py`` output with periodic evaluation (``train.eval_period``).
Writes ``<output>.png`` (the curves) and ``<output>.md`` (each run's evaluations, its gain over
the last ``--window`` of its schedule, and, for runs given twice with the same LABEL at two
lengths, the final AP the longer schedule gained: plateaued when that is below ``--tol``; see
:mod:`benchmarking.learning_curves`).
"""
import argparse
import os

from benchmarking.learning_curves import markdown_table, plot, run_curve  # tools/benchmarking/


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                        help="a label and a train_net.py output folder (repeatable)")
    parser.add_argument("--output", required=True, help="path without extension: writes .png and .md")
    parser.add_argument("--window", type=float, default=0.25, help="last fraction of the schedule tested")
    parser.add_argument("--tol", type=float, default=1.0, help="AP gain below which a run has plateaued")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    named = []
    for item in args.run:
        label, sep, folder = item.partition("=")
        if not sep or not os.path.isfile(os.path.join(folder, "metrics.json")):
            parser.error(f"--run {item!r}: write LABEL=DIR, DIR a train_net.py output folder with a metrics.json")
        curve, max_iter = run_curve(folder)
        if len(curve) < 2:
            parser.error(f"--run {item!r}: {len(curve)} evaluation(s) in its metrics.json; a curve needs "
                         f"train.eval_period below train.max_iter")
        named.append((label, curve, max_iter))
    png = plot([(f"{label}, {max_iter} it", curve) for label, curve, max_iter in named], args.output + ".png", args.title)
    md = args.output + ".md"
    with open(md, "w") as f:
        f.write(markdown_table(named, window=args.window, tol=args.tol))
    print(f"wrote {png} and {md}")
    return named


if __name__ == "__main__":
    main()
