"""The ``train.*`` keys d2kd adds to Detectron2's ``train`` section are listed once
(``d2kd.engine.validate.TRAIN_KEYS``): configs/common/schedule.py writes out those and no other,
the package reads each, the override check takes each on a config built on Detectron2's own
``train``, and the documentation names each."""
import glob
import os
import re

import pytest
from conftest import D2_MISSING, REPO

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import LazyConfig  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from d2kd.engine.validate import TRAIN_KEYS, ConfigError, load_config  # noqa: E402

#: Detectron2's own ``train`` section.
D2_TRAIN = model_zoo.get_config_file("common/train.py")
#: Keys of the section that Detectron2 reads although its common/train.py leaves them out
#: (``default_setup``: ``train.seed``).
D2_READ = {"seed"}
#: Keys of TRAIN_KEYS that configs/common/schedule.py leaves unset (the default depends on the device).
UNSET_IN_CONFIG = {"amp.precision"}


def _leaves(node, prefix=""):
    out = set()
    for k, v in node.items():
        if OmegaConf.is_dict(v) or isinstance(v, dict):
            out |= _leaves(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def test_the_common_config_adds_exactly_the_listed_keys():
    ours = _leaves(LazyConfig.load(os.path.join(REPO, "configs/common/schedule.py")).train)
    detectron2 = _leaves(LazyConfig.load(D2_TRAIN).train) | D2_READ
    assert ours - detectron2 == set(TRAIN_KEYS) - UNSET_IN_CONFIG


def test_the_package_reads_every_listed_key():
    sources = ""
    for path in glob.glob(os.path.join(REPO, "d2kd", "**", "*.py"), recursive=True):
        if not path.endswith(os.path.join("engine", "validate.py")):
            with open(path, encoding="utf-8") as f:
                sources += f.read()
    unread = [k for k in TRAIN_KEYS if not re.search(r"""["']%s["']""" % k.rsplit(".", 1)[-1], sources)]
    assert not unread, f"TRAIN_KEYS lists keys nothing in d2kd reads: {unread}"


def test_every_listed_key_overrides_detectron2s_own_train_section():
    values = {"clip_grad_norm": "1.0", "eval_teacher": "False", "skip_nonfinite_kd_steps": "2",
              "allow_pickle_checkpoints": "False", "allow_partial_init": "True",
              "amp.native_bfloat16": "True", "amp.precision": "bfloat16"}
    assert set(values) == set(TRAIN_KEYS)
    cfg = load_config(D2_TRAIN, [f"train.{k}={v}" for k, v in values.items()])
    assert OmegaConf.select(cfg, "train.amp.native_bfloat16") is True
    with pytest.raises(ConfigError, match="'train.amp' has no key 'native_bfloat'"):
        load_config(D2_TRAIN, ["train.amp.native_bfloat=True"])  # a typo is still refused


def test_the_documentation_names_every_listed_key():
    docs = ""
    for path in [os.path.join(REPO, "README.md"), *glob.glob(os.path.join(REPO, "docs", "*.md"))]:
        with open(path, encoding="utf-8") as f:
            docs += f.read()
    undocumented = [k for k in TRAIN_KEYS if f"train.{k}" not in docs]
    assert not undocumented, f"README.md and docs/ do not name: {undocumented}"
