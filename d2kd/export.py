"""Export the student of a (distillation) run as a plain Detectron2 model.

Writes into ``output_dir``:

- ``model_final.pth``: ``{"model": student state_dict}`` without the distillers' adapters (the
  teacher is never in the state dict). Stock ``GeneralizedRCNN``/``RetinaNet`` built from
  ``config.yaml`` loads it with no missing or unexpected keys.
- ``config.yaml``: LazyConfig with the student ``model`` (its stock class) and the test
  ``dataloader``.
- ``predictor.yaml``: a yacs config for ``DefaultPredictor`` (see :func:`load_predictor_config`).

Usage: ``python -m d2kd.export --config-file RUN/config.yaml --weights RUN/model_final.pth
--output RUN/export``.
"""
import argparse
import copy
import os
from typing import Dict

import torch
from omegaconf import OmegaConf

from detectron2.config import LazyConfig, get_cfg
from detectron2.config.lazy import _convert_target_to_string
from detectron2.utils.registry import locate

#: Prefix of the distillers' parameters inside a distillation model's state dict.
DISTILLER_PREFIX = "distillers."


def student_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith(DISTILLER_PREFIX)}


def student_model_config(model_cfg):
    """The LazyConfig ``model`` node of the student: the stock class, no teacher, no distillers."""
    cfg = copy.deepcopy(model_cfg)
    target = locate(cfg._target_) if isinstance(cfg._target_, str) else cfg._target_
    student_class = getattr(target, "student_class", None)
    if student_class is not None:
        cfg._target_ = _convert_target_to_string(student_class)
        for key in ("teacher", "distillers"):
            if key in cfg:
                del cfg[key]
    return cfg


def _test_resize(cfg):
    """(min_size, max_size) for DefaultPredictor's ResizeShortestEdge from the test mapper.

    A fixed square ``Resize((s, s))`` (the SSD configs) becomes (s, s): exact for square images;
    for other aspect ratios set ``predictor.aug = T.Resize((s, s))`` after building the predictor.
    (0, 0) = no resize.
    """
    try:
        augs = cfg.dataloader.test.mapper.augmentations
    except Exception:
        return 0, 0
    for aug in augs or []:
        target = aug.get("_target_", "")
        target = (target if isinstance(target, str) else getattr(target, "__qualname__", "")).split(".")[-1]
        if target == "ResizeShortestEdge":
            size = aug.short_edge_length
            size = size[0] if isinstance(size, (list, tuple)) else size
            return int(size), int(aug.get("max_size", 1333))
        if target == "Resize" and "shape" in aug:
            shape = aug.shape
            h, w = (shape, shape) if isinstance(shape, int) else tuple(shape)
            return int(min(h, w)), int(max(h, w))
    return 0, 0


def write_predictor_config(cfg, model_config_file: str, weights: str, path: str) -> None:
    """A yacs config with which ``DefaultPredictor`` serves the LazyConfig model."""
    from .config import add_d2kd_config

    y = get_cfg()
    add_d2kd_config(y)
    y.MODEL.META_ARCHITECTURE = "D2KDLazyModel"
    y.MODEL.LAZY_CONFIG = os.path.abspath(model_config_file)
    y.MODEL.WEIGHTS = os.path.abspath(weights)
    y.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    y.INPUT.MIN_SIZE_TEST, y.INPUT.MAX_SIZE_TEST = _test_resize(cfg)
    y.INPUT.FORMAT = OmegaConf.select(cfg, "model.input_format", default="BGR") or "BGR"
    test_name = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    if test_name:
        y.DATASETS.TEST = (test_name,) if isinstance(test_name, str) else tuple(test_name)
    with open(path, "w") as f:
        f.write(y.dump())


def load_predictor_config(path: str):
    """Load a ``predictor.yaml`` written by d2kd into a yacs config for ``DefaultPredictor``."""
    import d2kd  # noqa: F401  (registers D2KDLazyModel and d2kd's backbones)
    from .config import add_d2kd_config

    y = get_cfg()
    add_d2kd_config(y)
    y.merge_from_file(path)
    return y


def export_student(cfg, weights: str, output_dir: str) -> Dict[str, str]:
    """Write the student-only checkpoint, its LazyConfig and a DefaultPredictor config."""
    os.makedirs(output_dir, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # the exported sections must not point into dropped ones
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = checkpoint.get("model", checkpoint)
    student_weights = os.path.join(output_dir, "model_final.pth")
    torch.save({"model": student_state_dict(state)}, student_weights)

    student_cfg = OmegaConf.create({"model": student_model_config(cfg.model)})
    if "dataloader" in cfg and "test" in cfg.dataloader:
        student_cfg.dataloader = {"test": cfg.dataloader.test}
        if "evaluator" in cfg.dataloader:
            student_cfg.dataloader.evaluator = cfg.dataloader.evaluator
    config_file = os.path.join(output_dir, "config.yaml")
    LazyConfig.save(student_cfg, config_file)
    predictor_file = os.path.join(output_dir, "predictor.yaml")
    write_predictor_config(cfg, config_file, student_weights, predictor_file)
    return {"weights": student_weights, "config": config_file, "predictor": predictor_file}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="the run's config (.py or saved config.yaml)")
    parser.add_argument("--weights", required=True, help="the run's checkpoint (model_final.pth)")
    parser.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    import d2kd  # noqa: F401

    cfg = LazyConfig.load(args.config_file)
    for kind, path in export_student(cfg, args.weights, args.output).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
