"""Execution side of the platform (SPEC §9), free of Dagster: the PostgreSQL ledger and its
Alembic migrations, the execution-venue interface with the paper broker and TWAP, and the
signal executor. Dagster resources in :mod:`resources` wrap these classes."""
