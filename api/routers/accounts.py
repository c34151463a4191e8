"""An account's fills, positions, cash and kill switch, from the ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api import results
from api.deps import CurrentSession, PageParams, Session, State, authorize
from api.paging import page_from, page_of
from api.permissions import V1
from api.schemas import (
    PLAIN_TEXT,
    SIGNED_IN_RESPONSES,
    AccountIntraday,
    AccountLimits,
    AccountPnl,
    CashOut,
    FillOut,
    IntradayPositionOut,
    KillSwitchChange,
    KillSwitchOut,
    LayerLimits,
    LimitUseOut,
    Page,
    PnlSession,
    PositionOut,
    text_filter,
)
from api.store import Audit
from rotation.compliance_report import latest_limit_use
from rotation.risk import LAYERS
from trading.ledger import LedgerError, Position
from trading.live_prices import DEFAULT_MAX_AGE, intraday_pnl, session_trades_pnl
from trading.models import Fill, Side

AccountId = Annotated[str, Path(min_length=1, max_length=200, pattern=PLAIN_TEXT)]
NOT_OPEN: dict[int | str, dict[str, Any]] = {
    404: {"description": "The account is not open in the ledger"}}


def open_account(account_id: AccountId, state: State) -> str:
    """The account id of a path, 404 unless the ledger has opened it."""
    try:
        state.ledger.initial_cash(account_id)
    except LedgerError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None
    return account_id


Account = Annotated[str, Depends(open_account)]
router = APIRouter(prefix=f"{V1}/accounts/{{account_id}}", tags=["accounts"],
                   dependencies=[Depends(authorize)],
                   responses={**SIGNED_IN_RESPONSES, **NOT_OPEN})


def fill_out(fill: Fill) -> FillOut:
    return FillOut(fill_id=fill.fill_id, order_id=fill.client_order_id,
                   account_id=fill.account_id, symbol=fill.symbol, side=fill.side.value,
                   quantity=fill.quantity, price=fill.price, commission=fill.commission,
                   session=fill.session, filled_at=fill.filled_at)


@router.get("/fills", summary="Fills, most recent first")
def list_fills(account_id: Account, state: State, paging: PageParams,
               signal_id: Annotated[str | None, text_filter(200)] = None,
               symbol: Annotated[str | None, text_filter(50)] = None,
               side: Annotated[Side | None, Query()] = None,
               session: Annotated[dt.date | None, Query()] = None) -> Page[FillOut]:
    found = state.ledger.fills_page(account_id, signal_id=signal_id, symbol=symbol, side=side,
                                    session=session, limit=paging.limit, offset=paging.offset)
    return page_from(found, paging, fill_out)


def position_out(position: Position) -> PositionOut:
    return PositionOut(symbol=position.symbol, quantity=position.quantity, cost=position.cost)


@router.get("/positions", summary="Open positions, by symbol")
def list_positions(account_id: Account, state: State, paging: PageParams,
                   symbol: Annotated[str | None, text_filter(50)] = None
                   ) -> Page[PositionOut]:
    positions = [p for p in state.ledger.positions(account_id).values()
                 if symbol is None or p.symbol == symbol]
    return page_of(positions, paging, position_out)


@router.get("/cash", summary="The cash balance and the cash the account opened with")
def cash(account_id: Account, state: State) -> CashOut:
    return CashOut(account_id=account_id, balance=state.ledger.cash(account_id),
                   initial_cash=state.ledger.initial_cash(account_id))


@router.get("/pnl", summary="Daily equity and P&L of the paper book beside the backtest's "
            "equity for the same approved signals, with the parity status",
            description="The ledger's valuations (written by positions_report each session) "
            "and the backtest engine's equity positions_report stored for the account this "
            "deployment trades; another account's sessions carry no backtest figure.")
def pnl(account_id: Account, state: State, since: Annotated[dt.date | None, Query()] = None,
        until: Annotated[dt.date | None, Query()] = None) -> AccountPnl:
    initial = state.ledger.initial_cash(account_id)
    frame = results.paper_against_backtest(state.settings, account_id,
                                           state.ledger.valuations(account_id))
    frame = results.between(frame, results.as_timestamp(since), results.as_timestamp(until))
    differences = frame["difference"].abs().dropna()
    worst = float(differences.max()) if len(differences) else None
    tolerance = state.settings.execution.parity_tolerance
    return AccountPnl(
        account_id=account_id, initial_cash=initial, parity_tolerance=tolerance,
        max_abs_difference=worst,
        within_tolerance=None if worst is None else worst <= tolerance,
        sessions=[PnlSession(date=day.date(), cash=float(row["cash"]),
                             positions_value=float(row["positions_value"]),
                             equity=float(row["equity"]), pnl=float(row["equity"]) - initial,
                             backtest_equity=results.finite_or_none(row["backtest_equity"]),
                             difference=results.finite_or_none(row["difference"]))
                  for day, row in frame.iterrows()])


@router.get("/intraday", summary="The book's P&L in today's session at live prices",
            description="Each position marked at its fund's fresh live price (the quote "
            "relay's, at most max_age_seconds old) else at its previous close, against the "
            "previous close; plus today's fills against the previous close. Which price "
            "marked each fund, and how old it is, is in the answer.")
def intraday(account_id: Account, state: State) -> AccountIntraday:
    # Imported here: the market data and the deployment's strategy are read by this route only.
    from orchestration.intraday import intraday_inputs

    inputs = intraday_inputs(state.settings)
    now, market, previous, live = inputs.now, inputs.market, inputs.previous_close, inputs.live
    held = {s: p.quantity for s, p in state.ledger.positions(account_id).items()}
    at, session = now.to_pydatetime(), now.date()
    try:
        trades = session_trades_pnl(state.ledger.fills(account_id), previous, session)
        book = intraday_pnl(held, previous, live, trades, now=at, max_age=DEFAULT_MAX_AGE)
    except ValueError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    positions = []
    for symbol in sorted(held):
        mark = book.marks[symbol]
        positions.append(IntradayPositionOut(
            symbol=symbol, units=int(held[symbol]), previous_close=previous[symbol],
            price=mark.price, source="live" if mark.source == "live" else "close",
            price_at=mark.at, age_seconds=(at - mark.at).total_seconds() if mark.at else None,
            pnl=book.unrealised[symbol]))
    return AccountIntraday(
        account_id=account_id, at=at, session=session, market=market,
        max_age_seconds=DEFAULT_MAX_AGE.total_seconds(), positions=positions,
        unrealised=sum(book.unrealised.values()), trades=trades, total=book.total,
        stale=list(book.stale))


@router.get("/limits", summary="The use of every risk limit, by layer, in the newest daily "
            "compliance report", description="risk_compliance_report's limit use of its "
            "newest session (value against limit, utilisation, ok / breach), grouped by the "
            "risk layer that checks each limit; before the first report, no figures and a "
            "note saying so. 404 for an account this deployment does not trade.")
def limits(account_id: Account, state: State) -> AccountLimits:
    if account_id not in results.deployment_accounts(state.settings):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=(
            f"account_id: {account_id!r} is not traded by this deployment, so it has no "
            "compliance report"))
    document = latest_limit_use(state.settings.resolved_storage_root, account_id)
    if document is None:
        return AccountLimits(
            account_id=account_id, session=None, generated_at=None, breaches=0,
            layers=[LayerLimits(layer=layer, limits=[]) for layer in LAYERS],
            note=f"No risk and compliance report of {account_id} yet: "
                 "risk_compliance_report writes one after each session.")
    uses: list[dict[str, Any]] = document["limits"]
    return AccountLimits(
        account_id=account_id, session=document["session"],
        generated_at=document["generated_at"], note=None,
        breaches=sum(u["status"] == "breach" for u in uses),
        layers=[LayerLimits(layer=layer, limits=[
            LimitUseOut(**{k: v for k, v in u.items() if k != "layer"})
            for u in uses if u["layer"] == layer]) for layer in LAYERS])


def _kill_switch(state: State, account_id: str) -> KillSwitchOut:
    switch = state.ledger.kill_switch(account_id)
    return KillSwitchOut(account_id=account_id, engaged=switch.engaged, reason=switch.reason,
                         actor=switch.actor, at=switch.at)


@router.get("/kill-switch", summary="The kill switch of the account")
def kill_switch(account_id: Account, state: State) -> KillSwitchOut:
    return _kill_switch(state, account_id)


def _set_kill_switch(state: State, session: Session, account_id: str, engaged: bool,
                     reason: str) -> KillSwitchOut:
    before = state.ledger.kill_switch(account_id).engaged
    # The ledger writes its own audit row when the state changes (as kill_switch_job does).
    state.ledger.set_kill_switch(account_id, engaged, actor=session.actor, reason=reason)
    action = "kill_switch.engage" if engaged else "kill_switch.release"
    state.users.audit(Audit(actor=session.actor, action=action, entity="kill_switch",
                            entity_id=account_id, reason=reason,
                            details={"previously_engaged": before}))
    return _kill_switch(state, account_id)


@router.post("/kill-switch/engage", summary="Stop every order submission of the account",
             description="In-flight executions stop before their next order and cancel what "
             "is open.")
def engage(account_id: Account, body: KillSwitchChange, session: CurrentSession,
           state: State) -> KillSwitchOut:
    return _set_kill_switch(state, session, account_id, True, body.reason)


@router.post("/kill-switch/release", summary="Let the account's submissions resume")
def release(account_id: Account, body: KillSwitchChange, session: CurrentSession,
            state: State) -> KillSwitchOut:
    return _set_kill_switch(state, session, account_id, False, body.reason)
