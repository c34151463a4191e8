"""Dagster-free computation for the ETF rotation platform.

Everything here is plain Python over pandas/numpy frames so it can be tested, benchmarked and
reused without an orchestrator. The Dagster layer (``assets``, ``resources``) stays thin.
"""
