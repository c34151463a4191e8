"""What every run worker of the code server starts with: imported once, by the run workers'
forkserver (``orchestration/code_server.py``), never by a run.

Its import is the preload: the modules a run worker of either code location imports (Dagster,
dagster-postgres and the instance's storage, pandas, pyarrow, numba, the code location's own
modules), the factor kernels' machine code, loaded from numba's on-disk cache for the types of
a tiny panel (compiled, not run), and the settings' exchange calendar (built from the exchange's
rules, cached by name and start: a worker whose settings name another one builds that one).
Each forked worker then starts with all of it in memory.

Fork safety (the forkserver forks after this import): nothing here opens a connection, starts a
Python thread or runs a kernel. numba's threading layer (GNU OpenMP here), which does not survive
a fork, must not be launched: loading a parallel (``prange``) kernel launches it, so the factor
kernels are serial (``compute_factors`` runs factors on threads in the run) and are only loaded
here; the import fails if the layer was launched, or if a Python thread was started. The only
other threads are the libraries' own idle workers, which have fork handlers (OpenBLAS's thread
servers of numpy and scipy, jemalloc's background thread of pyarrow), as in any process that
imports them. tests/test_code_server.py checks the forkserver has no more threads than such a
process and no TCP connection. The code location's definitions are not built here: they read
the settings and the market data when the run starts, as with spawned workers (README
"Performance").
"""

from __future__ import annotations

import sys
import threading

import dagster_postgres  # noqa: F401  (the instance's storage: every run worker opens it)
import numba
import numpy as np
import pyarrow.parquet  # noqa: F401  (the IO manager's files)
from numba.np.ufunc import parallel

import orchestration.dagster_storage  # the instance's storage class (deploy/dagster.prod.yaml)
import orchestration.definitions  # noqa: F401  (the code location: assets, jobs, resources)
from orchestration.settings import load_settings
from rotation.calendar import get_calendar
from rotation.factors.registry import KERNELS, KernelInfo

# Rows × funds of the panel the kernels are called on: its values do not matter, only the types
# (2-D C-contiguous float64 panels, int64/float64 parameters) that pick the cached machine code.
_WARM_SHAPE = (8, 2)


def _warm_arguments(info: KernelInfo) -> list[object]:
    panel = np.linspace(1.0, 2.0, _WARM_SHAPE[0] * _WARM_SHAPE[1]).reshape(_WARM_SHAPE)
    params = [p.kind(p.default if p.default is not None else p.minimum or 1)
              for p in info.params]
    return [np.ascontiguousarray(panel) for _ in info.inputs] + params


def load_factor_kernels() -> int:
    """Every registered factor kernel compiled or loaded for the panels' types, not run (a
    parallel kernel's first run would launch numba's threading layer); how many."""
    for info in KERNELS.values():
        info.func.compile(tuple(numba.typeof(a) for a in _warm_arguments(info)))
    return len(KERNELS)


def load_calendar() -> None:
    """The exchange calendar of this process's settings (the server's: the forkserver has its
    environment; its sessions reach a year past the server's start, as the server's own
    calendar). Invalid settings load nothing here: the run reports them, as without it."""
    try:
        settings = load_settings()
    except Exception as exc:
        print(f"run-worker preload: no calendar preloaded ({exc})", file=sys.stderr)
        return
    get_calendar(settings.calendar, settings.calendar_start)


def check_fork_safe() -> None:
    """Raise if this process holds what a forked child does not survive."""
    if threading.active_count() != 1:
        raise RuntimeError(f"the run-worker preload started threads: {threading.enumerate()}")
    if parallel._is_initialized:
        raise RuntimeError("the run-worker preload launched numba's threading layer, which a "
                           "forked run worker cannot use")


KERNELS_LOADED = load_factor_kernels()
load_calendar()
check_fork_safe()
