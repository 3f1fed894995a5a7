"""Checks of an experiment config made before training starts, each failing with one line."""
import os

from omegaconf import OmegaConf

from detectron2.config import LazyConfig


class ConfigError(ValueError):
    """A problem with the experiment's config or command line, said in one line."""


def load_config(config_file: str, opts=()):
    if not config_file or not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: '{config_file}'")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as e:
        raise ConfigError(f"cannot load config {config_file}: {type(e).__name__}: {e}".splitlines()[0]) from e
    for opt in opts or ():
        if "=" not in opt:
            raise ConfigError(f"malformed override '{opt}': write key=value (e.g. train.max_iter=100)")
        key = opt.split("=", 1)[0]
        if OmegaConf.select(cfg, key.rsplit(".", 1)[0] if "." in key else key, default=None) is None and "." in key:
            raise ConfigError(f"override '{opt}': the config has no section '{key.rsplit('.', 1)[0]}'")
    try:
        return LazyConfig.apply_overrides(cfg, list(opts or ()))
    except Exception as e:
        raise ConfigError(f"cannot apply overrides {list(opts)}: {type(e).__name__}: {e}".splitlines()[0]) from e


def _dataset_names(node):
    names = OmegaConf.select(node, "dataset.names", default=None) if node is not None else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def validate_config(cfg, args) -> None:
    """Datasets registered and present, weight files present: before any process starts."""
    from ..data.builtin import check_dataset_available

    dl = cfg.get("dataloader", {})
    sections = ["test"] if args.eval_only else ["train", "test"]
    for section in sections:
        for name in _dataset_names(dl.get(section)):
            try:
                check_dataset_available(name)
            except (KeyError, FileNotFoundError) as e:
                msg = e.args[0] if e.args else str(e)
                raise ConfigError(f"dataloader.{section}: {msg}") from None
    init = OmegaConf.select(cfg, "train.init_checkpoint", default="")
    if args.eval_only and not init:
        raise ConfigError("--eval-only needs weights: add train.init_checkpoint=PATH/model_final.pth")
    if init and "://" not in init and not os.path.isfile(init):
        raise ConfigError(f"train.init_checkpoint: weights file not found: {init}")
    if not args.eval_only:
        weights = OmegaConf.select(cfg, "model.teacher.weights", default=None)
        if weights is not None and "://" not in weights and not os.path.isfile(weights):
            raise ConfigError(
                f"model.teacher.weights: teacher weights file not found: {weights} "
                f"(train the teacher first, or set model.teacher.weights=PATH)"
            )
