"""Checks of an experiment config made before training starts, each failing with one line."""
import difflib
import os

from omegaconf import OmegaConf

from detectron2.config import LazyConfig

from ..data.builtin import check_dataset_available


class ConfigError(ValueError):
    """A problem with the experiment's config or command line, said in one line."""


def load_config(config_file: str, opts=()):
    if not config_file or not os.path.isfile(config_file):
        raise ConfigError(f"config file not found: '{config_file}'")
    try:
        cfg = LazyConfig.load(config_file)
    except Exception as e:
        raise ConfigError(f"cannot load config {config_file}: {type(e).__name__}: {e}".splitlines()[0]) from e
    before = {}
    for opt in opts or ():
        if "=" not in opt:
            raise ConfigError(f"malformed override '{opt}': write key=value (e.g. train.max_iter=100)")
        key = opt.split("=", 1)[0]
        plain = key.lstrip("+")
        if not plain.strip():
            raise ConfigError(f"malformed override '{opt}': no key before '=' (e.g. train.max_iter=100)")
        if OmegaConf.select(cfg, plain.rsplit(".", 1)[0] if "." in plain else plain, default=None) is None and "." in plain:
            raise ConfigError(f"override '{opt}': the config has no section '{key.rsplit('.', 1)[0]}'")
        if not key.startswith("+"):
            _check_known_key(cfg, opt, key)
            before[opt] = OmegaConf.select(cfg, key, default=None)
    try:
        cfg = LazyConfig.apply_overrides(cfg, list(opts or ()))
    except Exception as e:
        raise ConfigError(f"cannot apply overrides {list(opts)}: {type(e).__name__}: {e}".splitlines()[0]) from e
    for opt, old in before.items():
        _check_type(opt, old, OmegaConf.select(cfg, opt.split("=", 1)[0], default=None))
    return cfg


#: The keys d2kd adds to Detectron2's LazyConfig ``train`` section (Detectron2's
#: ``configs/common/train.py``), under ``train``, with what reads each. d2kd reads every one with
#: a default, so a config built on Detectron2's own ``train`` runs, and takes overrides of them;
#: ``configs/common/schedule.py`` writes them out with d2kd's values (all but ``amp.precision``,
#: whose default depends on the device). tests/test_train_keys.py checks the config, the package
#: and the docs against this list.
TRAIN_KEYS = {
    "clip_grad_norm": "Trainer.build_optimizer",
    "eval_teacher": "Trainer.build_hooks (TeacherEvalHook)",
    "skip_nonfinite_kd_steps": "d2kd.engine.nonfinite",
    "allow_pickle_checkpoints": "d2kd.checkpoint",
    "allow_partial_init": "Trainer.resume_or_load",
    "amp.native_bfloat16": "d2kd.engine.amp",
    "amp.precision": "d2kd.engine.amp",
}


def _by_section(keys):
    """``{"train": (leaf, ...), "train.amp": (leaf, ...)}`` of keys relative to ``train``."""
    out = {}
    for key in keys:
        section, _, leaf = f"train.{key}".rpartition(".")
        out[section] = out.get(section, ()) + (leaf,)
    return out


#: Keys d2kd reads with a default when a config does not set them, by section.
OPTIONAL_KEYS = _by_section(TRAIN_KEYS)

#: Values a key takes besides those of its type in the config (checked by ``_check_type``).
EXTRA_VALUES = {
    "train.amp.enabled": ("auto",),  # True / False / "auto": d2kd.engine.amp
}


def _check_known_key(cfg, opt: str, key: str) -> None:
    """``train.max_iters=10`` would silently add an unused key to a plain section (``train``):
    a typo. Call sections (with ``_target_``) may take new keyword arguments; ``+key=value``
    adds a key on purpose."""
    if "." not in key:
        _check_top_level_key(cfg, opt, key)
        return
    parent_key, leaf = key.rsplit(".", 1)
    parent = OmegaConf.select(cfg, parent_key, default=None)
    if parent is None or not OmegaConf.is_dict(parent) or "_target_" in parent or leaf in parent:
        return
    if leaf in OPTIONAL_KEYS.get(parent_key, ()):
        return
    close = difflib.get_close_matches(leaf, [str(k) for k in parent.keys()], n=1)
    hint = f"did you mean '{parent_key}.{close[0]}'? " if close else ""
    raise ConfigError(
        f"override '{opt}': '{parent_key}' has no key '{leaf}'; {hint}(write +{key}=... to add a new key)"
    )


