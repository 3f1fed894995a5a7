"""Which experiments the benchmark knows: (detector, method) -> distillation config.

The table grows as methods land: a row whose config file does not exist yet is skipped with a
printed note, and ``discover()`` also picks up any ``configs/shapes/<detector>_<method>.py`` that
is not in the table (so a new method is benchmarked before anyone edits this file).

Each detector names its plain student (the baseline) config; a row may name its own baseline
when the method changes the data (ADL's few-labels student trains on ``shapes_train_500``).
The teacher is never listed here: it is whatever the distillation config's ``model.teacher``
says (``config_file`` + ``weights``), so the benchmark and ``train_net.py`` always agree.

Config paths are relative to ``root``, the folder the benchmark's jobs run in (they are the
``--config-file`` of their command lines); ``root`` defaults to the clone this package lives in
(:data:`REPO`), whose ``configs/shapes`` it benchmarks.
"""
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

#: The clone's root: ``tools/benchmarking/`` is two folders below it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: The benchmark's configs, relative to the root.
SHAPES_DIR = "configs/shapes"

#: detector -> its plain student config (the baseline of every method of that detector).
DETECTORS: Dict[str, str] = {
    "retinanet": f"{SHAPES_DIR}/retinanet_student.py",
    "faster_rcnn": f"{SHAPES_DIR}/faster_rcnn_student.py",
    "ssd": f"{SHAPES_DIR}/ssd_student.py",
    "fcos": f"{SHAPES_DIR}/fcos_student.py",
    "mask_rcnn": f"{SHAPES_DIR}/mask_rcnn_student.py",
}

