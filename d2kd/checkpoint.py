"""Checkpointers that never leave a partial checkpoint behind and never run code from a file.

Writing (:class:`AtomicCheckpointer`): fvcore writes ``model_XXXX.pth`` in place and then
rewrites ``last_checkpoint``: a process killed mid-write leaves a truncated file that
``--resume`` would pick up. Here both files are written to a temporary name
(``<name>.tmp.<pid>``), flushed to disk and renamed into place (``os.replace`` is atomic on
POSIX), so ``last_checkpoint`` only ever names a complete file. Temporary files left by a killed
process are removed on resume (:func:`remove_partial_checkpoints`); if ``last_checkpoint``
names a file that cannot be read, resume falls back to the newest readable ``model_*.pth``.

Reading (both checkpointers, through :class:`SafeLoadMixin`):

* ``.pth`` / ``.pyth``: ``torch.load(..., weights_only=True)`` explicitly (tensors, numbers,
  strings and containers only; no code runs while loading). Trainer, optimizer, scheduler and
  distiller state are saved as such, so ``--resume`` works under it.
* ``.pkl`` (Detectron2/Caffe2 model zoos, d2kd's VGG converter): read with a restricted
  unpickler that admits only numpy arrays/scalars and plain Python containers, the content of
  every model-zoo weight file. A ``.pkl`` that needs anything else (arbitrary classes or
  callables: a pickle can run code when loaded) is refused unless ``allow_pickle=True``
  (``train.allow_pickle_checkpoints=True``, ``build_teacher(allow_pickle=True)``), and then
  loaded with a warning.
* A file that is no checkpoint at all (random bytes, an HTML error page, a renamed pickle) is
  reported as such (:class:`NotACheckpointError`), with or without the opt-in: a ``.pth`` by its
  first bytes, a ``.pkl`` by walking its opcodes (``pickletools``), before any unpickler runs;
  not diagnosed as "needs pickle", nor left to fail with whatever an unpickler trips on
  (``MemoryError``, ``IndexError``).

Serving: Detectron2's ``DefaultPredictor`` loads ``MODEL.WEIGHTS`` with the stock
``DetectionCheckpointer`` (plain ``pickle.load`` for a ``.pkl``). :func:`check_weights_file`
reads a file the safe way and raises if it needs code to load; ``D2KDLazyModel`` calls it, so a
``predictor.yaml`` is checked before ``DefaultPredictor`` ever unpickles its weights.
"""
import errno
import glob
import io
import logging
import os
import pickle
import pickletools
import re
from typing import List, Optional

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

from .runtime import unwrap_model

logger = logging.getLogger(__name__)

_TMP_RE = re.compile(r"\.tmp\.\d+$")


#: errno values of a full disk or an exhausted quota.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")
    except Exception as e:
        full = _no_space_error(e)
        if full is None:
            raise
        # torch.save reports a failed write as "[enforce fail at inline_container.cc] unexpected
        # pos ...", naming neither the file nor the disk: say both.
        raise OSError(
            full.errno,
            f"no space left writing {path} ({os.strerror(full.errno)}): free space on that disk, or "
            f"point train.output_dir at another, then continue with --resume",
        ) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _no_space_error(e: BaseException) -> Optional[OSError]:
    """The disk-full ``OSError`` behind ``e``: itself, or what it was raised from or while
    handling (torch.save's writer turns the file's ``OSError`` into a ``RuntimeError``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return e
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_checkpoints(save_dir: str) -> List[str]:
    """Delete ``*.tmp.<pid>`` files (checkpoints whose writer was killed); return their paths."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(save_dir), "*.tmp.*"))):
        if _TMP_RE.search(path) and os.path.isfile(path):
            try:
                os.remove(path)
            except OSError:
                continue
            removed.append(path)
            logger.warning("Removed %s: a partial checkpoint left by an interrupted run", path)
    return removed


