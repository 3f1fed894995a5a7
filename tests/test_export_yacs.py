"""A run trained from a yacs config (Detectron2's DefaultTrainer on ``DistillationRetinaNet`` with
``MODEL.DISTILL``) exports a student folder that stock Detectron2 reads as it is: a yacs
``config.yaml`` of the stock class, without d2kd's keys (d2kd/export.py, issue #25 item 0)."""
import os
import shutil

import numpy as np
import pytest
import torch
import yaml

from conftest import D2_MISSING, YACS_SMALL, YACS_ZOO_RETINANET, yacs_small_retinanet

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.config import CfgNode as CN  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.modeling import RetinaNet, build_model  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A yacs distillation run's folder: its ``config.yaml`` (as DefaultTrainer's ``default_setup``
    dumps it, MODEL.DISTILL included) and a checkpoint of the distillation model, whose state
    dict carries a distiller adapter (FGFI's, from 256 to 512 channels: a wider teacher)."""
    folder = tmp_path_factory.mktemp("yacs_run")
    teacher_cfg = yacs_small_retinanet()
    teacher_cfg.MODEL.FPN.OUT_CHANNELS = 512
    torch.save({"model": build_model(teacher_cfg).state_dict()}, folder / "teacher.pth")
    cfg = yacs_small_retinanet()
    cfg.MODEL.META_ARCHITECTURE = "DistillationRetinaNet"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = YACS_ZOO_RETINANET
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(folder / "teacher.pth")
    cfg.MODEL.DISTILL.TEACHER.OPTS = [str(x) for x in [*YACS_SMALL, "MODEL.FPN.OUT_CHANNELS", 512]]
    cfg.MODEL.DISTILL.METHODS.FGFI = CN({"IN_FEATURES": ["p3"]})
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    cfg.MODEL.PIXEL_STD = [57.375, 57.12, 58.395]  # random weights: inputs of unit scale keep boxes finite
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # scores above the 0.05 threshold (the focal-loss prior puts them at 0.01)
        model.head.cls_score.bias.fill_(-1.0)
    state = model.state_dict()
    assert any(k.startswith("distillers.") for k in state), "the fixture must carry an adapter to strip"
    torch.save({"model": state, "iteration": 9}, folder / "model_final.pth")
    with open(folder / "config.yaml", "w") as f:
        f.write(cfg.dump())
    return folder, model.eval()


@pytest.fixture(scope="module")
def student(run):
    from d2kd.export import main

    folder, _ = run
    main(["--config-file", str(folder / "config.yaml"), "--weights", str(folder / "model_final.pth"),
          "--output", str(folder / "student")])
    return folder / "student"


def _stock_cfg(path):
    """What stock Detectron2 does with a config file: no d2kd key added."""
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_config_is_stock_yacs_of_the_student_class(student):
    with open(student / "config.yaml") as f:
        written = yaml.safe_load(f)
    assert written["MODEL"]["META_ARCHITECTURE"] == "RetinaNet"
    assert not {"DISTILL", "LAZY_CONFIG", "ALLOW_PICKLE", "DEVICE"} & set(written["MODEL"])
    assert written["MODEL"]["WEIGHTS"] == "model_final.pth"
    with open(student / "predictor.yaml") as f:
        assert yaml.safe_load(f) == written
    cfg = _stock_cfg(student / "config.yaml")  # raises on any key stock Detectron2 does not know
    assert (cfg.MODEL.RESNETS.DEPTH, cfg.INPUT.MIN_SIZE_TEST) == (18, 96)
    notes = open(student / "README.md").read()
    assert "tools/deploy/export_model.py --config-file config.yaml" in notes and "RetinaNet" in notes


def test_stock_retinanet_loads_the_student_strictly_and_predicts_what_the_run_predicts(run, student):
    from d2kd.export import build_predictor

    _, distillation_model = run
    cfg = _stock_cfg(student / "config.yaml")
    stock = build_model(cfg)
    assert type(stock) is RetinaNet
    weights = torch.load(student / "model_final.pth", weights_only=True)["model"]
    stock.load_state_dict(weights, strict=True)  # no missing, no unexpected key
    for name, value in stock.state_dict().items():
        assert torch.equal(value, distillation_model.state_dict()[name]), name

    cfg.MODEL.WEIGHTS = str(student / "model_final.pth")  # stock loading resolves against the cwd
    image = (np.random.RandomState(0).rand(90, 150, 3) * 255).astype("uint8")
    with torch.no_grad():
        stock_out = DefaultPredictor(cfg)(image)["instances"]
        ours = build_predictor(str(student / "predictor.yaml"), device="cpu")(image)["instances"]
        # the distillation model's own inference on the same resized input
        resized = DefaultPredictor(cfg).aug.get_transform(image).apply_image(image)
        run_out = distillation_model([{"image": torch.from_numpy(resized.copy()).permute(2, 0, 1).float(),
                                       "height": 90, "width": 150}])[0]["instances"]
    assert len(stock_out) > 0
    for other in (ours, run_out):
        assert torch.equal(other.pred_classes, stock_out.pred_classes)
        torch.testing.assert_close(other.pred_boxes.tensor, stock_out.pred_boxes.tensor)
        torch.testing.assert_close(other.scores, stock_out.scores)


def test_the_folder_moves_and_d2kd_deploy_names_the_stock_route(student, tmp_path):
    from d2kd.deploy import DeployError, export_deployable
    from d2kd.export import load_predictor_config

    moved = tmp_path / "moved"
    shutil.copytree(student, moved)
    cfg = load_predictor_config(str(moved / "predictor.yaml"), device="cpu")
    assert cfg.MODEL.WEIGHTS == os.path.join(str(moved), "model_final.pth")
    with pytest.raises(DeployError, match=r"config.yaml is a stock Detectron2 yacs config: export it with "
                                          r"Detectron2's tools/deploy/export_model.py"):
        export_deployable(str(moved), ["torchscript"])
