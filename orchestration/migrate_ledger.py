"""`python -m orchestration.migrate_ledger`: bring the ledger schema to head as its owner.

The deploy's one-shot migrate step (compose: the ``ledger-migrate`` service; Kubernetes: the
``ledger-migrate`` init container of the code location). It connects with ``ledger_admin_url``
(ETF_LEDGER_ADMIN_URL: a login role that is a member of ``etf_ledger_owner``), because the
application's own URL (ETF_POSTGRES_URL: a member of ``etf_ledger_writer``) may not alter the
schema. Without ETF_LEDGER_ADMIN_URL it migrates with ETF_POSTGRES_URL (one all-powerful URL,
as the application itself does on first use then). Exit status 0 once the schema is at head.
"""

from __future__ import annotations

import sys

import sqlalchemy as sa

from orchestration.settings import SettingsError, load_settings
from trading.ledger import LedgerError, migrate


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"migrate_ledger: {exc}", file=sys.stderr)
        return 2
    url = settings.ledger_admin_url or settings.postgres_url
    if not url:
        print("migrate_ledger: set ETF_LEDGER_ADMIN_URL (the ledger owner's login, "
              "postgresql+psycopg://owner:…@host:5432/ledger) or ETF_POSTGRES_URL",
              file=sys.stderr)
        return 2
    try:
        migrate(url)
    except LedgerError as exc:
        print(f"migrate_ledger: {exc}", file=sys.stderr)
        return 1
    except sa.exc.DBAPIError as exc:
        # The migration's own refusals (e.g. the group roles are missing and this role may not
        # create them) say what to do; the SQL around them does not help.
        print(f"migrate_ledger: the migration was refused: {exc.orig}", file=sys.stderr)
        return 1
    print("migrate_ledger: the ledger schema is at head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
