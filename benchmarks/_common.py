"""Helpers shared by the result scripts in benchmarks/ (not a benchmark itself).

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and
``import _common`` works without making benchmarks/ a package. Atomic writing, the machine
line and mean±std formatting live in :mod:`secagg.reporting`; here is only what is specific
to the scripts: the JSON form of their arguments, the IID client split of the CICIDS2017
tables, the "Measured ..." line and the run-every-task loop (a spawn process pool or in-process).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from secagg.detect import partition
from secagg.fl.core import ClientData
from secagg.reporting import machine_line


def args_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as a JSON-ready dict (paths as strings), recorded with every result."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def iid_clients(data: Any, n_clients: int, train_rows: int, seed: int,
                root_rows: int = 0) -> tuple[list[ClientData], np.ndarray]:
    """IID clients on a random subset of ``data``'s training rows, plus held-out root rows.

    The training rows are permuted with ``numpy.random.default_rng(seed)`` (a simulation
    choice, not key material); the first ``root_rows`` of the permutation are returned as
    indices (e.g. FLTrust's server root set), the next ``train_rows`` are partitioned IID
    over ``n_clients`` clients with :func:`secagg.detect.partition`.
    """
    idx = np.random.default_rng(seed).permutation(len(data.y_train))
    root_idx, train_idx = idx[:root_rows], idx[root_rows:root_rows + train_rows]
    X, y = data.X_train[train_idx], data.y_train[train_idx]
    clients = [ClientData(i, X[p], y[p]) for i, p in enumerate(partition(y, n_clients, "iid", seed=seed))]
    return clients, root_idx


def run_tasks(fn: Callable[[dict], dict], tasks: list[dict], jobs: int, bar: Any,
              describe: Optional[Callable[[dict], str]] = None) -> list[dict]:
    """``fn(task)`` for every task, in ``jobs`` spawned processes (``jobs > 1``) or in this one.

    Results come back in completion order; ``bar`` (tqdm) advances once per task and shows
    ``describe(task)`` for the task just finished (pool) or about to run (in-process).
    ``fn`` must be a module-level function so the pool can pickle it.
    """
    results: list[dict] = []
    if jobs > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(fn, t): t for t in tasks}
            for f in as_completed(futs):
                results.append(f.result())
                if describe is not None:
                    bar.set_postfix_str(describe(futs[f]))
                bar.update(1)
    else:
        for t in tasks:
            if describe is not None:
                bar.set_postfix_str(describe(t))
            results.append(fn(t))
            bar.update(1)
    return results


def measured_line(elapsed_s: float, quick: bool) -> str:
    """"Measured <UTC time>, <seconds> s [(--quick)]." followed by :func:`secagg.reporting.machine_line`."""
    return (f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed_s:.0f} s"
            + (" (--quick)" if quick else "") + ". " + machine_line())
