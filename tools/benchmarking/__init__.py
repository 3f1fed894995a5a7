"""The embedded KD benchmark's harness (``tools/benchmark.py``, ``tools/learning_curves.py``,
``tools/model_cost.py``): the experiment table, the job scheduler and its resume, the time
estimate, the measurements, the results and plots.

It belongs to the tools, not to the installed ``d2kd`` package: a script in tools/ imports it as
``benchmarking`` (Python puts the script's folder first on ``sys.path``); the benchmark's
measurement jobs run ``python -m benchmarking.measure`` with tools/ on ``PYTHONPATH``.
"""
