"""The SSD / Chen et al. 2017 experiment configs: spec values, two training iterations each on the
CPU (shapes: the tiny split; VOC: a fake VOC tree written here, at a small square input), and the
train_net.py entry point on the shapes distillation config."""
import os
import time

import pytest
from conftest import D2_MISSING, TINY, read_metrics, run_cli, save_random_weights

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import detectron2.data.transforms as T  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.pascal_voc import register_pascal_voc  # noqa: E402

import d2kd  # noqa: F401,E402
from d2kd.distill import Chen2017  # noqa: E402
from d2kd.modeling.meta_arch import DistillationRCNN, DistillationSSD  # noqa: E402
from d2kd.modeling.meta_arch.ssd import PRIOR_PRESETS  # noqa: E402
from feature_kd_helpers import train_two_steps  # noqa: E402

torch.set_num_threads(1)

SHAPES = ["ssd_teacher", "ssd_student", "ssd_chen2017", "ssd_chen2017_paper", "faster_rcnn_chen2017"]
VOC = ["ssd_vgg16_aligned", "ssd_mbv2_lite", "ssd_mbv2_lite_vgg16_chen2017", "ssd_mbv2_lite_vgg16_chen2017_paper",
       "faster_rcnn_R101_R50_chen2017"]
TRAIN, TEST = "d2kd_test_ssd_fakevoc_2007_trainval", "d2kd_test_ssd_fakevoc_2007_test"
FAKE = [  # (image id, width, height, [(class, x1, y1, x2, y2)] in VOC's 1-based pixels)
    ("000001", 128, 96, [("dog", 10, 12, 60, 70), ("car", 70, 20, 120, 60)]),
    ("000002", 112, 96, [("person", 30, 5, 80, 90)]),
    ("000003", 128, 112, [("dog", 5, 50, 50, 100), ("person", 60, 10, 110, 100)]),
]
SMALL = 96  # square input of the VOC SSD runs in these tests (300 in the configs)


def _two_iterations(cfg):
    torch.manual_seed(0)
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    losses = train_two_steps(cfg, model, optimizer=instantiate(cfg.optimizer))
    if "teacher" in cfg.model:
        kd = [k for k in losses if k.startswith("loss_kd_chen2017_")]
        assert kd and all(losses[k].item() > 0 for k in kd if "hint" in k or "soft" in k), losses
    return model, losses


# ---- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHAPES)
def test_shapes_config_runs_two_iterations(name, tmp_path):
    t0 = time.time()
    cfg = LazyConfig.load(f"configs/shapes/{name}.py")
    cfg = LazyConfig.apply_overrides(cfg, [o for o in TINY if not o.startswith("train.")])
    if "teacher" in cfg.model:
        save_random_weights(cfg.model.teacher.config_file, str(tmp_path / "t.pth"))
        cfg.model.teacher.weights = str(tmp_path / "t.pth")
    model, losses = _two_iterations(cfg)
    if name.startswith("ssd_chen2017"):
        assert isinstance(model, DistillationSSD)
        assert set(losses) == {"loss_cls", "loss_box_reg", "loss_kd_chen2017_soft", "loss_kd_chen2017_bounded",
                               "loss_kd_chen2017_hint"}
        assert model.distillers[0].variant == ("paper" if name.endswith("paper") else "ssd_repo")
        assert len(model.distillers[0].adapters) == (1 if name.endswith("paper") else 0)
    if name == "faster_rcnn_chen2017":
        assert isinstance(model, DistillationRCNN)
        assert {"loss_kd_chen2017_rpn_soft", "loss_kd_chen2017_roi_bounded"} <= set(losses)
        assert sorted(model.distillers[0].adapters) == ["p2", "p3", "p4", "p5", "p6"]
    assert time.time() - t0 < 60


def test_shapes_pair_shares_the_prior_layout_and_sizes():
    t = LazyConfig.load("configs/shapes/ssd_teacher.py")
    s = LazyConfig.load("configs/shapes/ssd_student.py")
    assert t.model.prior_generator == s.model.prior_generator
    assert t.model.backbone.layout == "aligned" and t.model.backbone.width_mult == 0.25
    assert s.model.backbone.width_mult == 0.5
    assert t.dataloader.train.mapper.augmentations[-1].shape == (128, 128)
    assert s.dataloader.test.mapper.augmentations[-1].shape == (128, 128)


