"""A module that fails on import with something other than ImportError: the run-worker preload
of tests/test_code_server.py that kills Python's forkserver."""

raise RuntimeError("broken_preload: raised on import on purpose")