# ---- reading without running code -------------------------------------------------------------
#: How each route opts in to full pickle; the refusal names the one of the route that refused.
OPT_IN_TRAIN = "train.allow_pickle_checkpoints=True (teacher: model.teacher.allow_pickle=True)"
OPT_IN_PREDICTOR = (
    "MODEL.ALLOW_PICKLE True in the predictor config (tools/demo.py --allow-pickle, "
    "d2kd.export.build_predictor(..., allow_pickle=True))"
)
OPT_IN_YACS_TEACHER = "MODEL.DISTILL.TEACHER.ALLOW_PICKLE True"


def last_checkpoint(output_dir: Optional[str]) -> Optional[str]:
    """The checkpoint ``output_dir/last_checkpoint`` names (what ``--resume`` loads), if both exist."""
    if not output_dir:
        return None
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        return None
    path = os.path.join(output_dir, name)
    return path if name and os.path.isfile(path) else None


class UnsafePickleError(pickle.UnpicklingError):
    """A ``.pkl`` file needs more than numpy arrays and plain containers to load."""


class NotACheckpointError(ValueError):
    """A weight file is not a checkpoint at all (empty, random bytes, damaged, another format)."""


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_BUILTIN_GLOBALS = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "bool"), ("builtins", "complex"), ("builtins", "bytearray"),
    ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("_codecs", "encode"),
}
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}
_NUMPY_DTYPE_CLASSES = re.compile(r"^numpy(\.dtypes)?$")


class _WeightsOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a pickled dict of numpy arrays needs, nothing else."""

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)  # Python 2 pickles (Caffe2/Detectron1 zoos)
        if (module, name) in _NUMPY_GLOBALS or (module, name) in _BUILTIN_GLOBALS:
            return super().find_class(module, name)
        # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType etc.
        if _NUMPY_DTYPE_CLASSES.match(module) and name.endswith("DType"):
            return super().find_class(module, name)
        raise UnsafePickleError(f"{module}.{name}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _not_a_checkpoint(path: str, why: str) -> NotACheckpointError:
    return NotACheckpointError(
        f"{path} is not a checkpoint: {why}; is it the right file, and was it copied completely?"
    )


#: Pickle opcodes that store into the memo; the unpickler grows its memo to twice the index
#: (a random 4-byte index asks for tens of GB: the MemoryError of a random file).
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _scan_pickle(path: str, raw: bytes) -> None:
    """Walk ``raw``'s opcodes without executing any (``pickletools.genops``): random bytes,
    truncation and absurd memo indices are refused before any unpickler sees them."""
    if not raw:
        raise _not_a_checkpoint(path, "it is empty (0 bytes)")
    count = 0
    try:
        for opcode, arg, _ in pickletools.genops(raw):
            count += 1
            if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > count:
                raise ValueError(f"memo index {arg} after {count} opcodes")
            if opcode.name in ("GLOBAL", "INST") and isinstance(arg, str):
                module, _, name = arg.partition(" ")
                if not all(p.isidentifier() for p in module.split(".") + name.split(".")):
                    raise ValueError(f"global {arg!r} is no Python name")
    except Exception as e:  # genops: unknown opcode, truncated data, no STOP at the end
        raise _not_a_checkpoint(path, f"it is no valid pickle ({_first_line(e)})") from None


def load_pickle_weights(path: str, allow_pickle: bool = False, opt_in: str = OPT_IN_TRAIN):
    """A ``.pkl`` weight file: numpy arrays and plain types only, unless ``allow_pickle``."""
    with open(path, "rb") as f:
        raw = f.read()
    _scan_pickle(path, raw)
    try:
        return _WeightsOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except UnsafePickleError as e:
        if not allow_pickle:
            raise UnsafePickleError(
                f"{path} is a pickle that needs '{e.args[0]}' to load, and unpickling it could run "
                f"arbitrary code: if you trust the file, opt in with {opt_in}, or convert it to a "
                f".pth of tensors"
            ) from None
    except Exception as e:  # a well-formed opcode stream that still does not unpickle
        raise _not_a_checkpoint(path, f"it does not unpickle ({_first_line(e)})") from None
    logger.warning(
        "Loading %s with full pickle (allow_pickle=True): a pickle can run arbitrary code; "
        "only do this for files you trust",
        path,
    )
    try:
        return pickle.loads(raw, encoding="latin1")
    except (ImportError, AttributeError):
        raise  # a trusted pickle whose classes are not importable here: that is the message
    except Exception as e:
        raise _not_a_checkpoint(path, f"it does not unpickle ({_first_line(e)})") from None


#: A legacy torch.save file starts with its pickled magic number (LONG1, 10 bytes).
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")


def check_torch_file_format(path: str) -> None:
    """Raise :class:`NotACheckpointError` unless ``path`` starts like a ``torch.save`` file: a
    zip archive (PyTorch >= 1.6, TorchScript), the legacy pickled magic number or a tar (< 0.4).
    Read from the first bytes, so random bytes are not unpickled to find out."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise _not_a_checkpoint(path, "it is empty (0 bytes)")
    if head.startswith(b"PK\x03\x04") or head[257:262] == b"ustar":
        return
    if head.startswith(b"\x80") and _TORCH_LEGACY_MAGIC in head[:32]:
        return
    hint = ""
    if head.startswith(b"\x80") and 2 <= head[1] <= 5:
        hint = "; it looks like a plain pickle: a Detectron2/Caffe2 model-zoo pickle must be named .pkl"
    raise _not_a_checkpoint(
        path, f"it is neither a torch.save zip archive nor a legacy torch.save file (it starts with {head[:8]!r}){hint}"
    )


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _weights_only_refusal(e: BaseException) -> str:
    """What ``torch.load(weights_only=True)`` refused, in a phrase: the class the file needs
    (torch's own message is a paragraph about its defaults, with terminal escapes)."""
    needed = _UNSUPPORTED_GLOBAL.search(str(e))
    if needed:
        return f"it needs '{needed.group(1)}'"
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_torch_weights(path: str, allow_pickle: bool = False, opt_in: str = OPT_IN_TRAIN):
    """``torch.load`` of a ``.pth``: tensors and plain types only, unless ``allow_pickle``."""
    check_torch_file_format(path)
    try:
        return torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        if not allow_pickle:
            raise pickle.UnpicklingError(
                f"{path} holds objects other than tensors and plain types ({_weights_only_refusal(e)}); "
                f"loading it could run arbitrary code: if you trust the file, opt in with {opt_in}"
            ) from None
    except RuntimeError as e:
        if "PytorchStreamReader" in str(e):  # a zip cut short or damaged
            raise _not_a_checkpoint(path, f"it is truncated or damaged ({_first_line(e)})") from None
        raise
    logger.warning(
        "Loading %s with weights_only=False (allow_pickle=True): it can run arbitrary code; "
        "only do this for files you trust",
        path,
    )
    try:
        return torch.load(path, map_location=torch.device("cpu"), weights_only=False)
    except (pickle.UnpicklingError, EOFError, MemoryError, RuntimeError) as e:
        raise _not_a_checkpoint(path, f"it does not load ({_first_line(e)})") from None


def check_weights_file(path: str, *, opt_in: str = OPT_IN_PREDICTOR) -> None:
    """Raise if reading ``path`` would need code from the file (or it is not a checkpoint).

    For a loader that d2kd does not control (``DefaultPredictor``'s stock
    ``DetectionCheckpointer`` unpickles a ``.pkl`` with plain ``pickle.load``): once the file
    has been read here without running code, the stock loader reading it again runs none.
    """
    local = PathManager.get_local_path(path)  # detectron2:// and URLs, as the checkpointer does
    if not os.path.isfile(local):
        raise FileNotFoundError(f"weights file not found: {path}")
    if local.endswith(".pkl"):
        load_pickle_weights(local, allow_pickle=False, opt_in=opt_in)
    else:
        load_torch_weights(local, allow_pickle=False, opt_in=opt_in)


