"""The code location's gRPC server, its run workers forked from a preloaded process.

    python -m orchestration.code_server [--preload MODULE ...] -h 0.0.0.0 -p 4000 \\
        -m orchestration.definitions -a defs

Everything after our own ``--preload`` options is ``dagster api grpc``'s, and it is Dagster's own
server. Why it exists: with the DefaultRunLauncher the code server starts every run in a new
process, and Dagster 1.13 spawns it (a fresh interpreter): each run paid 3–4 s of imports and
~1 s loading the factor kernels from numba's cache before any work, twice on the evening's path
(``daily_job``, then ``execution_job``; README "Performance"). Here each run still gets its own
new process, isolated as before, but forked from a forkserver that imported
``orchestration.run_worker_preload`` once, when the server started.

The forkserver is a fresh interpreter of its own (not a fork of this server): it holds no gRPC
threads, connections or locks of the server. Python's forkserver skips a preload module that
raises ImportError without a word; the server refuses to start instead (a probe process, forked
before serving, reports what is missing with the import's traceback). The preload is read once
per server process: new code or new settings mean a new server (a container restart), which
starts a new forkserver (``dagster api grpc`` cannot reload code in place either).
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext

PRELOAD = ("orchestration.run_worker_preload",)


class PreloadError(RuntimeError):
    """A module of the run workers' preload did not import in the forkserver."""


def _report_preload(modules: Sequence[str], out: Connection) -> None:
    """In a forked run-worker process: each module the forkserver failed to preload, with the
    traceback of importing it here."""
    failures = {}
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
            failures[name] = "not imported by the forkserver (it imports here)"
        except BaseException:
            failures[name] = traceback.format_exc()
    out.send(failures)
    out.close()


def run_workers(preload: Sequence[str]) -> ForkServerContext:
    """The forkserver context, its server started now with ``preload`` imported, checked by
    forking one process from it (which also pays the first fork's set-up before any run)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    receive, send = context.Pipe(duplex=False)
    probe = context.Process(target=_report_preload, args=(list(preload), send),
                            name="run-worker-preload-probe")
    try:
        probe.start()
    except (OSError, EOFError) as exc:   # the forkserver died while preloading
        raise PreloadError(f"the run workers' forkserver exited while preloading {list(preload)} "
                           f"(its traceback is above): {exc!r}") from None
    send.close()
    try:
        failures = receive.recv() if receive.poll(600) else {"(probe)": "no answer in 600 s"}
    except EOFError:   # the probe died before answering
        failures = {"(probe)": f"exited with {probe.exitcode} before answering"}
    probe.join()
    if failures:
        raise PreloadError("the run workers' preload failed: " + "\n".join(
            f"{name}: {why}" for name, why in failures.items()))
    return context


def main(argv: Sequence[str]) -> None:
    from orchestration.dagster_private import serve_grpc

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--preload", action="append", metavar="MODULE",
                        help=f"a module every run worker starts with (default: {PRELOAD})")
    ours, dagster_args = parser.parse_known_args(argv)
    try:
        context = run_workers(ours.preload or PRELOAD)
    except PreloadError as exc:
        sys.exit(f"orchestration.code_server: {exc}")
    serve_grpc(dagster_args, context)


if __name__ == "__main__":
    main(sys.argv[1:])