def _check_top_level_key(cfg, opt: str, key: str) -> None:
    """``output_dir=/tmp/run`` (its section left out) would add a top-level key that nothing
    reads, and the run would write into the config's own ``train.output_dir``: over another
    run's checkpoints. Name the keys it most likely meant, searched in every section."""
    if key in cfg:
        return
    paths = _leaf_paths(cfg)
    meant = paths.get(key) or [p for leaf in difflib.get_close_matches(key, list(paths), n=1) for p in paths[leaf]]
    # The shortest paths first: train.output_dir before dataloader.evaluator.output_dir.
    meant = sorted(meant, key=lambda p: (p.count("."), p))[:3]
    sections = ", ".join(sorted(str(k) for k in cfg.keys()))
    raise ConfigError(
        f"override '{opt}': the config has no top-level key '{key}'; did you mean "
        f"{' or '.join(repr(p) for p in meant)}? (each key is written with its section: {sections})"
        if meant
        else f"override '{opt}': the config has no top-level key '{key}': write each key with its "
        f"section ({sections})"
    )


def _leaf_paths(node, prefix: str = "", out=None) -> dict:
    """{leaf name: [dotted paths ending in it]} over every dict and list of ``node``."""
    out = {} if out is None else out
    if OmegaConf.is_dict(node):
        items = [(str(k), k) for k in node.keys()]
    elif OmegaConf.is_list(node):
        items = [(str(i), i) for i in range(len(node))]
    else:
        return out
    for name, k in items:
        path = f"{prefix}{name}"
        if not name.isdigit():
            out.setdefault(name, []).append(path)
        try:
            child = node._get_node(k)  # unresolved: an interpolation is not evaluated here
        except Exception:
            continue
        if OmegaConf.is_config(child):
            _leaf_paths(child, path + ".", out)
    return out


def _check_type(opt: str, old, new) -> None:
    """A number/bool key overridden with something else (``train.max_iter=1e3x``) fails now,
    not hours later."""
    if old is None or new is None or isinstance(old, str):
        return
    if new in EXTRA_VALUES.get(opt.split("=", 1)[0].lstrip("+"), ()):
        return
    kinds = {bool: (bool,), int: (int,), float: (int, float)}
    for kind, ok in kinds.items():
        if type(old) is kind and not (type(new) in ok and not (kind is not bool and type(new) is bool)):
            raise ConfigError(
                f"override '{opt}': expected {kind.__name__} (the config has {old!r}), got "
                f"{type(new).__name__} {new!r}"
            )


def _dataset_names(node):
    names = OmegaConf.select(node, "dataset.names", default=None) if node is not None else None
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)


def validate_config(cfg, args) -> None:
    """Datasets registered and present, weight files present: before any process starts."""
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
        raise ConfigError(
            f"train.init_checkpoint: weights file not found: {init} (train the model it comes from "
            f"first, e.g. the config its folder is named after, or set train.init_checkpoint=PATH)"
        )
    if not args.eval_only:
        _check_max_iter(cfg)
        weights = OmegaConf.select(cfg, "model.teacher.weights", default=None)
        if weights is not None and "://" not in weights and not os.path.isfile(weights):
            raise ConfigError(
                f"model.teacher.weights: teacher weights file not found: {weights} "
                f"(train the teacher first, or set model.teacher.weights=PATH)"
            )


def _check_max_iter(cfg) -> None:
    """``train.max_iter=0`` ended in a ZeroDivisionError (the LR schedule divides by it) and a
    negative one trained nothing with exit status 0."""
    max_iter = OmegaConf.select(cfg, "train.max_iter", default=None)
    if isinstance(max_iter, (int, float)) and not isinstance(max_iter, bool) and max_iter < 1:
        raise ConfigError(
            f"train.max_iter={max_iter}: training needs at least 1 iteration (e.g. train.max_iter=100); "
            f"to evaluate weights without training, use --eval-only with train.init_checkpoint=PATH"
        )
