"""Export the student of a (distillation) run as a plain Detectron2 model.

Writes into ``output_dir``:

- ``model_final.pth``: ``{"model": student state_dict}`` without the distillers' adapters (the
  teacher is never in the state dict). Stock ``GeneralizedRCNN``/``RetinaNet`` built from
  ``config.yaml`` loads it with no missing or unexpected keys.
- ``config.yaml``: LazyConfig with the student ``model`` (its stock class) and the test
  ``dataloader``.
- ``predictor.yaml``: a yacs config for ``DefaultPredictor`` (see :func:`load_predictor_config`),
  with paths relative to ``output_dir`` and no device: the folder is self-contained (it can be
  moved, or copied to a machine with or without a GPU).
- ``README.md``: how to load the folder (:func:`write_loading_notes`). ``config.yaml`` is a
  LazyConfig, which Detectron2's yacs-only tools (``tools/deploy/export_model.py``) cannot read;
  the notes say so and give the routes that work.

A run trained from a **yacs** config (``MODEL.META_ARCHITECTURE: DistillationRCNN`` or
``DistillationRetinaNet`` with ``MODEL.DISTILL``, under Detectron2's ``DefaultTrainer``) exports
to a stock yacs ``config.yaml`` instead (:func:`stock_yacs_config`: the student's registered
class, none of d2kd's keys), which stock ``get_cfg().merge_from_file`` and Detectron2's
``tools/deploy/export_model.py`` read as they are; ``predictor.yaml`` is the same config.

Serving it: :func:`build_predictor` (``tools/demo.py``) returns a ``DefaultPredictor`` whose
weights are read by d2kd's checkpointer, which never runs code from a file (a ``.pkl`` that
needs more than arrays is refused unless ``allow_pickle=True`` / ``MODEL.ALLOW_PICKLE``).
Stock ``DefaultPredictor(load_predictor_config(path))`` is safe too: its model builder,
``D2KDLazyModel``, checks ``MODEL.WEIGHTS`` that way before the stock loader unpickles it.

Usage: ``python -m d2kd.export --config-file RUN/config.yaml --weights RUN/model_final.pth
--output RUN/export``.
"""
import argparse
import copy
import os
from typing import Dict, Optional, Union

import torch
import yaml
from omegaconf import OmegaConf

from detectron2.config import CfgNode, LazyConfig, get_cfg
from detectron2.config.lazy import _convert_target_to_string
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.registry import locate

from . import import_check  # noqa: F401  (first: a clear error where "d2kd" is a folder, not the package)
import d2kd  # noqa: F401,E402  (registers D2KDLazyModel, d2kd's backbones and datasets)

from .checkpoint import OPT_IN_PREDICTOR, ReportingCheckpointer, load_torch_weights
from .config import D2KD_MODEL_KEYS, add_d2kd_config, config_test_resize, load_config_file

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


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values out (no ``&id001`` anchors): the file stays readable by hand."""

    def ignore_aliases(self, data):
        return True


def write_predictor_config(cfg, model_config_file: str, weights: str, path: str) -> None:
    """A yacs config with which ``DefaultPredictor`` serves the LazyConfig model.

    The folder it is written to is self-contained: ``MODEL.LAZY_CONFIG`` and ``MODEL.WEIGHTS``
    are relative to the file's folder (:func:`load_predictor_config` resolves them), and no
    ``MODEL.DEVICE`` is written (the loader picks the available one), so the folder can be
    moved or copied to another machine.
    """
    folder = os.path.dirname(os.path.abspath(path))
    y = get_cfg()
    add_d2kd_config(y)
    y.MODEL.META_ARCHITECTURE = "D2KDLazyModel"
    y.MODEL.LAZY_CONFIG = os.path.relpath(os.path.abspath(model_config_file), folder)
    y.MODEL.WEIGHTS = os.path.relpath(os.path.abspath(weights), folder)
    # DefaultPredictor resizes like the test mapper; (0, 0): no resize. A square Resize((s, s))
    # becomes (s, s), exact for square images (for others: predictor.aug = T.Resize((s, s))).
    y.INPUT.MIN_SIZE_TEST, y.INPUT.MAX_SIZE_TEST = config_test_resize(cfg) or (0, 0)
    y.INPUT.FORMAT = OmegaConf.select(cfg, "model.input_format", default="BGR") or "BGR"
    test_name = OmegaConf.select(cfg, "dataloader.test.dataset.names", default=None)
    if test_name:
        y.DATASETS.TEST = (test_name,) if isinstance(test_name, str) else tuple(test_name)
    write_portable_yacs(y, path)


def write_portable_yacs(y: CfgNode, path: str) -> None:
    """Dump a yacs config without ``MODEL.DEVICE``: the device is chosen where the folder is
    loaded, not where it was exported."""
    data = yaml.safe_load(y.dump())
    del data["MODEL"]["DEVICE"]
    with open(path, "w") as f:
        yaml.dump(data, f, Dumper=_PlainDumper)


def default_device() -> str:
    """``cuda`` where a GPU is available, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve(path: str, folder: str) -> str:
    """``path`` relative to ``folder``, unless it is empty, absolute or a URL (``scheme://``)."""
    if not path or os.path.isabs(path) or "://" in path:
        return path
    return os.path.normpath(os.path.join(folder, path))


