"""Alembic environment of the ledger (and the paper broker's book). Run through
:func:`trading.ledger.migrate`; the connection or URL comes from the caller."""

from alembic import context
from sqlalchemy import create_engine

config = context.config
# Own version table: the ledger may share a database with Dagster's storage, which keeps its own
# alembic_version.
VERSION_TABLE = "etf_ledger_alembic_version"


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=None,
                          version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("ledger migrations: no connection given and no sqlalchemy.url set")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None,
                          version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True,
                      version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