def test_train_net_runs_the_shapes_distillation(tmp_path, train_net, capfd):
    save_random_weights("configs/shapes/ssd_teacher.py", str(tmp_path / "t.pth"))
    out = str(tmp_path / "run")
    code, _, log = run_cli(train_net, capfd, ["--config-file", "configs/shapes/ssd_chen2017.py", *TINY, "train.max_iter=2",
                                              "train.eval_teacher=False", f"model.teacher.weights={tmp_path / 't.pth'}",
                                              f"train.output_dir={out}"])
    assert code == 0, log[-3000:]
    rows = [r for r in read_metrics(out) if "loss_kd_chen2017_soft" in r]
    assert rows and all(np.isfinite(r["total_loss"]) for r in rows)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


# ---- VOC ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_voc(tmp_path_factory):
    voc = os.path.join(str(tmp_path_factory.mktemp("ssdfakevoc")), "VOC2007")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    rng = np.random.RandomState(0)
    for image_id, w, h, objects in FAKE:
        Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8)).save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"))
        objs = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in objects)
        with open(os.path.join(voc, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><size><width>{w}</width><height>{h}</height></size>{objs}</annotation>")
    for split, members in (("trainval", [x[0] for x in FAKE]), ("test", [FAKE[0][0]])):
        with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("\n".join(members) + "\n")
    for name, split in ((TRAIN, "trainval"), (TEST, "test")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_pascal_voc(name, voc, split, 2007)
    yield voc
    for name in (TRAIN, TEST):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _shrink_voc(cfg):
    dl = cfg.dataloader
    dl.train.dataset.names, dl.test.dataset.names = TRAIN, TEST
    dl.train.total_batch_size = 2
    dl.train.num_workers = dl.test.num_workers = 0
    is_ssd = "prior_generator" in cfg.model
    if is_ssd:
        # the configs' ssd.pytorch pipeline, ending at SMALL px; prior centres from the feature maps
        dl.train.mapper.augmentations[-1].shape = (SMALL, SMALL)
        dl.test.mapper.augmentations[-1].shape = (SMALL, SMALL)
        cfg.model.prior_generator.steps = None
        if "teacher" in cfg.model:
            cfg.model.teacher.opts = ["model.prior_generator.steps=null"]
    else:  # Faster R-CNN: small images, unit-scale inputs for random ResNets (as tests/test_voc_configs.py)
        dl.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=128),
                                         L(T.RandomFlip)(horizontal=True)]
        unit = [57.375, 57.12, 58.395]
        cfg.model.pixel_std = unit
        if "teacher" in cfg.model:
            cfg.model.teacher.opts = [f"model.pixel_std={unit}"]
        cfg.optimizer.lr = 1e-4
    cfg.train.init_checkpoint = ""
    return cfg


@pytest.mark.parametrize("name", VOC)
def test_voc_config_runs_two_iterations(name, fake_voc, tmp_path):
    t0 = time.time()
    cfg = _shrink_voc(LazyConfig.load(f"configs/voc/{name}.py"))
    if "teacher" in cfg.model:
        overrides = list(cfg.model.teacher.opts)
        save_random_weights(cfg.model.teacher.config_file, str(tmp_path / "t.pth"), overrides)
        cfg.model.teacher.weights = str(tmp_path / "t.pth")
    _two_iterations(cfg)
    assert time.time() - t0 < 60


def test_voc_ssd_spec_values():
    for name in VOC[:4]:
        c = LazyConfig.load(f"configs/voc/{name}.py")
        assert c.dataloader.train.total_batch_size == 128 and c.train.max_iter == 70 * 130
        assert c.dataloader.train.mapper.augmentations[-1].shape == (300, 300)
        assert c.dataloader.train.mapper.image_format == "RGB"
        assert list(c.model.pixel_mean) == [127.0] * 3 and list(c.model.pixel_std) == [128.0] * 3
        pg = c.model.prior_generator
        assert pg.min_sizes == PRIOR_PRESETS["aligned"]["min_sizes"] and pg.steps == PRIOR_PRESETS["aligned"]["steps"]
        assert c.optimizer.lr == 1.25e-4
        if name == "ssd_vgg16_aligned":
            assert c.optimizer._target_ is torch.optim.SGD and c.optimizer.weight_decay == 5e-4
        else:
            assert c.optimizer._target_ is torch.optim.Adam
    for name, variant in (("ssd_mbv2_lite_vgg16_chen2017", "ssd_repo"), ("ssd_mbv2_lite_vgg16_chen2017_paper", "paper"),
                          ("faster_rcnn_R101_R50_chen2017", "paper")):
        (d,) = LazyConfig.load(f"configs/voc/{name}.py").model.distillers
        assert d._target_ is Chen2017 and d.variant == variant
        assert (d.mu, d.w_bg, d.temperature, d.nu, d.margin, d.lam, d.gamma_hint) == (0.5, 1.5, 1.0, 0.5, 0.0, 1.0, 0.5)