def load_predictor_config(path: str, *, device: Optional[str] = None):
    """Load a ``predictor.yaml`` written by d2kd into a yacs config for ``DefaultPredictor``.

    Relative ``MODEL.LAZY_CONFIG``/``MODEL.WEIGHTS`` are resolved against the file's folder.
    ``MODEL.DEVICE``: ``device`` if given, else the file's if it names one (exports written
    before the folder became portable do), else :func:`default_device`.
    """
    y = get_cfg()
    add_d2kd_config(y)
    y.merge_from_file(path)
    folder = os.path.dirname(os.path.abspath(path))
    y.MODEL.LAZY_CONFIG = _resolve(y.MODEL.LAZY_CONFIG, folder)
    y.MODEL.WEIGHTS = _resolve(y.MODEL.WEIGHTS, folder)
    with open(path) as f:
        written = yaml.safe_load(f) or {}
    if device:
        y.MODEL.DEVICE = device
    elif "DEVICE" not in (written.get("MODEL") or {}):
        y.MODEL.DEVICE = default_device()
    return y


class Predictor(DefaultPredictor):
    """``DefaultPredictor`` that reads ``cfg.MODEL.WEIGHTS`` with d2kd's checkpointer.

    The stock one unpickles a ``.pkl`` with plain ``pickle.load``, which can run code from the
    file; here it is read like every other d2kd weight file (``d2kd.checkpoint``): arrays,
    tensors and plain containers only, unless ``allow_pickle`` (or ``MODEL.ALLOW_PICKLE``).
    Everything else (resize, input format, ``__call__``) is ``DefaultPredictor``'s.
    """

    def __init__(self, cfg: CfgNode, *, allow_pickle: bool = False):
        self.cfg = cfg.clone()
        self.allow_pickle = bool(allow_pickle or cfg.MODEL.get("ALLOW_PICKLE", False))
        build_cfg = self.cfg.clone()
        build_cfg.defrost()
        build_cfg.MODEL.WEIGHTS = ""  # read once, below (D2KDLazyModel would check it first)
        self.model = build_model(build_cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        ReportingCheckpointer(self.model, allow_pickle=self.allow_pickle, opt_in=OPT_IN_PREDICTOR).load(
            cfg.MODEL.WEIGHTS
        )
        short, longest = config_test_resize(cfg)
        self.aug = T.ResizeShortestEdge([short, short], longest)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR for a predictor, got {self.input_format!r}")


def build_predictor(
    path_or_cfg: Union[str, CfgNode], *, allow_pickle: bool = False, device: Optional[str] = None
) -> Predictor:
    """A :class:`Predictor` from a ``predictor.yaml`` path (or its loaded yacs config), on
    ``device`` if given (else the config's: :func:`load_predictor_config`)."""
    if isinstance(path_or_cfg, str):
        cfg = load_predictor_config(path_or_cfg, device=device)
    else:
        cfg = path_or_cfg
        if device:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.DEVICE = device
    return Predictor(cfg, allow_pickle=allow_pickle)


LOADING_NOTES = """# {model_class} student exported by d2kd

| file | what it is |
|---|---|
| `model_final.pth` | `{{"model": state_dict}}` of the student alone (no teacher, no distillation adapters) |
| `config.yaml` | a Detectron2 **LazyConfig**: `model` (`{model_target}`) and the test `dataloader` |
| `predictor.yaml` | a yacs config for `DefaultPredictor` (needs `import d2kd`: its model is `D2KDLazyModel`) |

Paths are relative to this folder and no device is written: move or copy the folder freely.

## Load it in Python

```python
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

cfg = LazyConfig.load("config.yaml")
model = instantiate(cfg.model).eval()
DetectionCheckpointer(model).load("model_final.pth")
```

{d2kd_note}## Serve it

```python
import d2kd
from detectron2.engine import DefaultPredictor
from d2kd.export import load_predictor_config

predictor = DefaultPredictor(load_predictor_config("predictor.yaml"))
```

## Export it (TorchScript, ONNX)

`config.yaml` is a LazyConfig, and Detectron2's `tools/deploy/export_model.py` reads yacs configs
only. d2kd's deploy command takes the same route (Detectron2's `TracingAdapter`) from this folder:

    python3 -m d2kd.deploy export --student . --format torchscript onnx
"""

YACS_LOADING_NOTES = """# {model_class} student exported by d2kd

| file | what it is |
|---|---|
| `model_final.pth` | `{{"model": state_dict}}` of the student alone (no teacher, no distillation adapters) |
| `config.yaml` | a stock Detectron2 **yacs** config of `{model_class}` (none of d2kd's keys) |
| `predictor.yaml` | the same config, which d2kd's `build_predictor` reads with paths relative to this folder |

`MODEL.WEIGHTS` is `model_final.pth`, relative: run the commands below from this folder, or set
it to the file's path. No `MODEL.DEVICE` is written: Detectron2's default is `cuda`; on a machine
without a GPU add `MODEL.DEVICE cpu`.

## Load and serve it with stock Detectron2

```python
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor

cfg = get_cfg()
cfg.merge_from_file("config.yaml")
cfg.MODEL.DEVICE = "cpu"  # where there is no GPU
predictor = DefaultPredictor(cfg)
```

## Export it (TorchScript, ONNX)

Detectron2's own exporter reads this folder (`tools/` of a Detectron2 clone):

    python3 detectron2/tools/deploy/export_model.py --config-file config.yaml --export-method tracing \
        --format torchscript --output deploy MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu
"""

D2KD_CLASSES_NOTE = (
    "This model is built with d2kd code ({targets}): install d2kd; `instantiate` imports it.\n\n"
)


def write_loading_notes(student_cfg, path: str) -> None:
    """``README.md`` of an exported folder: its files, and how to load, serve and export it."""
    target = student_cfg.model._target_
    target = target if isinstance(target, str) else _convert_target_to_string(target)
    d2kd_targets = sorted({t for t in _targets(student_cfg.model) if t.startswith("d2kd.")})
    d2kd_note = D2KD_CLASSES_NOTE.format(targets=", ".join(f"`{t}`" for t in d2kd_targets)) if d2kd_targets else ""
    with open(path, "w") as f:
        f.write(LOADING_NOTES.format(model_class=target.rsplit(".", 1)[-1], model_target=target,
                                     d2kd_note=d2kd_note))


def _targets(node):
    """Every ``_target_`` string in a LazyConfig node."""
    if OmegaConf.is_dict(node):
        for key, value in node.items():
            if key == "_target_":
                yield value if isinstance(value, str) else _convert_target_to_string(value)
            else:
                yield from _targets(value)
    elif OmegaConf.is_list(node):
        for value in node:
            yield from _targets(value)


def stock_yacs_config(cfg: CfgNode) -> CfgNode:
    """A yacs run config as stock Detectron2 reads it: a distillation meta-architecture replaced
    by its student class (registered under its own name: ``GeneralizedRCNN``, ``RetinaNet``), and
    d2kd's keys (``MODEL.DISTILL``, ``MODEL.LAZY_CONFIG``, ``MODEL.ALLOW_PICKLE``) dropped."""
    stock = cfg.clone()
    stock.defrost()
    arch = META_ARCH_REGISTRY.get(stock.MODEL.META_ARCHITECTURE)
    student_class = getattr(arch, "student_class", None)
    if student_class is not None:
        if META_ARCH_REGISTRY.get(student_class.__name__) is not student_class:
            raise ValueError(f"{stock.MODEL.META_ARCHITECTURE}'s student class {student_class.__name__} is not "
                             f"registered under that name in META_ARCH_REGISTRY: no yacs config can name it")
        stock.MODEL.META_ARCHITECTURE = student_class.__name__
    for key in D2KD_MODEL_KEYS:
        stock.MODEL.pop(key, None)
    return stock


def _save_student_weights(weights: str, output_dir: str) -> str:
    checkpoint = load_torch_weights(weights)  # tensors only; "not a checkpoint" said as such
    state = checkpoint.get("model", checkpoint)
    student_weights = os.path.join(output_dir, "model_final.pth")
    torch.save({"model": student_state_dict(state)}, student_weights)
    return student_weights


def export_yacs_student(cfg: CfgNode, weights: str, output_dir: str) -> Dict[str, str]:
    """:func:`export_student` for a yacs run config: ``config.yaml`` (and ``predictor.yaml``,
    the same) is the stock yacs config of the student, ``MODEL.WEIGHTS`` relative to the folder,
    no ``MODEL.DEVICE``."""
    os.makedirs(output_dir, exist_ok=True)
    student_weights = _save_student_weights(weights, output_dir)
    stock = stock_yacs_config(cfg)
    stock.MODEL.WEIGHTS = os.path.basename(student_weights)
    paths = {"weights": student_weights}
    for kind in ("config", "predictor"):
        paths[kind] = os.path.join(output_dir, f"{kind}.yaml")
        write_portable_yacs(stock, paths[kind])
    paths["notes"] = os.path.join(output_dir, "README.md")
    with open(paths["notes"], "w") as f:
        f.write(YACS_LOADING_NOTES.format(model_class=stock.MODEL.META_ARCHITECTURE))
    return paths


def export_student(cfg, weights: str, output_dir: str) -> Dict[str, str]:
    """Write the student-only checkpoint, its LazyConfig and a DefaultPredictor config (a yacs
    ``cfg``: :func:`export_yacs_student`)."""
    if isinstance(cfg, CfgNode):
        return export_yacs_student(cfg, weights, output_dir)
    os.makedirs(output_dir, exist_ok=True)
    cfg = copy.deepcopy(cfg)
    OmegaConf.resolve(cfg)  # the exported sections must not point into dropped ones
    student_weights = _save_student_weights(weights, output_dir)

    student_cfg = OmegaConf.create({"model": student_model_config(cfg.model)})
    if "dataloader" in cfg and "test" in cfg.dataloader:
        student_cfg.dataloader = {"test": cfg.dataloader.test}
        if "evaluator" in cfg.dataloader:
            student_cfg.dataloader.evaluator = cfg.dataloader.evaluator
    config_file = os.path.join(output_dir, "config.yaml")
    LazyConfig.save(student_cfg, config_file)
    predictor_file = os.path.join(output_dir, "predictor.yaml")
    write_predictor_config(cfg, config_file, student_weights, predictor_file)
    notes_file = os.path.join(output_dir, "README.md")
    write_loading_notes(student_cfg, notes_file)
    return {"weights": student_weights, "config": config_file, "predictor": predictor_file, "notes": notes_file}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True,
                        help="the run's config (LazyConfig .py or saved config.yaml, or a yacs .yaml)")
    parser.add_argument("--weights", required=True, help="the run's checkpoint (model_final.pth)")
    parser.add_argument("--output", required=True, help="output folder")
    args = parser.parse_args(argv)
    cfg = load_config_file(args.config_file)
    for kind, path in export_student(cfg, args.weights, args.output).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
