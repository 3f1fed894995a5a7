"""Trainer hooks d2kd adds to Detectron2's defaults."""
import logging
import os
import time

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..distill.base import kd_loss_key
from ..export import export_student
from ..runtime import unwrap_model

logger = logging.getLogger(__name__)


class TeacherEvalHook(HookBase):
    """Evaluate the teacher once before training and log its metrics as ``teacher/<metric>``,
    so every run's ``metrics.json`` shows teacher and student AP side by side."""

    def __init__(self, evaluate):
        """``evaluate(model) -> dict`` (the trainer's test function)."""
        self._evaluate = evaluate

    def before_train(self):
        if self.trainer.start_iter > 0:
            return  # resumed: the teacher was evaluated when the run started
        teacher = unwrap_model(self.trainer.model).teacher.model
        start = time.perf_counter()
        results = self._evaluate(teacher)
        took = time.perf_counter() - start
        flat = {}
        for task, metrics in (results or {}).items():
            for name, value in metrics.items() if isinstance(metrics, dict) else []:
                flat[f"teacher/{task}/{name}"] = value
        if comm.is_main_process():
            if flat:
                self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
            # A short run can spend most of its time evaluating: say so.
            headline = {k: round(v, 3) for k, v in flat.items() if k.rsplit("/", 1)[-1] in ("AP", "AP50", "AP75")}
            logger.info(
                "Teacher evaluated before training in %s (skip this with train.eval_teacher=False): %s",
                _minutes(took), headline,
            )
        comm.synchronize()


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class DistillerScheduleCheck(HookBase):
    """Warn, before training, about every distiller whose schedule keeps it off for the whole
    run (e.g. a 100-iteration warm-up in a 20-iteration run): its KD terms would be 0 at every
    step, and nothing else would say so."""

    def before_train(self):
        model = unwrap_model(self.trainer.model)
        start, end = self.trainer.start_iter, self.trainer.max_iter
        if start >= end or not comm.is_main_process():
            return
        for i, d in enumerate(getattr(model, "distillers", ())):
            schedule = d.schedule
            if schedule.first_on(start, end) is not None:
                continue
            what = f"{type(d).__name__} (distillers.{i}, {kd_loss_key(d.name, '*')})"
            if schedule.stop_after is not None and schedule.stop_after <= max(start, schedule.warmup_iters):
                logger.warning(
                    "%s is off for this whole run: its schedule stopped at iteration %d "
                    "(stop_after) and this run trains iterations %d-%d; its KD terms will be 0",
                    what, schedule.stop_after, start, end - 1,
                )
            else:
                logger.warning(
                    "%s is off for this whole run: its warm-up lasts %d iterations "
                    "(schedule.warmup_iters=%d) but the run ends at train.max_iter=%d; its KD terms "
                    "will be 0 at every step. Raise train.max_iter above %d or lower "
                    "model.distillers.%d.schedule.warmup_iters",
                    what, schedule.warmup_iters, schedule.warmup_iters, end, schedule.warmup_iters, i,
                )


class ExportStudentHook(HookBase):
    """After training, write the student-only model for ``DefaultPredictor`` into
    ``<output_dir>/student`` (see :mod:`d2kd.export`)."""

    def __init__(self, cfg):
        self._cfg = cfg

    def after_train(self):
        if not comm.is_main_process():
            return
        out = self._cfg.train.output_dir
        final = os.path.join(out, "model_final.pth")
        if self.trainer.iter + 1 < self.trainer.max_iter or not os.path.isfile(final):
            return  # stopped early: nothing final to export
        paths = export_student(self._cfg, final, os.path.join(out, "student"))
        logger.info("Exported the student for DefaultPredictor: %s", paths["predictor"])

