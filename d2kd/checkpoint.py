"""A ``DetectionCheckpointer`` that never leaves a partial checkpoint behind.

fvcore writes ``model_XXXX.pth`` in place and then rewrites ``last_checkpoint``: a process
killed mid-write leaves a truncated file that ``--resume`` would pick up. Here both files are
written to a temporary name, flushed to disk and renamed into place (``os.replace`` is atomic
on POSIX), so ``last_checkpoint`` only ever names a complete file.
"""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicCheckpointer(DetectionCheckpointer):
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


class ReportingCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer.load`` that keeps its report of incompatible keys
    (``self.incompatible``), and can drop keys by prefix before loading (a distillation
    checkpoint's ``distillers.`` adapters, when loading it into the plain student)."""

    def __init__(self, model, *, drop_prefixes=(), **kwargs):
        super().__init__(model, **kwargs)
        self.drop_prefixes = tuple(drop_prefixes)
        self.incompatible = None

    def _load_model(self, checkpoint):
        if self.drop_prefixes:
            checkpoint["model"] = {
                k: v for k, v in checkpoint["model"].items() if not k.startswith(self.drop_prefixes)
            }
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible
