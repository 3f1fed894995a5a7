"""A 2-process CPU run (gloo) where one process raises: the whole job ends with the error in
one line, promptly, instead of the other process waiting forever in a collective."""
import os
import time

import pytest
from conftest import D2_MISSING, TINY, TINY_2PROC, run_train_net
from fault_injection import TRAIN_NET_WITH_FAULTS, fault_env

pytest.importorskip("detectron2", reason=D2_MISSING)


def test_one_failing_process_ends_the_job(tmp_path):
    start = time.time()
    proc = run_train_net(
        ["--config-file", "configs/shapes/retinanet_student.py", "--num-gpus", "2", *TINY_2PROC,
         "train.max_iter=50", "train.checkpointer.period=100", f"train.output_dir={tmp_path}"],
        timeout=240,  # a hang fails the test here (subprocess.TimeoutExpired)
        env=fault_env(at_iter=2, rank=1),  # installed in both spawned workers
        script=TRAIN_NET_WITH_FAULTS,
    )
    elapsed = time.time() - start
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "train_net.py: error: process 1 of 2 failed: fault_injection.InjectedFault: injected fault "
        "at iteration 2 on rank 1 (D2KD_TEST_FAULT_AT_ITER)"
    )
    # rank 0 was stopped, not left to finish its 50 iterations or to write a final checkpoint
    assert not os.path.exists(tmp_path / "model_final.pth")
    print(f"2-process fault ended the job in {elapsed:.1f} s")
