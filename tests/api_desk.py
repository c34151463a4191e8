"""A desk for the API tests: a scratch ledger database with an account, signals, orders and a
fill, one user per role, and settings on the real PostgreSQL and Redis."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import PG_SERVER, TEST_CACHE_SECRET, scratch_database

from api import security
from api.__main__ import create_admin
from api.permissions import ROLES, Role
from api.store import Audit, UserStore
from orchestration.settings import Settings, load_settings
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.models import Fill, OrderStatus, Side, SignalStatus, order_id_of, signal_id_of
from trading.models import weights_hash as hash_of_weights

REDIS_URL = os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
# Test-only signing key (the API refuses none in prod and generates one locally).
JWT_SECRET = "desk-api-tests-" + "0" * 32
PASSWORD = "correct horse battery staple"
SIGNAL_DAY = dt.date(2024, 3, 4)
SESSION = dt.date(2024, 3, 5)


def desk_settings(home: Path, database: str, **api: object) -> Settings:
    return load_settings(home=home, postgres_url=f"postgresql+psycopg://{PG_SERVER}/{database}",
                         redis_url=REDIS_URL, cache_secret=TEST_CACHE_SECRET,
                         api={"jwt_secret": JWT_SECRET, **api})


@dataclass(frozen=True)
class Desk:
    settings: Settings
    database: str
    run: str                       # unique per run: Redis rate-limit keys never collide
    account: str
    approved: SignalRecord
    rejected: SignalRecord
    order: OrderRecord

    def username(self, role: Role) -> str:
        return f"{role.value}-{self.run}"

    def token(self, role: Role, lifetime: dt.timedelta = dt.timedelta(minutes=5)) -> str:
        """A fresh access token of the role's user (as /auth/token issues them)."""
        token, _ = security.issue_access_token(JWT_SECRET, self.username(role), role.value,
                                               lifetime)
        return token

    def headers(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    def ledger(self) -> Ledger:
        assert self.settings.postgres_url is not None
        return Ledger(self.settings.postgres_url)


def _signal(account: str, weights: dict[str, float], status: SignalStatus,
            reasons: list[dict[str, str]]) -> SignalRecord:
    return SignalRecord(
        signal_id=signal_id_of("etf_rotation_sample", account, SIGNAL_DAY, weights),
        account_id=account, strategy="etf_rotation_sample", as_of=SIGNAL_DAY, weights=weights,
        weights_hash=hash_of_weights(weights), status=status, reasons=reasons,
        data_version="dv-1", dagster_run_id="run-1")


def _seed_ledger(ledger: Ledger, account: str) -> tuple[SignalRecord, SignalRecord, OrderRecord]:
    ledger.open_account(account, 1_000_000.0, actor="test")
    approved = ledger.record_signal(_signal(account, {"510300": 0.6, "159915": 0.4},
                                            SignalStatus.APPROVED, []), actor="gate")
    rejected = ledger.record_signal(_signal(
        account, {"510300": 1.0}, SignalStatus.REJECTED,
        [{"layer": "instrument", "rule": "max_weight", "subject": "510300",
          "message": "weight 1.00 above the 0.60 cap"}]), actor="gate")
    order = OrderRecord(
        order_id=order_id_of(approved.signal_id, "510300", Side.BUY), signal_id=approved.signal_id,
        account_id=account, symbol="510300", side=Side.BUY, quantity=1000, reference_price=3.5,
        session=SESSION)
    ledger.record_orders([order], actor="test")
    ledger.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="test",
                        venue_order_id="v-1")
    ledger.record_fill(Fill(fill_id=f"f-{account}", client_order_id=order.order_id,
                            account_id=account, symbol="510300", side=Side.BUY, quantity=1000,
                            price=3.51, commission=5.0, session=SESSION,
                            filled_at=dt.datetime(2024, 3, 5, 9, 30, tzinfo=dt.UTC)),
                       actor="test")
    return approved, rejected, order


@contextmanager
def desk(home: Path, **api: object) -> Iterator[Desk]:
    """A migrated scratch ledger with seed data and one user per role (the admin made by the
    create-admin command, the others by the store as POST /users makes them)."""
    run = uuid.uuid4().hex[:8]
    with scratch_database("etf_api") as database:
        settings = desk_settings(home, database, **api)
        create_admin(settings, f"admin-{run}", PASSWORD)
        ledger = Ledger(f"postgresql+psycopg://{PG_SERVER}/{database}")
        try:
            approved, rejected, order = _seed_ledger(ledger, f"acct-{run}")
            store = UserStore(ledger)
            for role in ROLES:
                if role is not Role.ADMIN:
                    store.create_user(f"{role.value}-{run}", security.hash_password(PASSWORD),
                                      role, Audit(actor="test", action="user_created",
                                                  entity="api_user",
                                                  entity_id=f"{role.value}-{run}",
                                                  reason="test desk", details={}))
        finally:
            ledger.dispose()
        yield Desk(settings=settings, database=database, run=run, account=f"acct-{run}",
                   approved=approved, rejected=rejected, order=order)
