"""Faults the reliability tests inject into a real training run, from the outside.

d2kd itself has no test switches: this module patches them in. Two faults:

* :func:`install_fault`: the trainer raises :class:`InjectedFault` at one iteration (on one rank,
  or on every rank), to check that a failing process ends a multi-process job instead of leaving
  the others waiting in a collective;
* :func:`install_checkpoint_delay`: every checkpoint write sleeps between its complete temporary
  file and the rename into place, so that a test can kill the process exactly while a
  checkpoint is being written.

A run in a subprocess gets them through :data:`TRAIN_NET_WITH_FAULTS` (``train_net.py`` with
:func:`install_from_environment` called first, in the parent process and in every worker that
``--num-gpus N`` spawns) and the environment variables that :func:`fault_env` returns.
"""
import logging
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: ``train_net.py`` with the faults named in the environment installed (see the module docstring).
TRAIN_NET_WITH_FAULTS = os.path.join(REPO, "tests", "train_net_with_faults.py")

#: Raise at this iteration (on the rank in ``FAULT_RANK_ENV``, default every rank).
FAULT_AT_ITER_ENV = "D2KD_TEST_FAULT_AT_ITER"
FAULT_RANK_ENV = "D2KD_TEST_FAULT_RANK"
#: Seconds every checkpoint write sleeps before its rename.
CHECKPOINT_DELAY_ENV = "D2KD_TEST_CHECKPOINT_DELAY"
#: Every variable above: none of them is read by the package (tests/test_no_test_switches.py).
ENV_NAMES = (FAULT_AT_ITER_ENV, FAULT_RANK_ENV, CHECKPOINT_DELAY_ENV)

logger = logging.getLogger("d2kd.tests.fault_injection")  # under "d2kd": in the run's own log


class InjectedFault(RuntimeError):
    """The error :func:`install_fault` makes the trainer raise."""


def fault_env(*, at_iter=None, rank=None, checkpoint_delay=None) -> dict:
    """Environment variables for :data:`TRAIN_NET_WITH_FAULTS` that switch the given faults on."""
    env = {}
    if at_iter is not None:
        env[FAULT_AT_ITER_ENV] = str(int(at_iter))
    if rank is not None:
        env[FAULT_RANK_ENV] = str(int(rank))
    if checkpoint_delay:
        env[CHECKPOINT_DELAY_ENV] = str(float(checkpoint_delay))
    return env


def install_from_environment(environ=None) -> None:
    """Install the faults named in ``environ`` (default ``os.environ``)."""
    environ = os.environ if environ is None else environ
    at = environ.get(FAULT_AT_ITER_ENV, "")
    if at:
        rank = environ.get(FAULT_RANK_ENV, "")
        install_fault(int(at), int(rank) if rank else None)
    delay = float(environ.get(CHECKPOINT_DELAY_ENV, "0") or 0)
    if delay > 0:
        install_checkpoint_delay(delay)


def _hook_class():
    from detectron2.engine import HookBase
    from detectron2.utils import comm

    class FaultInjectionHook(HookBase):
        def __init__(self, iteration: int, rank=None):
            self.iteration = iteration
            self.rank = rank

        def before_step(self):
            if self.trainer.iter == self.iteration and (self.rank is None or comm.get_rank() == self.rank):
                raise InjectedFault(
                    f"injected fault at iteration {self.iteration} on rank {comm.get_rank()} ({FAULT_AT_ITER_ENV})"
                )

    return FaultInjectionHook


def install_fault(iteration: int, rank=None) -> None:
    """Every :class:`d2kd.engine.Trainer` built from now on (in this process) raises
    :class:`InjectedFault` before step ``iteration`` on ``rank`` (``None``: every rank)."""
    from detectron2.engine import hooks

    from d2kd.engine.trainer import Trainer

    hook_class = _hook_class()
    build_hooks = Trainer.build_hooks

    def build_hooks_with_fault(self):
        ret = build_hooks(self)
        # Where the trainer's own hooks end and the writing ones (checkpoints, evaluation,
        # logging) begin: the fault comes before any of them sees the step.
        at = next((i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))), len(ret))
        logger.warning("Fault injection on: raise at iteration %d on rank %s", iteration, "every" if rank is None else rank)
        return ret[:at] + [hook_class(iteration, rank)] + ret[at:]

    Trainer.build_hooks = build_hooks_with_fault


def install_checkpoint_delay(seconds: float) -> None:
    """Every checkpoint write (``d2kd.checkpoint``'s atomic write: temporary file, then rename)
    sleeps ``seconds`` once its temporary file is complete on disk, before the rename."""
    from d2kd import checkpoint

    atomic_write = checkpoint._atomic_write  # AttributeError here if it was renamed: fail loudly

    def write_then_wait(path, write):
        def write_and_sleep(f):
            write(f)
            f.flush()
            os.fsync(f.fileno())  # what the writer does next: the temporary file is complete
            logger.warning("Fault injection on: %s is written, renamed into place in %.1f s", path, seconds)
            time.sleep(seconds)

        return atomic_write(path, write_and_sleep)

    checkpoint._atomic_write = write_then_wait
