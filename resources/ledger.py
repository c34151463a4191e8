"""The PostgreSQL ledger as a Dagster resource: migrated and the account opened on first use."""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from trading.ledger import Ledger


class LedgerResource(dg.ConfigurableResource):
    """``url``: ``postgresql+psycopg://…`` (``ETF_POSTGRES_URL``); ``account_id`` the
    deployment's account, ``further_accounts`` the others (id → opening cash)."""

    url: str
    account_id: str = "paper-main"
    initial_cash: float = 1_000_000.0
    further_accounts: dict[str, float] = Field(default_factory=dict)
    retry_seconds: float = 30.0

    _ledger: Ledger | None = PrivateAttr(default=None)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            ledger = Ledger(self.url, retry_seconds=self.retry_seconds)
            ledger.migrate()
            for account_id, cash in {self.account_id: self.initial_cash,
                                     **self.further_accounts}.items():
                ledger.open_account(account_id, cash, actor="system:ledger")
            self._ledger = ledger
        return self._ledger

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._ledger is not None:
            self._ledger.dispose()
            self._ledger = None
