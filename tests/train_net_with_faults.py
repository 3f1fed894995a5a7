#!/usr/bin/env python3
"""``train_net.py`` with the faults of ``tests/fault_injection.py`` that the environment names.

    D2KD_TEST_FAULT_AT_ITER=2 D2KD_TEST_FAULT_RANK=1 python3 tests/train_net_with_faults.py ARGS...

takes the same arguments as ``train_net.py``. The faults are installed in this process and in
every worker that ``--num-gpus N`` starts: multiprocessing's spawn start method runs this file
again in each worker (as ``__mp_main__``, with this process's ``sys.path`` and environment)
before the worker unpickles and calls ``train_net.main``.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):  # train_net.py (repository root), fault_injection.py
    if path not in sys.path:
        sys.path.insert(0, path)

import fault_injection  # noqa: E402
import train_net  # noqa: E402

fault_injection.install_from_environment()

if __name__ == "__main__":
    train_net.cli()