#: (detector, method) -> (distillation config, baseline config or None for the detector's).
EXPERIMENTS: Dict[Tuple[str, str], Tuple[str, Optional[str]]] = {
    ("retinanet", "fitnet"): (f"{SHAPES_DIR}/retinanet_fitnet.py", None),
    ("retinanet", "fgfi"): (f"{SHAPES_DIR}/retinanet_fgfi.py", None),
    ("retinanet", "lshfm_l2"): (f"{SHAPES_DIR}/retinanet_lshfm_l2.py", f"{SHAPES_DIR}/retinanet_student_tower128_finetune.py"),
    ("retinanet", "lshfm_lsh"): (f"{SHAPES_DIR}/retinanet_lshfm_lsh.py", f"{SHAPES_DIR}/retinanet_student_tower128_finetune.py"),
    ("retinanet", "lshfm_lshl2"): (f"{SHAPES_DIR}/retinanet_lshfm_lshl2.py", f"{SHAPES_DIR}/retinanet_student_tower128_finetune.py"),
    ("retinanet", "gkd"): (f"{SHAPES_DIR}/retinanet_gkd.py", None),
    ("retinanet", "adl"): (f"{SHAPES_DIR}/retinanet_adl.py", f"{SHAPES_DIR}/retinanet_student_500.py"),
    ("retinanet", "adl_semi"): (f"{SHAPES_DIR}/retinanet_adl_semi.py", f"{SHAPES_DIR}/retinanet_student_500.py"),
    ("faster_rcnn", "softlabel"): (f"{SHAPES_DIR}/faster_rcnn_softlabel.py", None),
    ("faster_rcnn", "fgfi"): (f"{SHAPES_DIR}/faster_rcnn_fgfi.py", None),
    ("faster_rcnn", "fitnet"): (f"{SHAPES_DIR}/faster_rcnn_fitnet.py", None),
    ("faster_rcnn", "lshfm_l2"): (f"{SHAPES_DIR}/faster_rcnn_lshfm_l2.py", None),
    ("faster_rcnn", "lshfm_lsh"): (f"{SHAPES_DIR}/faster_rcnn_lshfm_lsh.py", None),
    ("faster_rcnn", "lshfm_lshl2"): (f"{SHAPES_DIR}/faster_rcnn_lshfm_lshl2.py", None),
    ("faster_rcnn", "gkd"): (f"{SHAPES_DIR}/faster_rcnn_gkd.py", None),
    ("faster_rcnn", "chen2017"): (f"{SHAPES_DIR}/faster_rcnn_chen2017.py", None),
    ("faster_rcnn", "fgfi_gkd"): (f"{SHAPES_DIR}/faster_rcnn_fgfi_gkd.py", None),
    ("faster_rcnn", "fgfi_finetune"): (f"{SHAPES_DIR}/faster_rcnn_fgfi_finetune.py", f"{SHAPES_DIR}/faster_rcnn_student_finetune.py"),
    ("faster_rcnn", "gkd_finetune"): (f"{SHAPES_DIR}/faster_rcnn_gkd_finetune.py", f"{SHAPES_DIR}/faster_rcnn_student_finetune.py"),
    ("retinanet", "pkd"): (f"{SHAPES_DIR}/retinanet_pkd.py", None),
    ("retinanet", "cwd"): (f"{SHAPES_DIR}/retinanet_cwd.py", None),
    ("retinanet", "mgd"): (f"{SHAPES_DIR}/retinanet_mgd.py", None),
    ("retinanet", "fgd"): (f"{SHAPES_DIR}/retinanet_fgd.py", None),
    ("faster_rcnn", "pkd"): (f"{SHAPES_DIR}/faster_rcnn_pkd.py", None),
    ("faster_rcnn", "cwd"): (f"{SHAPES_DIR}/faster_rcnn_cwd.py", None),
    ("faster_rcnn", "mgd"): (f"{SHAPES_DIR}/faster_rcnn_mgd.py", None),
    ("faster_rcnn", "fgd"): (f"{SHAPES_DIR}/faster_rcnn_fgd.py", None),
    # teachers from another family (feature maps at equal strides)
    ("faster_rcnn", "pkd_from_retinanet"): (f"{SHAPES_DIR}/faster_rcnn_pkd_from_retinanet.py", None),
    ("retinanet", "fitnet_from_fcos"): (f"{SHAPES_DIR}/retinanet_fitnet_from_fcos.py", None),
    ("fcos", "fitnet"): (f"{SHAPES_DIR}/fcos_fitnet.py", None),
    ("fcos", "fgfi"): (f"{SHAPES_DIR}/fcos_fgfi.py", None),
    ("mask_rcnn", "fgfi"): (f"{SHAPES_DIR}/mask_rcnn_fgfi.py", None),
    ("ssd", "chen2017"): (f"{SHAPES_DIR}/ssd_chen2017.py", None),
    ("ssd", "fgfi"): (f"{SHAPES_DIR}/ssd_fgfi.py", None),
}

#: (detector, method) -> the unlabeled split its teacher pseudo-labels first (``tools/pseudo_label.py``
#: into the config's ``dataloader.train.unlabeled_dataset.pseudo_label_files``).
PSEUDO_LABEL_SOURCES: Dict[Tuple[str, str], str] = {
    ("retinanet", "adl_semi"): "shapes_unlabeled",
}

@dataclass(frozen=True)
class Continuation:
    """A detector's near-converged protocol (docs/learning_curves.md, "Near a plateau in minutes";
    GKD's protocol, docs/methods.md §4.3): its teacher trained once for ``teacher_iters``, its
    plain student trained once for ``start_iters`` (the *start*), and every student run of the
    comparison (baseline, distilled, equal wall-clock) continuing from the start for ``iters``
    iterations with the config's schedule restarted. On the shapes set a student trained from
    scratch for a few thousand iterations is far from its plateau (doubling its schedule adds
    7-10 AP), so a from-scratch comparison mostly measures how fast each run climbs."""
    teacher_iters: int
    start_iters: int
    iters: int = 1000

    def teacher_dir(self, teacher_dir: str) -> str:
        """``output/shapes/retinanet_teacher`` -> ``output/shapes/retinanet_teacher_12000``."""
        return f"{teacher_dir}_{self.teacher_iters}"

    def start_name(self, student_config: str) -> str:
        """``configs/shapes/retinanet_student.py`` -> ``retinanet_student_12000``."""
        return f"{os.path.splitext(os.path.basename(student_config))[0]}_{self.start_iters}"


#: detector -> its near-converged protocol (``--quick``, ``--full``): the lengths of
#: docs/learning_curves.md's long runs (RetinaNet teacher 43.7 AP at 12000 iterations, student
#: 24.5 at 12000; Faster R-CNN teacher 65.7 at 8000, student 61.6 at 12000; FCOS teacher at its
#: config's 6000, student at 12000). Detectors without one (SSD, Mask R-CNN) are trained from
#: scratch for their configs' ``train.max_iter``.
CONTINUATIONS: Dict[str, Continuation] = {
    "retinanet": Continuation(teacher_iters=12000, start_iters=12000),
    "faster_rcnn": Continuation(teacher_iters=8000, start_iters=12000),
    "fcos": Continuation(teacher_iters=6000, start_iters=12000),
}

#: What ``--quick`` runs: RetinaNet + FGFI (2 seeds: baseline, FGFI, equal-wall-clock baseline),
#: continued from the student start that d2kd ships with the teacher (d2kd/model_zoo/), so nothing
#: long is trained: the converged protocol's comparison with 2 seeds instead of 4 and one
#: evaluation per run. FGFI: its teacher work is backbone-only (overhead 1.05).
QUICK_DETECTORS = ("retinanet",)
QUICK_METHODS = ("fgfi",)

#: Config name suffixes that are not distillation experiments.
_NOT_METHODS = re.compile(r"^(teacher|student)(_.*)?$")


@dataclass
class Experiment:
    detector: str
    method: str
    config: str
    baseline: str
    discovered: bool = False  # found by discover(), not in the EXPERIMENTS table
    notes: List[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.detector}/{self.method}"


def _split_name(path: str) -> Optional[Tuple[str, str]]:
    stem = os.path.splitext(os.path.basename(path))[0]
    for det in sorted(DETECTORS, key=len, reverse=True):
        if stem.startswith(det + "_"):
            return det, stem[len(det) + 1:]
    return None


def discover(root: str = REPO, shapes_dir: str = SHAPES_DIR) -> Dict[Tuple[str, str], Tuple[str, Optional[str]]]:
    """The EXPERIMENTS table plus every ``<detector>_<method>.py`` found in ``shapes_dir``."""
    table = dict(EXPERIMENTS)
    for path in sorted(glob.glob(os.path.join(root, shapes_dir, "*.py"))):
        split = _split_name(path)
        if split is None or _NOT_METHODS.match(split[1]) or split in table:
            continue
        table[split] = (os.path.join(shapes_dir, os.path.basename(path)), None)
    return table


def select(
    detectors: Optional[Sequence[str]] = None,
    methods: Optional[Sequence[str]] = None,
    *,
    root: str = REPO,
    shapes_dir: str = SHAPES_DIR,
    table: Optional[Dict] = None,
    log=print,
) -> List[Experiment]:
    """The experiments to run, in table order; missing configs (under ``root``) are skipped
    with a note; ``shapes_dir`` (relative to ``root``) is where :func:`discover` looks for more."""
    table = discover(root, shapes_dir) if table is None else table
    known_methods = sorted({m for _, m in table})
    for m in methods or ():
        if m not in known_methods:
            log(f"[benchmark] note: method '{m}' has no config in the table or in {shapes_dir} "
                f"(known: {', '.join(known_methods)})")
    out = []
    for (det, method), (config, baseline) in table.items():
        if detectors and det not in detectors:
            continue
        if methods and method not in methods:
            continue
        baseline = baseline or DETECTORS.get(det)
        if not os.path.isfile(os.path.join(root, config)):
            log(f"[benchmark] note: skipping {det}/{method}: {config} does not exist yet")
            continue
        if not baseline or not os.path.isfile(os.path.join(root, baseline)):
            log(f"[benchmark] note: skipping {det}/{method}: its baseline config {baseline} does not exist")
            continue
        out.append(Experiment(det, method, config, baseline, discovered=(det, method) not in EXPERIMENTS))
    return out
