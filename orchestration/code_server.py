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
import os
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing import forkserver, popen_forkserver
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path

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


def _exit_code(pid: int) -> int | None:
    """``pid``'s exit code once it has exited (255 when unknown), None while it runs. A worker
    whose forkserver died is reparented to the container's first process (this server, where
    it is PID 1: reaped here) or to the host's init."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return 255
    return 255 if state == "Z" else None


class _WorkerPopen(popen_forkserver.Popen):
    """A run worker's handle that outlives the forkserver. The server learns a worker's exit
    from the forkserver, and Python reports every worker as exited (code 255) once the
    forkserver is gone (the OOM killer, a stray kill): Dagster's server would fail runs whose
    workers still run, and run retries would start them again beside them (an execution twice).
    Without the forkserver, a worker runs while its process does."""

    _orphaned = False

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None and not self._orphaned:
            if not wait([self.sentinel], 0 if flag == os.WNOHANG else None):
                return None
            try:
                self.returncode = forkserver.read_signed(self.sentinel)
            except (OSError, EOFError):
                self._orphaned = True
        while self.returncode is None:
            self.returncode = _exit_code(self.pid)
            if self.returncode is None and flag == os.WNOHANG:
                return None
            if self.returncode is None:
                time.sleep(0.5)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._orphaned or timeout is None:
            return super().wait(timeout)
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.returncode


class _WorkerProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: ForkServerProcess) -> _WorkerPopen:  # type: ignore[override]
        return _WorkerPopen(process_obj)


class RunWorkers(ForkServerContext):
    """The forkserver context whose processes are :class:`_WorkerPopen` handles."""

    Process = _WorkerProcess  # type: ignore[assignment]


def run_workers(preload: Sequence[str]) -> ForkServerContext:
    """The forkserver context, its server started now with ``preload`` imported, checked by
    forking one process from it (which also pays the first fork's set-up before any run)."""
    context = RunWorkers()
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
    probe.join(10)
    if probe.is_alive():
        probe.kill()
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
