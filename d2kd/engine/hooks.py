"""Trainer hooks d2kd adds to Detectron2's defaults."""
import logging
import os

from detectron2.engine import HookBase
from detectron2.utils import comm

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
        model = self.trainer.model
        model = getattr(model, "module", model)
        teacher = model.teacher.model
        results = self._evaluate(teacher)
        flat = {}
        for task, metrics in (results or {}).items():
            for name, value in metrics.items() if isinstance(metrics, dict) else []:
                flat[f"teacher/{task}/{name}"] = value
        if comm.is_main_process() and flat:
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
            logger.info("Teacher: %s", {k: round(v, 3) for k, v in flat.items() if "AP" in k})
        comm.synchronize()


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
        from ..export import export_student

        paths = export_student(self._cfg, final, os.path.join(out, "student"))
        logger.info("Exported the student for DefaultPredictor: %s", paths["predictor"])
