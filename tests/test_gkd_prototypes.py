"""GKD's Prototype Generation Module: density filter, joint matching pursuit, instance selection,
the generator the model runs itself (empty classes, resume without recomputation, under a plain
Detectron2 trainer, from a yacs config)."""
import math
import os

import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from d2kd.distill.gkd_prototypes import (  # noqa: E402
    PGMData,
    PrototypeGenerator,
    density,
    density_candidates,
    generate_prototypes,
    joint_matching_pursuit,
    pool_box_inclusive,
    select_pgm_instances,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _unit(d, i):
    v = torch.zeros(d)
    v[i] = 1.0
    return v


# ---- density ----------------------------------------------------------------------------------
def test_density_matches_direct_formula():
    torch.manual_seed(0)
    x = F.normalize(torch.randn(7, 5), dim=1)
    rho = density(x, 0.1)
    for i in range(7):
        direct = sum(math.exp(-(((1 - float(x[i] @ x[j])) / 0.1) ** 2)) for j in range(7))
        assert rho[i].item() == pytest.approx(direct, rel=1e-5)


def test_density_candidates_hand_built_both_spaces_and_strict_threshold():
    d = 8
    # student: cluster A (0..4) on e0 -> rho 5; cluster B (5..7) on e1 -> rho 3; 8, 9 alone -> 1
    xs = torch.stack([_unit(d, 0)] * 5 + [_unit(d, 1)] * 3 + [_unit(d, 2), _unit(d, 3)])
    # teacher: same, except instance 4 leaves cluster A (rho 1); A keeps 0..3 (rho 4)
    xt = torch.stack([_unit(d, 0)] * 4 + [_unit(d, 4)] + [_unit(d, 1)] * 3 + [_unit(d, 2), _unit(d, 3)])
    # N = 10, index floor(0.4*10) = 4 of the ascending densities:
    #   student [1,1,3,3,3,5,5,5,5,5] -> 3 (B sits exactly at the bound: excluded, strict '>')
    #   teacher [1,1,1,3,3,3,4,4,4,4] -> 3
    cand = density_candidates(xs, xt, sigma=0.1, quantile=0.4)
    assert cand.tolist() == [0, 1, 2, 3]
    # only the student space: A = 0..4
    assert density_candidates(xs, xs).tolist() == [0, 1, 2, 3, 4]
    # quantile 0 -> bound = the smallest density: everything denser than singletons
    assert density_candidates(xs, xs, quantile=0.0).tolist() == list(range(8))


def test_density_candidates_all_equal_is_empty():
    x = torch.eye(4)
    assert density_candidates(x, x).numel() == 0
    assert density_candidates(x[:0], x[:0]).numel() == 0


# ---- matching pursuit -------------------------------------------------------------------------
def _reference_mp(xs, xt, cand, K, alpha):
    """The reference's loop, literally (materialised (K, D, N) errors)."""
    pa, pb = xs.t()[:, cand], xt.t()[:, cand]
    ra, rb = xs.t().clone(), xt.t().clone()
    Kc, N, Da, Db = pa.shape[1], xs.shape[0], xs.shape[1], xt.shape[1]
    picked = []
    for _ in range(K):
        ia, ib = pa.t() @ ra, pb.t() @ rb
        wa = (alpha * (ia + ib) + ia) / (1 + 2 * alpha)
        wb = (alpha * (ia + ib) + ib) / (1 + 2 * alpha)
        ea = pa.t().view(Kc, Da, 1) * wa.view(Kc, 1, N) - ra.view(1, Da, N)
        eb = pb.t().view(Kc, Db, 1) * wb.view(Kc, 1, N) - rb.view(1, Db, N)
        err = (ea**2).sum(-1).sum(-1) + (eb**2).sum(-1).sum(-1) + alpha * ((wa - wb) ** 2).sum(-1)
        g = int(torch.argmin(err))
        picked.append(int(cand[g]))
        ra = ra - pa[:, g : g + 1] @ wa[g : g + 1]
        rb = rb - pb[:, g : g + 1] @ wb[g : g + 1]
    return picked


def test_matching_pursuit_picks_known_atoms():
    d = 6
    # 5 instances on e0, 3 on e1, one on e2: e0 explains most, then e1; then only e2's residual
    # is left, orthogonal to every candidate -> all errors tie -> the first candidate.
    xs = torch.stack([_unit(d, 0)] * 5 + [_unit(d, 1)] * 3 + [_unit(d, 2)])
    cand = torch.tensor([5, 6, 0, 1])  # an e1 candidate listed first, e0 ones after
    picked = joint_matching_pursuit(xs, xs.clone(), cand, num_iters=3, alpha=10.0)
    assert picked.tolist() == [0, 5, 5]


def test_matching_pursuit_single_candidate_is_repeated_and_empty_gives_nothing():
    x = F.normalize(torch.randn(5, 4), dim=1)
    assert joint_matching_pursuit(x, x, torch.tensor([3]), num_iters=4).tolist() == [3, 3, 3, 3]
    assert joint_matching_pursuit(x, x, torch.zeros(0, dtype=torch.long), num_iters=4).numel() == 0


def test_matching_pursuit_joint_term_prefers_atoms_good_in_both_spaces():
    d = 4
    # Instance 0 is a perfect atom in the student space only; instance 1 is a good atom in both.
    # Data: 3 copies of the common direction in both spaces; instance 0's student direction
    # coincides with those in S but is orthogonal in T.
    e0, e1, e2 = _unit(d, 0), _unit(d, 1), _unit(d, 2)
    xs = torch.stack([e0, e0, e0, e0, e0])
    a = F.normalize(e1 + 0.6 * e2, dim=0)
    xt = torch.stack([e2, a, a, a, a])
    cand = torch.tensor([0, 1])
    picked, errors = joint_matching_pursuit(xs, xt, cand, num_iters=1, alpha=10.0, return_errors=True)
    assert picked.tolist() == [1]
    assert errors[0, 1] < errors[0, 0]


def test_matching_pursuit_equals_reference_loop_on_random_data():
    g = torch.Generator().manual_seed(3)
    xs = F.normalize(torch.randn(40, 16, generator=g), dim=1)
    xt = F.normalize(xs[:, :12] + 0.3 * torch.randn(40, 12, generator=g), dim=1)
    cand = density_candidates(xs, xt, sigma=1.0)
    assert cand.numel() > 3
    ours = joint_matching_pursuit(xs.double(), xt.double(), cand, num_iters=10, alpha=10.0)
    assert ours.tolist() == _reference_mp(xs.double(), xt.double(), cand, 10, 10.0)


def test_generate_prototypes_returns_raw_features_of_picked_instances():
    d = 5
    base = torch.stack([_unit(d, 0)] * 4 + [_unit(d, 1)] * 2 + [_unit(d, 2)])
    scale = torch.arange(1, 8, dtype=torch.float32)[:, None]  # norms 1..7: raw != normalised
    fs, ft = base * scale, base * scale * 2
    ps, pt, idx = generate_prototypes(fs, ft, num_prototypes=3)
    assert idx.tolist()[0] in [0, 1, 2, 3]
    assert torch.equal(ps, fs[idx]) and torch.equal(pt, ft[idx])
    assert generate_prototypes(fs[:1], ft[:1]) is None  # one instance: no candidate
    assert generate_prototypes(fs[:0], ft[:0]) is None


# ---- pooling and selection ---------------------------------------------------------------------
def test_pool_box_inclusive_crop():
    f = torch.arange(2 * 6 * 8, dtype=torch.float32).view(2, 6, 8)
    # ratio 1/4: box (5, 9, 13, 17.9) -> x 1..3, y 2..4 inclusive
    out = pool_box_inclusive(f, torch.tensor([[5.0, 9.0, 13.0, 17.9]]), 0.25, 0.25)
    assert torch.allclose(out[0], f[:, 2:5, 1:4].mean(dim=(1, 2)))
    # degenerate: a single cell
    out = pool_box_inclusive(f, torch.tensor([[4.0, 4.0, 4.0, 4.0]]), 0.25, 0.25)
    assert torch.allclose(out[0], f[:, 1, 1])


def _dicts():
    from detectron2.structures import BoxMode

    def ann(box, c, crowd=0):
        return {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": crowd}

    return [
        {"annotations": [ann([0, 0, 40, 40], 0), ann([0, 0, 31, 50], 1), ann([0, 0, 30.5, 31], 1)]},
        {"annotations": [ann([0, 0, 30, 60], 0), ann([10, 10, 60, 60], 1, crowd=1)]},  # w = 30: out
        {"annotations": [ann([5, 5, 45, 45], 0), ann([5, 5, 50, 45], 0)]},
        {"annotations": [ann([5, 5, 45, 45], 0)]},
        {"annotations": []},
    ]


def test_select_pgm_instances_size_filter_crowd_and_cap():
    sel = select_pgm_instances(_dicts(), 3, min_box_size=30, max_images_per_class=800, seed=1)
    assert [s[0] for s in sel] == [0, 2, 3]
    assert sel[0][2].tolist() == [0, 1, 1]  # 30.5 x 31 > 30 both ways
    assert sel[1][2].tolist() == [0, 0]
    # cap: class 0 is in images 0, 2, 3 -> 2 of them chosen (deterministic); class 1 only in 0
    a = select_pgm_instances(_dicts(), 3, min_box_size=30, max_images_per_class=2, seed=1)
    b = select_pgm_instances(_dicts(), 3, min_box_size=30, max_images_per_class=2, seed=1)
    assert [s[0] for s in a] == [s[0] for s in b]
    n0 = sum(int((s[2] == 0).any()) for s in a)
    assert n0 == 2
    assert any(s[0] == 0 and 1 in s[2].tolist() for s in a)
    # an image chosen only for class 1 does not contribute its class-0 boxes
    for index, _, classes in a:
        if index == 0 and 0 not in classes.tolist():
            assert classes.tolist() == [1, 1]


# ---- the generator on a real (tiny) distillation model ---------------------------------------------
TINY = [
    "dataloader.train.dataset.names=shapes_tiny_train",
    "dataloader.test.dataset.names=shapes_tiny_val",
    "dataloader.train.total_batch_size=2",
    "train.log_period=1",
    "train.eval_period=0",
    "train.device=cpu",
    "train.eval_teacher=False",
]


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory):
    from detectron2.config import LazyConfig, instantiate

    tmp = tmp_path_factory.mktemp("gkd_pgm")
    torch.manual_seed(0)
    teacher = instantiate(LazyConfig.load(os.path.join(REPO, "configs/shapes/faster_rcnn_teacher.py")).model)
    weights = str(tmp / "teacher.pth")
    torch.save({"model": teacher.state_dict()}, weights)
    cfg = LazyConfig.load(os.path.join(REPO, "configs/shapes/faster_rcnn_gkd.py"))
    cfg = LazyConfig.apply_overrides(cfg, TINY + [f"model.teacher.weights={weights}", f"train.output_dir={tmp}/out"])
    cfg.model.teacher.config_file = os.path.join(REPO, "configs/shapes/faster_rcnn_teacher.py")
    return cfg, tmp


def _model(cfg):
    from detectron2.config import instantiate

    torch.manual_seed(1)
    return instantiate(cfg.model)


@pytest.fixture
def pgm_runs(monkeypatch):
    """The period index of every PGM run, in order."""
    runs = []
    update = PrototypeGenerator.update

    def counting(self, period_index, iteration, model):
        runs.append(period_index)
        return update(self, period_index, iteration, model)

    monkeypatch.setattr(PrototypeGenerator, "update", counting)
    return runs


def test_generator_fills_buffers_and_empty_class_keeps_previous(shapes_cfg, pgm_runs):
    cfg, _ = shapes_cfg
    model = _model(cfg)
    d = model.distillers[0]
    d.pgm_period = 10
    gen = PrototypeGenerator(d, PGMData.from_dataloader_config(cfg.dataloader))
    gen.maybe_update(0, model)
    assert pgm_runs == [0] and int(d.proto_period) == 0
    gen.maybe_update(9, model)
    assert pgm_runs == [0]  # same period: nothing recomputed
    present = sorted({int(c) for _, _, cls in gen._selection for c in cls})
    assert d.proto_valid[:, present].all()
    # prototypes are raw features of instances: each teacher prototype row is one of the
    # cached teacher instance features of its class at that level
    c = present[0]
    feats_t = torch.cat([gen._teacher_cache[i][torch.as_tensor(cls) == c] for i, _, cls in gen._selection])
    for level in range(len(d.in_features)):
        for row in d.proto_teacher[level, c]:
            assert (feats_t[:, level] - row).abs().amax(dim=1).min() < 1e-6

    # class `c` disappears from the data: its prototypes stay; the others are recomputed
    before_s, before_t = d.proto_student.clone(), d.proto_teacher.clone()
    sentinel = torch.full_like(d.proto_student[:, c], 7.0)
    d.proto_student[:, c] = sentinel
    full = gen._selection
    gen._selection = [(i, b[cls != c], cls[cls != c]) for i, b, cls in full if (cls != c).any()]
    t_cache = {i: gen._teacher_cache[i][torch.as_tensor(cls != c)] for i, _, cls in full if (cls != c).any()}
    feats_s, _ = gen.extract(model, with_teacher=False)
    gen.solve(feats_s, t_cache)
    assert torch.equal(d.proto_student[:, c], sentinel)
    assert torch.equal(d.proto_teacher[:, c], before_t[:, c])
    assert d.proto_valid[:, c].all()
    others = [k for k in present if k != c]
    # the other classes were recomputed from the same student and data: same prototypes
    assert torch.equal(d.proto_student[:, others], before_s[:, others])
    # solving with a selection that has no instance at all changes nothing
    snapshot = d.state_dict()
    gen._selection = []
    gen.solve({}, {})
    for k, v in d.state_dict().items():
        assert torch.equal(v, snapshot[k]), k


def test_checkpoint_round_trip_and_resume_does_not_recompute(shapes_cfg, pgm_runs):
    from d2kd.engine import Trainer

    from detectron2.config import LazyConfig

    cfg, tmp = shapes_cfg

    out = str(tmp / "resume")
    cfg = LazyConfig.apply_overrides(
        cfg, [f"train.output_dir={out}", "train.max_iter=2", "train.checkpointer.period=1",
              "model.distillers.0.pgm_period=10"]
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert pgm_runs == [0]
    d = trainer.model.distillers[0]
    saved = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    for name in ("proto_student", "proto_teacher", "proto_valid", "proto_period"):
        assert torch.equal(saved[f"distillers.0.{name}"], getattr(d, name)), name
    assert int(saved["distillers.0.proto_period"]) == 0 and saved["distillers.0.proto_valid"].any()

    # state_dict round trip into a fresh model
    fresh = _model(cfg)
    assert not fresh.distillers[0].proto_valid.any() and int(fresh.distillers[0].proto_period) == -1
    fresh.load_state_dict(trainer.model.state_dict())
    assert torch.equal(fresh.distillers[0].proto_teacher, d.proto_teacher)

    # resume at iteration 2 of period 0 (period = 10): the prototypes come from the checkpoint
    cfg2 = LazyConfig.apply_overrides(cfg, ["train.max_iter=3"])
    resumed = Trainer(cfg2)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    assert pgm_runs == [0]  # not recomputed
    assert torch.equal(resumed.model.distillers[0].proto_student, d.proto_student)

    # a resume that starts a new period recomputes once
    cfg3 = LazyConfig.apply_overrides(cfg, ["train.max_iter=4", "model.distillers.0.pgm_period=3"])
    again = Trainer(cfg3)
    again.resume_or_load(resume=True)
    assert again.start_iter == 3
    again.train()
    assert pgm_runs == [0, 1]
    assert int(again.model.distillers[0].proto_period) == 1


def test_prototypes_built_under_a_plain_detectron2_trainer(shapes_cfg, pgm_runs):
    """No d2kd Trainer: Detectron2's own SimpleTrainer loop (what tools/lazyconfig_train_net.py
    and a yacs DefaultTrainer run) only calls model(batch). The model runs the PGM itself, at
    the first step and at each period's start, and takes the run's length from its config."""
    from detectron2.config import LazyConfig, instantiate
    from detectron2.engine import SimpleTrainer

    cfg, _ = shapes_cfg
    cfg = LazyConfig.apply_overrides(cfg, ["model.distillers.0.pgm_period=2", "train.max_iter=3"])
    model = _model(cfg).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    cfg.optimizer.params.model = None
    trainer = SimpleTrainer(model, instantiate(cfg.dataloader.train), optimizer)
    trainer.train(0, 3)
    d = model.distillers[0]
    assert pgm_runs == [0, 1]  # iterations 0 and 2
    assert int(d.proto_period) == 1 and d.proto_valid.any()
    assert d.max_iter == 3 and d.attenuation_factor(2) == pytest.approx(1 / 3)


def test_yacs_route_gives_gkd_its_training_set_and_length():
    """MODEL.DISTILL.METHODS.GKD: the training set, test-time resize, batch size and length come
    from the yacs config itself (DATASETS.TRAIN, INPUT.*_TEST, SOLVER)."""
    from detectron2.config import CfgNode as CN
    from detectron2.config import get_cfg
    from detectron2.data import transforms as T

    from d2kd.config import add_d2kd_config
    from d2kd.distill.build import build_distillers_from_cfg

    cfg = get_cfg()
    add_d2kd_config(cfg)
    cfg.DATASETS.TRAIN = ("shapes_tiny_train",)
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH = 7, 2
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 1333
    cfg.MODEL.DISTILL.METHODS.GKD = CN({"CANONICAL_SIZE": 14, "PGM_PERIOD": 5})
    [d] = build_distillers_from_cfg(cfg)
    assert d.max_iter == 7 and d.pgm_period == 5 and d.canonical_size == 14
    assert d.pgm_data.total_batch_size == 2 and d.pgm_data.image_format == "BGR"
    assert len(d.pgm_data.dicts()) == 32
    [resize] = d.pgm_data.augmentation_list()
    assert isinstance(resize, T.ResizeShortestEdge) and resize.short_edge_length == (128, 128)
    # the method's own keys win over the config's
    cfg.MODEL.DISTILL.METHODS.GKD = CN({"MAX_ITER": 3})
    assert build_distillers_from_cfg(cfg)[0].max_iter == 3


def test_prototypes_built_by_detectron2s_own_lazyconfig_train_net(shapes_cfg, tmp_path):
    """Detectron2's stock tools/lazyconfig_train_net.py on configs/shapes/faster_rcnn_gkd.py (no
    d2kd trainer, no d2kd hook): the checkpoint it writes holds the prototypes."""
    import subprocess
    import sys

    import detectron2

    script = os.path.join(os.path.dirname(os.path.dirname(detectron2.__file__)), "tools", "lazyconfig_train_net.py")
    if not os.path.isfile(script):
        pytest.skip("the stock tools/lazyconfig_train_net.py is not installed next to the package")
    cfg, tmp = shapes_cfg
    out = tmp_path / "stock"
    proc = subprocess.run(
        [sys.executable, script, "--config-file", os.path.join(REPO, "configs/shapes/faster_rcnn_gkd.py"),
         *TINY, "train.max_iter=2",
         f"model.teacher.weights={cfg.model.teacher.weights}", f"train.output_dir={out}",
         f"dataloader.evaluator.output_dir={out}/inference", "model.distillers.0.pgm_max_images_per_class=4"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(str(out / "model_final.pth"), map_location="cpu", weights_only=False)["model"]
    assert int(state["distillers.0.proto_period"]) == 0 and state["distillers.0.proto_valid"].any()


def test_prototypes_built_under_a_yacs_default_trainer(shapes_cfg, tmp_path, pgm_runs):
    """The yacs route: Detectron2's DefaultTrainer on MODEL.META_ARCHITECTURE DistillationRCNN
    with MODEL.DISTILL.METHODS.GKD (a small R18-FPN student, the shapes teacher)."""
    from detectron2 import model_zoo
    from detectron2.config import CfgNode as CN
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer

    from d2kd.config import add_d2kd_config

    lazy, _ = shapes_cfg
    cfg = get_cfg()
    add_d2kd_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "DistillationRCNN", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.ROI_HEADS.NUM_CLASSES", 8,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "DATASETS.TRAIN", ("shapes_tiny_train",), "DATASETS.TEST", (),
        "INPUT.MIN_SIZE_TRAIN", (128,), "INPUT.MIN_SIZE_TEST", 128, "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.MAX_ITER", 2, "SOLVER.IMS_PER_BATCH", 2, "SOLVER.BASE_LR", 0.001, "OUTPUT_DIR", str(tmp_path),
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", lazy.model.teacher.config_file,
        "MODEL.DISTILL.TEACHER.WEIGHTS", lazy.model.teacher.weights,
    ])
    cfg.MODEL.DISTILL.METHODS.GKD = CN({"CANONICAL_SIZE": 14, "PGM_MIN_BOX_SIZE": 8, "PGM_MAX_IMAGES_PER_CLASS": 4})
    torch.manual_seed(0)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    d = trainer.model.distillers[0]
    assert pgm_runs == [0] and int(d.proto_period) == 0 and d.proto_valid.any()
    assert d.max_iter == 2 and d.period == 16  # SOLVER.MAX_ITER; 32 images / SOLVER.IMS_PER_BATCH 2
