"""``DefaultTrainer`` driven by a LazyConfig file.

Detectron2's ``DefaultTrainer`` reads a yacs ``CfgNode``; its LazyConfig counterpart
(``tools/lazyconfig_train_net.py``) is a loose script. This keeps ``DefaultTrainer``'s whole
behaviour (hooks, checkpoint/resume of iteration + optimizer + scheduler, periodic evaluation,
writers with ETA, ``metrics.json``, TensorBoard) and only changes where each piece is read from:
``cfg.model``, ``cfg.optimizer``, ``cfg.lr_multiplier``, ``cfg.dataloader.{train,test,evaluator}``
and ``cfg.train``, the layout of Detectron2's own LazyConfig baselines.
"""
import copy
import inspect
import logging
import os
import weakref
from typing import Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from ..checkpoint import AtomicCheckpointer, init_checkpoint_fit
from ..runtime import unwrap_model
from .amp import AutocastTrainer, resolve_amp_dtype
from .hooks import DistillerScheduleCheck, ExportStudentHook, TeacherEvalHook
from .nonfinite import NonFiniteGuard
from .validate import ConfigError

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """A :class:`DefaultTrainer` whose ``cfg`` is a LazyConfig (``omegaconf.DictConfig``)."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        model = self.build_model(cfg)
        # Every loss term is checked before backward (see d2kd.engine.nonfinite).
        self.nonfinite = NonFiniteGuard(
            model,
            skip_kd_steps=cfg.train.get("skip_nonfinite_kd_steps", 0),
            output_dir=cfg.train.output_dir,
        )
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        ddp_kwargs = dict(cfg.train.ddp)
        if not next(model.parameters()).is_cuda:
            ddp_kwargs["device_ids"] = None  # CPU processes over gloo (--num-gpus N on CPU)
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(
            model,
            cfg.train.output_dir,
            allow_pickle=cfg.train.get("allow_pickle_checkpoints", False),
            trainer=weakref.proxy(self),
        )
        self.failure = None
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ---- builders: one per config section -------------------------------------------------
    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """The loop that runs one step: plain, or mixed precision per ``train.amp`` (see
        :mod:`d2kd.engine.amp`: Detectron2's ``AMPTrainer`` on CUDA, autocast on CPU)."""
        device_type = next(model.parameters()).device.type
        try:
            dtype = resolve_amp_dtype(cfg.train.get("amp", {}), device_type)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if dtype is None:
            return SimpleTrainer(model, data_loader, optimizer)
        logger.info("Mixed precision: the training forward runs under autocast(%s, %s)", device_type, dtype)
        if device_type == "cuda":
            return AMPTrainer(model, data_loader, optimizer, precision=dtype)
        return AutocastTrainer(model, data_loader, optimizer, device_type=device_type, dtype=dtype)

    @classmethod
    def build_model(cls, cfg):
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        logger.info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        try:
            optimizer = instantiate(cfg.optimizer)
        finally:
            cfg.optimizer.params.model = None  # keep the config serialisable
        max_norm = cfg.train.get("clip_grad_norm", 0.0) or 0.0
        if max_norm > 0:
            # Global-norm clipping (FGFI's reference clips at 10; LSHFM's NaN mitigation, §3.5),
            # with Detectron2's own optimizer wrapper, the one SOLVER.CLIP_GRADIENTS uses.
            from detectron2.solver.build import _generate_optimizer_class_with_gradient_clipping

            optimizer.__class__ = _generate_optimizer_class_with_gradient_clipping(
                type(optimizer),
                global_clipper=lambda params: torch.nn.utils.clip_grad_norm_(list(params), max_norm),
            )
        return optimizer

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=cfg.train.max_iter
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """``cfg.dataloader.train``; its ``mapper`` (if it has one) is wrapped so that an image
        that cannot be loaded fails with an error naming the file (see :class:`NamedErrorMapper`)."""
        dl = cfg.dataloader.train
        if not (hasattr(dl, "keys") and "mapper" in dl and "_target_" in dl):
            return instantiate(dl)
        from detectron2.utils.registry import locate

        target = dl._target_ if callable(dl._target_) else locate(dl._target_)
        kwargs = {k: instantiate(v) for k, v in dl.items() if k != "_target_"}
        kwargs["mapper"] = NamedErrorMapper(kwargs["mapper"])
        return target(**kwargs)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return instantiate(cfg.dataloader.test)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None):
        return cls._instantiate_evaluator(cfg, cfg.dataloader.evaluator)

    @classmethod
    def build_teacher_evaluator(cls, cfg):
        """The student's evaluator, asked for the tasks the teacher's predictions hold instead of
        the student's: a Mask R-CNN student's ``("bbox", "segm")`` failed inside pycocotools on a
        Faster R-CNN teacher's box-only predictions. Detectron2's ``COCOEvaluator`` infers the
        tasks from the predictions when given none."""
        evaluator = cfg.dataloader.evaluator
        if evaluator.get("tasks") is not None:
            evaluator = copy.deepcopy(evaluator)
            evaluator.tasks = None
        return cls._instantiate_evaluator(cfg, evaluator)

    @classmethod
    def _instantiate_evaluator(cls, cfg, evaluator):
        if "output_dir" not in evaluator and "train" in cfg:
            # COCOEvaluator caches the COCO-format json of non-COCO datasets (shapes) there.
            evaluator = copy.deepcopy(evaluator)
            evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
        return instantiate(evaluator)

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        model = unwrap_model(self.model)
        if hasattr(model, "distillers"):
            ret.append(DistillerScheduleCheck())  # first: its warning comes before any long work
        if hasattr(model, "teacher") and cfg.train.get("eval_teacher", False):
            ret.append(TeacherEvalHook(lambda teacher: self.test(cfg, teacher, self.build_teacher_evaluator(cfg))))
        if comm.is_main_process():
            ret.append(
                hooks.PeriodicCheckpointer(
                    self.checkpointer,
                    cfg.train.checkpointer.period,
                    max_iter=cfg.train.max_iter,
                    max_to_keep=cfg.train.checkpointer.get("max_to_keep"),
                )
            )

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        # Evaluation after checkpointing: if it fails, the checkpoint is there to debug with.
        ret.append(hooks.EvalHook(cfg.train.eval_period, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.train.log_period))
            ret.append(ExportStudentHook(cfg))
        return ret

    def build_writers(self):
        from detectron2.engine.defaults import default_writers

        return default_writers(self.cfg.train.output_dir, self.max_iter)

    # ---- checkpoint / evaluation -----------------------------------------------------------
    def resume_or_load(self, resume=True):
        """Resume from the newest complete checkpoint in ``output_dir`` (partial ``*.tmp.*``
        files are removed, an unreadable newest checkpoint falls back to the previous one), or
        load ``train.init_checkpoint``, which must fit the model (see
        :func:`d2kd.checkpoint.init_checkpoint_fit`; ``train.allow_partial_init=True`` to load
        a mostly-unfitting one anyway)."""
        init = self.cfg.train.init_checkpoint
        self.checkpointer.resumed_from = None
        self.checkpointer.resume_or_load(init, resume=resume, check=self._check_resume_fit)
        resumed = self.checkpointer.resumed_from is not None
        if resumed:
            self.start_iter = self.iter + 1
            logger.info("Resumed from %s at iteration %d", self.checkpointer.resumed_from, self.start_iter)
        elif init:
            problem = init_checkpoint_fit(self.model, self.checkpointer.incompatible)
            if problem and not self.cfg.train.get("allow_partial_init", False):
                raise ConfigError(
                    f"train.init_checkpoint {init} does not fit the model: {problem}; it is for a "
                    f"different architecture (pick the weights for this config, or set "
                    f"train.allow_partial_init=True to load the matching part anyway)"
                )

    def _check_resume_fit(self, path, checkpoint, incompatible):
        """A checkpoint in ``output_dir`` written by another model or method failed at its
        optimizer state ("parameter group" ValueError) or at the first step ("broadcast shape"):
        the model must fit it exactly, and the optimizer state must be for these parameters."""
        optimizer_state = (checkpoint.get("trainer") or {}).get("_trainer", {}).get("optimizer")
        problem = checkpoint_fit(self.model, incompatible, allow_unexpected=False) or (
            optimizer_state_fit(self.optimizer, optimizer_state, self.model) if optimizer_state else None
        )
        if problem:
            raise ConfigError(
                f"--resume: checkpoint {path} does not fit this config: {problem}; it was written by "
                f"another model or method (resume with the config that wrote it, or set a new "
                f"train.output_dir to start afresh)"
            )

    def state_dict(self):
        ret = super().state_dict()
        ret["nonfinite"] = self.nonfinite.state_dict()  # plain ints: loads under weights_only
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.nonfinite.load_state_dict(state_dict.get("nonfinite", {}))

    def train(self):
        """``TrainerBase.train``, except that after a failure the hooks that would write or
        evaluate (checkpoints, evaluation, export) do not run: the last good checkpoint stays
        the newest one. (DefaultTrainer.train would also read the yacs key
        TEST.EXPECTED_RESULTS afterwards.)"""
        start_iter, max_iter = self.start_iter, self.max_iter
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = start_iter
        self.failure = None
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                self.iter += 1
            except BaseException as e:
                self.failure = e
                if isinstance(e, Exception):
                    logger.exception("Exception during training:")
                raise
            finally:
                self.after_train()
        return getattr(self, "_last_eval_results", None)

    def after_train(self):
        if self.failure is None:
            return super().after_train()
        self.storage.iter = self.iter
        for h in self._hooks:
            if isinstance(h, SKIPPED_AFTER_FAILURE):
                continue
            h.after_train()

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ``model`` on ``cfg.dataloader.test`` with ``cfg.dataloader.evaluator``."""
        if "evaluator" not in cfg.dataloader:
            return {}
        evaluator = evaluators if evaluators is not None else cls.build_evaluator(cfg)
        results = inference_on_dataset(model, cls.build_test_loader(cfg), evaluator)
        if comm.is_main_process():
            print_csv_format(results)
        return results


def checkpoint_fit(model, incompatible, *, allow_unexpected: bool = True) -> Optional[str]:
    """``None`` if a loaded checkpoint gave ``model`` every tensor, each with its shape (what
    evaluating or resuming needs, unlike an init checkpoint: see
    :func:`d2kd.checkpoint.init_checkpoint_fit`); else why not, in a phrase. ``incompatible`` is
    the checkpointer's report. Tensors of the file that the model lacks are refused too unless
    ``allow_unexpected`` (resuming: the optimizer state would be for other parameters)."""
    if incompatible is None:
        return None
    model = unwrap_model(model)
    n_model = len(model.state_dict())

    def counted(keys):  # BatchNorm's step counter alone changes nothing
        return [k for k in keys if not k.endswith("num_batches_tracked")]

    shapes = list(incompatible.incorrect_shapes)
    wrong = {k for k, _, _ in shapes}
    missing = [k for k in counted(incompatible.missing_keys) if k not in wrong]
    unexpected = [] if allow_unexpected else counted(incompatible.unexpected_keys)
    if not (missing or shapes or unexpected):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {n_model} tensors are not in the file (e.g. {missing[:2]})")
    if shapes:
        eg = "; ".join(f"{k}: file {tuple(a)} vs model {tuple(b)}" for k, a, b in shapes[:2])
        parts.append(f"{len(shapes)} tensors have another shape (e.g. {eg})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors of the file are not in the model (e.g. {unexpected[:2]})")
    return ", ".join(parts)


def optimizer_state_fit(optimizer, state, model=None) -> Optional[str]:
    """``None`` if ``state`` (a saved ``optimizer.state_dict()``) can be loaded into ``optimizer``
    and stepped: as many parameter groups, of the same sizes, with per-parameter state
    (momentum, Adam moments) of each parameter's shape; else why not, in a phrase."""
    saved = state.get("param_groups", [])
    groups = optimizer.param_groups
    saved_sizes = [len(g["params"]) for g in saved]
    sizes = [len(g["params"]) for g in groups]
    if saved_sizes != sizes:
        return (
            f"its optimizer state has {len(saved)} parameter groups of {saved_sizes} parameters, the "
            f"optimizer {len(groups)} of {sizes}"
        )
    # Loading replaces each group's hyperparameters with the saved ones: another optimizer's
    # (AdamW's into SGD) failed at the first step with KeyError: 'momentum'.
    needed = [
        name for name, p in inspect.signature(type(optimizer).__init__).parameters.items()
        if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("self", "params") and name in groups[0]
    ] if groups else []
    lacking = [k for k in needed if any(k not in g for g in saved)]
    if lacking:
        return (
            f"its optimizer state is of another optimizer: its parameter groups lack {lacking}, which "
            f"{type(optimizer).__name__} needs"
        )
    names = {id(p): n for n, p in unwrap_model(model).named_parameters()} if model is not None else {}
    per_param = state.get("state", {})
    for index, param in zip((i for g in saved for i in g["params"]), (p for g in groups for p in g["params"])):
        for key, value in per_param.get(index, {}).items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                return (
                    f"its optimizer state '{key}' of parameter {names.get(id(param), index)} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )
    return None


class NamedErrorMapper:
    """A dataset mapper whose failures name the image (PIL says e.g. only "Truncated File Read")."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except Exception as e:
            name = dataset_dict.get("file_name", "?") if isinstance(dataset_dict, dict) else "?"
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ImageLoadError(
                f"cannot load training image {name}: {type(e).__name__}: {first}; fix or remove "
                f"the file (or its record in the dataset)"
            ) from e

    def __getattr__(self, name):  # the wrapped mapper's attributes (safe while unpickling)
        mapper = self.__dict__.get("mapper")
        if mapper is None:
            raise AttributeError(name)
        return getattr(mapper, name)


class ImageLoadError(RuntimeError):
    """A training image (or its annotation) cannot be loaded; the message names the file."""


#: Hooks whose ``after_train`` writes or evaluates: not run after a failed step.
SKIPPED_AFTER_FAILURE = (hooks.PeriodicCheckpointer, hooks.EvalHook, ExportStudentHook)