class SafeLoadMixin:
    """``_load_file`` without code execution (see the module docstring)."""

    allow_pickle: bool = False
    #: The opt-in a refusal names (the config key of the route that loads).
    opt_in: str = OPT_IN_TRAIN

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            data = load_pickle_weights(filename, allow_pickle=self.allow_pickle, opt_in=self.opt_in)
            if not isinstance(data, dict):
                raise ValueError(f"{filename} holds a {type(data).__name__}, not a dict of weights")
            if "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            # Caffe2 / Detectron1 model zoo (as DetectionCheckpointer._load_file)
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):
            data = self._torch_load(filename)
            if "model_state" not in data:
                raise ValueError(f"Cannot load .pyth file {filename}; pycls checkpoints must contain 'model_state'.")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f):
        return load_torch_weights(f, allow_pickle=self.allow_pickle, opt_in=self.opt_in)


class AtomicCheckpointer(SafeLoadMixin, DetectionCheckpointer):
    def __init__(self, model, save_dir="", *, allow_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = bool(allow_pickle)
        self.incompatible = None

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename.encode()))

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    # ---- resume -----------------------------------------------------------------------------
    def resume_candidates(self) -> List[str]:
        """The file ``last_checkpoint`` names, then the other ``model_*.pth``, newest first."""
        tagged = self.get_checkpoint_file() if self.has_checkpoint() else ""
        others = sorted(
            glob.glob(os.path.join(glob.escape(self.save_dir), "model_*.pth")),
            key=lambda p: (os.path.getmtime(p), p),
            reverse=True,
        )
        out = [tagged] if tagged else []
        out += [p for p in others if os.path.abspath(p) != os.path.abspath(tagged or "")]
        return out

    def resume_or_load(self, path: str, *, resume: bool = True, check=None):
        """``check(path, checkpoint, incompatible)``, if given, is called when resuming, after the
        model was loaded and before the other checkpointables (optimizer, scheduler) are: it
        raises to refuse a checkpoint that does not fit (written by another model or method)."""
        if not resume:
            return self.load(path, checkpointables=[])
        if self.save_to_disk:
            remove_partial_checkpoints(self.save_dir)
        candidates = self.resume_candidates() if self.save_dir else []
        if not candidates:
            return self.load(path, checkpointables=[])
        errors = []
        for candidate in candidates:
            if not os.path.isfile(candidate):
                errors.append(f"{os.path.basename(candidate)}: missing")
                continue
            try:
                checkpoint = self._load_file_for_resume(candidate)
            except Exception as e:  # truncated/corrupt: try the previous one
                errors.append(f"{os.path.basename(candidate)}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            if errors:
                logger.warning(
                    "Resuming from %s: newer checkpoints could not be read (%s)", candidate, "; ".join(errors)
                )
            self.resumed_from = candidate
            return self._apply_loaded(candidate, checkpoint, check=check)
        raise RuntimeError(
            f"cannot resume from {self.save_dir}: no checkpoint there can be read ({'; '.join(errors)}); "
            f"delete the broken files (or the directory) to start afresh, or drop --resume"
        )

    def _load_file_for_resume(self, path: str):
        # DetectionCheckpointer._load_file expects the URL parsed by load(); mirror that.
        from urllib.parse import urlparse

        self._parsed_url_during_load = urlparse(path)
        try:
            return self._load_file(path)
        finally:
            self._parsed_url_during_load = None

    def _apply_loaded(self, path: str, checkpoint, check=None):
        self.logger.info("[Checkpointer] Resuming from %s ...", path)
        incompatible = self._load_model(checkpoint)
        if check is not None:
            check(path, checkpoint, incompatible)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables:
            if key in checkpoint:
                self.logger.info("Loading %s from %s ...", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint


class ReportingCheckpointer(SafeLoadMixin, DetectionCheckpointer):
    """``DetectionCheckpointer.load`` that keeps its report of incompatible keys
    (``self.incompatible``), and can drop keys by prefix before loading (a distillation
    checkpoint's ``distillers.`` adapters, when loading it into the plain student)."""

    def __init__(
        self, model, *, drop_prefixes=(), allow_pickle: bool = False, opt_in: str = OPT_IN_TRAIN, **kwargs
    ):
        super().__init__(model, **kwargs)
        self.drop_prefixes = tuple(drop_prefixes)
        self.allow_pickle = bool(allow_pickle)
        self.opt_in = opt_in
        self.incompatible = None

    def _load_model(self, checkpoint):
        if self.drop_prefixes:
            checkpoint["model"] = {
                k: v for k, v in checkpoint["model"].items() if not k.startswith(self.drop_prefixes)
            }
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def init_checkpoint_fit(model, incompatible) -> Optional[str]:
    """``None`` if an init checkpoint fits ``model``; else why not, in a phrase.

    It does not fit when less than half of the checkpoint's tensors could be loaded into the
    model (unexpected names or wrong shapes): a checkpoint of another architecture, which
    fvcore would otherwise report as warnings and then train from scratch. Missing model keys
    alone are fine (a backbone-only ImageNet init leaves the heads missing).
    """
    if incompatible is None:
        return None
    model = unwrap_model(model)
    n_model = len(model.state_dict())
    missing = set(incompatible.missing_keys)
    loaded = n_model - len(missing)
    bad = len(incompatible.unexpected_keys) + len(incompatible.incorrect_shapes)
    if loaded > 0 and loaded >= bad:
        return None
    shapes = [f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes[:2]]
    return (
        f"only {max(loaded, 0)} of the model's {n_model} tensors could be loaded "
        f"({len(incompatible.unexpected_keys)} unexpected keys, e.g. {list(incompatible.unexpected_keys[:2])}; "
        f"{len(incompatible.incorrect_shapes)} shape mismatches{', e.g. ' + '; '.join(shapes) if shapes else ''})"
    )


# ---- loading a model's weights, with a report of what did not fit (a teacher, a pseudo-labeller)
def load_weights(
    model: nn.Module,
    weights: str,
    *,
    what: str,
    strict: bool = True,
    allow_pickle: bool = False,
    opt_in: Optional[str] = None,
) -> None:
    """Load ``weights`` with ``DetectionCheckpointer``; mismatches are an error unless not strict.

    ``opt_in``: how the caller's config allows full pickle, named when a file is refused
    (default: the LazyConfig keys, :data:`OPT_IN_TRAIN`).
    """
    if not weights:
        raise ValueError(f"{what}: no weights file given; a frozen random {what} teaches nothing")
    if not os.path.isfile(weights) and "://" not in weights:
        raise FileNotFoundError(f"{what} weights file not found: {weights}")
    # weights_only loading; full pickle only with allow_pickle (see the module docstring)
    checkpointer = ReportingCheckpointer(model, allow_pickle=allow_pickle, **({"opt_in": opt_in} if opt_in else {}))
    try:
        checkpointer.load(weights)
    except Exception as e:
        raise RuntimeError(f"{what} weights file {weights} could not be read ({type(e).__name__}: {e})") from e
    incompatible = checkpointer.incompatible
    if incompatible is None:
        raise RuntimeError(f"{what} weights file {weights} holds no model state")
    problems = []
    if incompatible.incorrect_shapes:
        shapes = ", ".join(f"{k}: file {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes[:3])
        problems.append(f"{len(incompatible.incorrect_shapes)} shape mismatches ({shapes})")
    if incompatible.missing_keys:
        problems.append(
            f"{len(incompatible.missing_keys)} missing keys (e.g. {incompatible.missing_keys[:3]})"
        )
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} unexpected keys (e.g. {incompatible.unexpected_keys[:3]})"
        )
    if problems:
        msg = f"{what} weights {weights} do not fit its config: " + "; ".join(problems)
        if strict:
            raise RuntimeError(msg + ". Check the config/weights pair (or pass strict=False).")
        logger.warning(msg)
