"""Signals and execution stage (SPEC §9): target_portfolio → approved_signal → (sensor →
execution_job) → positions_report.

``approved_signal`` is the gate: it looks up, in the Dagster instance, every blocking check
that guards the signal's date, asks the market calendar whether the data is fresh, and runs the
signal-level risk rules; the decision (approved, or rejected with every reason) is recorded in
the ledger and the audit log and is this asset's value. ``positions_report`` marks the paper
account and compares it with what the backtest engine expects for the same signals.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from assets.allocation import PART_PREFIX
from assets.code_version import code_version, strategy_sections
from assets.metadata import data_fingerprint, frame_metadata
from assets.metadata import table as table_value
from resources.cache import RedisCache
from resources.clock import ClockResource
from resources.execution import ExecutionResource, account_lock, market_quotes, venue_bars
from resources.ledger import LedgerResource
from resources.market_data import MarketDataResource
from rotation import report
from rotation.allocation import blended_returns
from rotation.backtest import BacktestConfig, run_backtest
from rotation.risk import PortfolioFigures, RiskLimits

if TYPE_CHECKING:
    from rotation.portfolio_risk import RiskReport
from rotation.strategy import StrategyConfig
from sensors.executions import stalled_executions
from trading import approval
from trading.account import Account
from trading.attribution import SignalParts, netted_strategy, wishes_from_weights
from trading.executor import reconcile
from trading.ledger import Ledger
from trading.models import AuditEntry, SignalStatus
from trading.venue import ExecutionVenue

SIGNALS_GROUP = "signals"
EXECUTION_GROUP = "execution"
PARITY_CHECK = "paper_matches_backtest"
BOOK_CHECK = "ledger_matches_venue"
STALL_CHECK = "no_stalled_execution"
ALL_SESSIONS = dg.AssetIn(partition_mapping=dg.AllPartitionMapping())


@dataclass(frozen=True)
class GuardingCheck:
    """A blocking check that must have passed for a signal: per session partition (the market
    data of D) or the latest evaluation (unpartitioned research checks)."""

    asset: str
    check: str
    per_session: bool


def guarding_checks(assets: Sequence[dg.AssetsDefinition]) -> list[GuardingCheck]:
    """Every blocking check of ``assets``; those on session partitions are looked up for D."""
    out = []
    for asset in assets:
        per_session = isinstance(asset.partitions_def, dg.TimeWindowPartitionsDefinition)
        for spec in asset.check_specs:
            if spec.blocking:
                out.append(GuardingCheck(spec.asset_key.to_user_string(), spec.name,
                                         per_session))
    return out


def failed_checks(instance: dg.DagsterInstance, checks: Sequence[GuardingCheck],
                  session: str) -> list[str]:
    """Names of guarding checks that did not pass for ``session`` (missing counts as failed).

    Only what a run did counts: a materialisation or an evaluation reported without a run
    (Dagster's "report" mutations, open to any writable webserver) is ignored, so nobody can
    pass a gate check by saying so."""
    from orchestration.dagster_private import AssetCheckExecutionRecordStatus

    failed = []
    runs: dict[str, str | None] = {}
    for guard in checks:
        key = dg.AssetCheckKey(dg.AssetKey.from_user_string(guard.asset), guard.check)
        label = f"{guard.asset}:{guard.check}"
        history = [r for r in instance.event_log_storage.get_asset_check_execution_history(
            key, 50) if r.run_id]
        if guard.per_session:
            if guard.asset not in runs:
                found = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(guard.asset),
                                          asset_partitions=[session]), limit=20)
                runs[guard.asset] = next((r.run_id for r in found.records if r.run_id), None)
            run_id = runs[guard.asset]
            if run_id is None:
                failed.append(f"{label} ({session}: {guard.asset} not materialised)")
                continue
            history = [r for r in history if r.run_id == run_id]
        if not history:
            failed.append(f"{label} ({session}: no evaluation)")
        elif history[0].status != AssetCheckExecutionRecordStatus.SUCCEEDED:
            failed.append(f"{label} ({session}: {history[0].status.value.lower()})")
    return failed


def signal_assets(strategies: Sequence[StrategyConfig], account: Account,
                  guards: Sequence[GuardingCheck], *,
                  target_portfolio: str = "target_portfolio",
                  oos_backtests: Mapping[str, str] | None = None
                  ) -> list[dg.AssetsDefinition]:
    """The account's gate, risk and book. ``strategies``: those it trades (one market: the
    first's rules); several are netted (``account_target``), their signals' strategy is
    ``a+b`` (trading.attribution). ``target_portfolio``: the traded strategy's (user string;
    a netting account's is its ``account_target``); ``oos_backtests``: each traded strategy's
    ``oos_backtest`` (by default the plain key), whose returns, at the account's shares when
    netted, backtest the VaR."""
    backtests = oos_backtests or {strategies[0].name: "oos_backtest"}
    strategy = strategies[0]
    account_id, limits = account.account_id, account.limits
    names = [s.name for s in strategies]
    label = netted_strategy(names) if account.allocation.netted else strategy.name
    target = dg.AssetIn(key=dg.AssetKey.from_user_string(
        "account_target" if account.allocation.netted else target_portfolio))
    backtest = strategy.backtest_config()
    sections = [strategy_sections(s, "name", "universe") for s in strategies]
    versions = {
        "approved_signal": code_version("approved_signal", sections, limits, account_id),
        "positions_report": code_version("positions_report", sections, account_id, backtest,
                                         account.costs, account.parity_tolerance,
                                         account.quote_lookback_sessions),
        "portfolio_risk": code_version("portfolio_risk", sections, limits, account_id),
    }

    @dg.asset(
        group_name=SIGNALS_GROUP,
        kinds={"postgres"},
        ins={"adjusted_bars": ALL_SESSIONS, "target_portfolio": target},
        code_version=versions["approved_signal"],
        description="The gate between research and trading (SPEC §9): the target portfolio of "
        "session D becomes an immutable approved signal (id = strategy, account, date, weights "
        "hash; one per account and session) only when every blocking check guarding D passed, "
        "D is the newest closed session and "
        "the risk limits hold; otherwise a rejected signal with every reason. Recorded in the "
        "ledger and its audit log; the execution sensor launches one run per approved signal.",
    )
    def approved_signal(context: dg.AssetExecutionContext, target_portfolio: pd.DataFrame,
                        adjusted_bars: pd.DataFrame, market_data: MarketDataResource,
                        ledger: LedgerResource, clock: ClockResource
                        ) -> dg.Output[pd.DataFrame]:
        day = pd.Timestamp(target_portfolio["date"].iloc[0]).normalize()
        calendar = market_data.calendar
        latest = calendar.latest_closed_session(clock.now())
        between = max(len(calendar.sessions(day, latest)) - 1, 0) if latest >= day else 0
        on_day = adjusted_bars.loc[adjusted_bars["date"] == day]
        traded = set(on_day.loc[on_day["volume"] > 0, "symbol"].astype(str))
        weights = approval.proposed_weights(target_portfolio["symbol"].astype(str).tolist(),
                                            target_portfolio["weight"].astype(float).tolist())
        universe = set().union(*(traded_universe(s, adjusted_bars) for s in strategies))
        import rotation.portfolio_risk as portfolio_risk  # scipy: only when a signal is decided

        returns, amounts = portfolio_risk.panels_from_bars(
            adjusted_bars.loc[adjusted_bars["date"] <= day])
        in_force, tightened = portfolio_risk.limits_in_force(returns, day.date(), limits)
        if tightened is not None:
            audit_tightening(ledger.ledger, account_id, day, tightened,
                             actor=f"dagster:{context.run.run_id}")
            context.log.warning(f"limits of {account_id} tightened: {tightened}")
        facts = approval.SignalFacts(
            strategy=label, account_id=account_id, as_of=day.date(), weights=weights,
            latest_session=latest.date(), sessions_between=between,
            data_as_of=pd.Timestamp(adjusted_bars["date"].max()).date(),
            universe=universe, halted=sorted(s for s in weights if s not in traded),
            failed_checks=failed_checks(context.instance, guards, f"{day:%Y-%m-%d}"),
            data_version=data_fingerprint(adjusted_bars), dagster_run_id=context.run.run_id,
            portfolio=portfolio_figures(returns, amounts, weights, day, ledger, account_id,
                                        in_force))
        # A netted target's parts are sized before the decision: what cannot be attributed
        # stops the gate before anything is approved.
        wishes = (strategy_wishes(ledger.ledger, account, target_portfolio,
                                  recent_closes(market_data, day,
                                                account.quote_lookback_sessions))
                  if account.allocation.netted else None)
        record = approval.decide(facts, ledger.ledger, in_force,
                                 actor=f"dagster:{context.run.run_id}")
        if record.status is SignalStatus.APPROVED and wishes is not None:
            record_parts(ledger.ledger, record.signal_id, wishes,
                         actor=f"dagster:{context.run.run_id}")
        if record.status is SignalStatus.REJECTED:
            context.log.warning(f"signal {record.signal_id} rejected: " + "; ".join(
                r["message"] for r in record.reasons))
        elif record.status is SignalStatus.SUPERSEDED:
            # Re-deciding a superseded target returns it as it is: it is never executed again.
            context.log.warning(f"signal {record.signal_id} was superseded in the ledger: not "
                                "executed (approve another target for this session instead)")
        table = pd.DataFrame({"symbol": list(record.weights),
                              "weight": list(record.weights.values())})
        table.insert(0, "signal_id", record.signal_id)
        table.insert(1, "status", str(record.status))
        table.insert(2, "date", day)
        reasons = pd.DataFrame(record.reasons, columns=["layer", "rule", "subject", "message"])
        return dg.Output(table, metadata={
            "signal_id": dg.MetadataValue.text(record.signal_id),
            "status": dg.MetadataValue.text(str(record.status)),
            "account_id": dg.MetadataValue.text(account_id),
            "as_of": dg.MetadataValue.text(f"{day:%Y-%m-%d}"),
            "clock_session": dg.MetadataValue.text(f"{latest:%Y-%m-%d}"),
            "invested": dg.MetadataValue.float(float(np.nansum(list(weights.values())))),
            "weights": table_value(table[["symbol", "weight"]], 60),
            "reasons": table_value(reasons) if len(reasons) else dg.MetadataValue.text("none"),
            "rejected_rules": dg.MetadataValue.json(sorted({r["rule"] for r in record.reasons})),
            **risk_metadata(facts.portfolio),
            "limits_in_force": dg.MetadataValue.text(tightened or "as configured"),
        })

    @dg.asset(
        group_name=SIGNALS_GROUP,
        kinds={"postgres", "pandas"},
        ins={"adjusted_bars": ALL_SESSIONS, "target_portfolio": target,
             **{backtest_input(s): dg.AssetIn(key=dg.AssetKey.from_user_string(k))
                for s, k in backtests.items()},
             **({"account_allocation": dg.AssetIn(key=dg.AssetKey("account_allocation"))}
                if account.allocation.netted else {})},
        code_version=versions["portfolio_risk"],
        description="How much the target portfolio and the account's current book can lose, "
        "from data up to D only (issue 19): VaR and expected shortfall at 95 % and 99 % over 1 "
        "and 5 sessions by historical simulation, the shrunk-covariance normal and "
        "Cornish–Fisher; their backtest on the strategy's stitched out-of-sample returns "
        "(exceedances, Kupiec, Christoffersen); replays of the market's stress episodes, "
        "parametric shocks by instrument class (config/risk/stress.yaml) and the worst windows; "
        "days to liquidate each position. What could not be measured is listed with why.",
    )
    def portfolio_risk(context: dg.AssetExecutionContext, target_portfolio: pd.DataFrame,
                       adjusted_bars: pd.DataFrame, market_data: MarketDataResource,
                       ledger: LedgerResource, **inputs: pd.DataFrame
                       ) -> dg.Output[pd.DataFrame]:
        import rotation.portfolio_risk as risk  # scipy: only when measured

        day = pd.Timestamp(target_portfolio["date"].iloc[0]).normalize()
        upto = adjusted_bars.loc[adjusted_bars["date"] <= day]
        returns, amounts = risk.panels_from_bars(upto)
        equity, book = book_weights(ledger, account_id, upto, day)
        target = approval.proposed_weights(target_portfolio["symbol"].astype(str).tolist(),
                                           target_portfolio["weight"].astype(float).tolist())
        classes = {i.symbol: i.instrument_class for i in market_data.instruments()}
        report = risk.risk_report(
            returns, amounts, {"target": (target, equity), "book": (book, equity)},
            day.date(), classes, risk.load_stress(strategy.market.name),
            out_of_sample_returns(inputs, list(backtests)), limits)
        for row in report.errors.itertuples():
            context.log.warning(f"portfolio_risk {row.portfolio} {row.section}: {row.error}")
        return dg.Output(risk_tables(report), metadata=risk_report_metadata(report, day))

    @dg.asset(
        group_name=EXECUTION_GROUP,
        kinds={"postgres", "numba"},
        deps=["approved_signal"],
        code_version=versions["positions_report"],
        check_specs=[
            dg.AssetCheckSpec(
                PARITY_CHECK, asset="positions_report", blocking=True,
                description="The paper account's daily equity stays within the tolerance of "
                "what the backtest engine produces for the same approved signals and days"),
            dg.AssetCheckSpec(
                BOOK_CHECK, asset="positions_report", blocking=True,
                description="The ledger's positions and cash equal the venue's book, unit for "
                "unit (after reconciling every fill)"),
            # A warning, not a block: stalled_execution_sensor alerts and recovers it.
            dg.AssetCheckSpec(
                STALL_CHECK, asset="positions_report",
                description="No execution is left running in the ledger without a Dagster run "
                "working on it (stalled_execution_sensor recovers them)")],
        description="Positions, cash and P&L of the paper account from the ledger, marked at "
        "each session's raw close, beside the backtest engine's equity for the same approved "
        "signals (paper orders are sized at the signal day's close, the backtest at the next "
        "open: the difference is lot rounding and sizing price, bounded by the parity check).",
    )
    def positions_report(context: dg.AssetExecutionContext, market_data: MarketDataResource,
                         ledger: LedgerResource, execution: ExecutionResource,
                         cache: RedisCache, clock: ClockResource):
        book = ledger.ledger
        actor = f"dagster:{context.run.run_id}"
        signals = [s for s in book.signals(account_id, SignalStatus.APPROVED)
                   if s.strategy == label]
        if not signals:
            raise dg.Failure(f"account {account_id}: no approved signal of {label} "
                             "yet; materialise approved_signal first")
        first = pd.Timestamp(signals[0].as_of)
        last = market_data.calendar.latest_closed_session(clock.now())
        # Uncached: the range grows every day, a cache entry would never be read again.
        seen = venue_bars(market_data, first, last,
                          lookback_sessions=account.quote_lookback_sessions)
        # Fills the venue has made since the last execution (e.g. this morning's open).
        with execution.connected(market_quotes(market_data, seen), account.costs) as venue, \
                account_lock(book, account_id, account.lock_timeout_seconds):
            new_fills = reconcile(book, venue, account_id, actor=actor,
                                  closed_through=last.date())
            differences = book_differences(book, venue, account_id)
        fills = book.fills(account_id)
        initial_cash = book.initial_cash(account_id)   # the ledger's, not today's setting
        bars = seen.loc[pd.to_datetime(seen["date"]) >= first]
        daily = paper_equity(fills, bars, initial_cash, first, last)
        expected = backtest_equity(signals, bars, market_data, backtest, initial_cash,
                                   first, last)
        frame = daily.join(expected.rename("backtest_equity"), how="left")
        frame["difference"] = frame["equity"] / frame["backtest_equity"] - 1.0
        for session, row in frame.iterrows():
            book.record_valuation(account_id, session.date(), cash=float(row["cash"]),
                                  positions_value=float(row["positions_value"]),
                                  actor=actor)
        positions = pd.DataFrame([{"symbol": p.symbol, "quantity": p.quantity, "cost": p.cost}
                                  for p in book.positions(account_id).values()],
                                 columns=["symbol", "quantity", "cost"])
        worst = float(frame["difference"].abs().max()) if len(frame) else 0.0
        out = frame.reset_index().rename(columns={"index": "date"})
        png = report.png_base64(report.equity_figure(
            frame["equity"], {"backtest": frame["backtest_equity"]},
            title=f"Paper account {account_id} vs backtest"))
        yield dg.Output(out, metadata={
            **frame_metadata(out),
            "equity": dg.MetadataValue.float(float(frame["equity"].iloc[-1])),
            "pnl": dg.MetadataValue.float(float(frame["equity"].iloc[-1] - initial_cash)),
            "initial_cash": dg.MetadataValue.float(initial_cash),
            "cash": dg.MetadataValue.float(book.cash(account_id)),
            "positions": table_value(positions.round(2), 60),
            "fills": dg.MetadataValue.int(len(fills)),
            "new_fills": dg.MetadataValue.int(new_fills),
            "approved_signals": dg.MetadataValue.int(len(signals)),
            "equity_plot": dg.MetadataValue.md(report.markdown_image(png, "paper vs backtest")),
            **strategy_pnl_metadata(book, account, bars),
        })
        tolerance = account.parity_tolerance
        yield dg.AssetCheckResult(check_name=PARITY_CHECK, passed=worst <= tolerance,
                                  metadata={"max_rel_diff": dg.MetadataValue.float(worst),
                                            "tolerance": dg.MetadataValue.float(tolerance),
                                            "sessions": dg.MetadataValue.int(len(frame))})
        yield dg.AssetCheckResult(
            check_name=BOOK_CHECK, passed=not differences,
            metadata={"differences": dg.MetadataValue.md(
                "\n".join(f"- {d}" for d in differences) or "none")})
        stalls = stalled_executions(context.instance, book, account_id)
        yield dg.AssetCheckResult(
            check_name=STALL_CHECK, passed=not stalls, severity=dg.AssetCheckSeverity.WARN,
            metadata={"stalled": dg.MetadataValue.md(
                "\n".join(f"- {s.describe()}" for s in stalls) or "none")})

    return [approved_signal, portfolio_risk, positions_report]


def backtest_input(strategy: str) -> str:
    """The portfolio_risk input carrying ``strategy``'s oos_backtest."""
    return f"oos_{strategy}"


def out_of_sample_returns(inputs: Mapping[str, pd.DataFrame], strategies: list[str]
                          ) -> pd.Series:
    """The daily out-of-sample returns the account's VaR is backtested on: its strategy's,
    or its strategies' at the shares of ``account_allocation`` when it nets several."""
    equities = {s: (frame := inputs[backtest_input(s)]).set_index(
        pd.to_datetime(frame["date"]))["equity"] for s in strategies}
    if len(strategies) == 1:
        return equities[strategies[0]].pct_change().dropna()
    shares = inputs["account_allocation"].set_index("strategy")["weight"]
    return blended_returns(equities, shares.astype(float).to_dict())


def traded_universe(strategy: StrategyConfig, bars: pd.DataFrame) -> set[str]:
    """The funds ``strategy`` may hold: its universe, or every fund of the data, less its
    exclusions, with its defensive fund."""
    u = strategy.universe
    universe = set(u.symbols) if u.symbols else set(bars["symbol"].astype(str))
    universe -= set(u.exclude)
    return universe | ({u.defensive} if u.defensive else set())


def recent_closes(market_data: MarketDataResource, day: pd.Timestamp, lookback: int
                  ) -> dict[str, float]:
    """Each fund's last raw close up to ``day`` within ``lookback`` sessions: the price the
    executor sizes orders at (a fund halted on ``day`` keeps its last close)."""
    start = market_data.calendar.offset(day, -lookback)
    bars = market_data.load(start, day).bars.sort_values("date")
    bars = bars.loc[np.isfinite(bars["close"]) & (bars["close"] > 0)]
    last = bars.groupby(bars["symbol"].astype(str))["close"].last()
    return {str(s): float(c) for s, c in last.items()}


@dataclass(frozen=True)
class StrategyWishes:
    units: dict[str, dict[str, int]]       # fund -> strategy -> units to trade
    prices: dict[str, float]               # fund -> the raw close that sized them


def strategy_wishes(ledger: Ledger, account: Account, target: pd.DataFrame,
                    closes: Mapping[str, float]) -> StrategyWishes:
    """Each strategy's units to trade for a netted target: its part of the account's equity at
    the raw close, less what it holds. Refused (``dg.Failure`` naming the funds) while the
    account holds units no strategy of its allocation owns (held before it netted, or by a
    strategy that left the allocation): they would be traded without an owner."""
    account_id, strategies = account.account_id, account.allocation.strategies
    holdings = ledger.strategy_holdings(account_id)
    positions = ledger.positions(account_id)
    owned = {f: sum(h.get(f).quantity for s, h in holdings.items()
                    if s in strategies and h.get(f) is not None) for f in positions}
    unowned = {f: p.quantity - owned[f] for f, p in positions.items() if p.quantity != owned[f]}
    if unowned:
        raise dg.Failure(f"account {account_id}: units {unowned} are not owned by its "
                         f"strategies {list(strategies)} (held before it netted them, or by a "
                         "strategy that left its allocation); attribute or sell them first")
    parts = {str(row["symbol"]): {s: float(row[PART_PREFIX + s]) for s in strategies
                                  if float(row[PART_PREFIX + s]) > 0}
             for _, row in target.iterrows()}
    missing = sorted(f for f in {*positions, *(f for f, p in parts.items() if p)}
                     if f not in closes)
    if missing:
        raise dg.Failure(f"account {account_id}: no raw close of {missing} to size the "
                         "strategies' parts")
    equity = ledger.cash(account_id) + sum(p.quantity * closes[f] for f, p in positions.items())
    held = {s: {f: h.quantity for f, h in by_fund.items()}
            for s, by_fund in holdings.items() if s in strategies}
    units = wishes_from_weights(parts, equity=equity, prices=closes, held=held)
    return StrategyWishes(units, {f: closes[f] for f in units})


def record_parts(ledger: Ledger, signal_id: str, wishes: StrategyWishes, *, actor: str
                 ) -> None:
    """A netted signal's parts in the ledger before anything executes, so the executor
    crosses opposite wishes and every fill is attributed (once: a re-decided signal keeps the
    parts it was approved with)."""
    if wishes.units and ledger.signal_parts(signal_id) is None:
        ledger.record_signal_parts(SignalParts(signal_id, wishes.units, wishes.prices),
                                   actor=actor)


def strategy_pnl_metadata(ledger: Ledger, account: Account, bars: pd.DataFrame
                          ) -> dict[str, dg.MetadataValue]:
    """Per-strategy units, cash and P&L of a netted account (they sum to the account's)."""
    if not account.allocation.netted:
        return {}
    latest = bars.sort_values("date").groupby(bars["symbol"].astype(str))["close"].last()
    books = ledger.strategy_books(account.account_id, latest.astype(float).to_dict())
    rows = pd.DataFrame([{"strategy": s, "market_value": b.market_value, "cash": b.cash,
                          "realised": b.realised, "unrealised": b.unrealised, "pnl": b.pnl}
                         for s, b in books.items()])
    return {"strategy_pnl": table_value(rows.round(2), 50)} if len(rows) else {}


def audit_tightening(ledger: Ledger, account_id: str, day: pd.Timestamp, why: str, *,
                     actor: str) -> None:
    """Dynamic limits in the audit log: the rule that tightened them, with its figures (once
    per account, day and reason: re-deciding the day does not report it again)."""
    day_text = f"{day:%Y-%m-%d}"
    if any(e["reason"] == why and e["details"].get("as_of") == day_text
           for e in ledger.audit_log(entity_id=account_id, action="limits_tightened")):
        return
    rule, _, message = why.partition(": ")
    ledger.audit(AuditEntry(actor=actor, action="limits_tightened", entity="account",
                            entity_id=account_id, reason=why,
                            details={"layer": "account", "rule": rule, "subject": account_id,
                                     "message": message, "as_of": day_text}))


def portfolio_figures(returns: pd.DataFrame, amounts: pd.DataFrame, weights: dict[str, float],
                      day: pd.Timestamp, ledger: LedgerResource, account_id: str,
                      limits: RiskLimits) -> PortfolioFigures | str:
    """The target's risk from the returns up to D, on the account's latest equity (its
    initial cash before the first valuation); a string says why it could not be measured."""
    import rotation.portfolio_risk as portfolio_risk

    valuations = ledger.ledger.valuations(account_id)
    equity = float(valuations["equity"].iloc[-1]) if len(valuations) else ledger.initial_cash
    try:
        return portfolio_risk.gate_figures(returns, amounts, weights, day.date(), equity,
                                           limits)
    except portfolio_risk.RiskInputError as exc:
        return str(exc)


def book_weights(ledger: LedgerResource, account_id: str, bars: pd.DataFrame,
                 day: pd.Timestamp) -> tuple[float, dict[str, float]]:
    """The account's equity and weights: ledger positions at each fund's last raw close up to
    D, and cash."""
    book = ledger.ledger
    last = bars.sort_values("date").groupby("symbol")["raw_close"].last()
    values = {s: p.quantity * float(last[s]) for s, p in book.positions(account_id).items()
              if s in last.index}
    equity = book.cash(account_id) + sum(values.values())
    return equity, ({s: v / equity for s, v in values.items()} if equity > 0 else {})


def risk_tables(report: "RiskReport") -> pd.DataFrame:
    """Every figure of the report in one table of uniform columns (section, portfolio, name,
    value, detail): stored as the asset's value."""
    rows = [{"section": "estimate", "portfolio": r.portfolio,
             "name": f"{r.method} {measure} {r.level:.0%} {r.horizon}d", "value": value,
             "detail": f"{r.observations} sessions" + ("" if r.valid else "; not monotone")}
            for r in report.estimates.itertuples() for measure, value in (("VaR", r.var),
                                                                          ("ES", r.es))]
    rows += [{"section": "backtest", "portfolio": "out-of-sample",
              "name": f"{r.method} {r.level:.0%}", "value": float(r.exceedances),
              "detail": f"{r.exceedances} exceedances of {r.observations} forecasts (expected "
                        f"{r.expected:.1f}); "
                        f"Kupiec p {r.kupiec_p:.3f}, Christoffersen p {r.independence_p:.3f}"}
             for r in report.backtests.itertuples()]
    rows += [{"section": "stress", "portfolio": r.portfolio, "name": r.scenario,
              "value": r.loss, "detail": " ".join(filter(None, (
                  f"{r.kind} {r.start or ''}..{r.end or ''}",
                  f"worst fund {r.worst_fund}" if r.worst_fund else "", r.proxied)))}
             for r in report.stress.itertuples()]
    rows += [{"section": "liquidity", "portfolio": r.portfolio, "name": r.symbol,
              "value": r.days_to_trade, "detail": f"{r.value:,.0f} = {r.share_of_day:.2%} of "
                                                  f"{r.average_amount:,.0f} a day"}
             for r in report.liquidity.itertuples()]
    rows += [{"section": "unmeasured", "portfolio": r.portfolio, "name": r.section,
              "value": float("nan"), "detail": r.error} for r in report.errors.itertuples()]
    return pd.DataFrame(rows, columns=["section", "portfolio", "name", "value", "detail"])


def risk_report_metadata(report: "RiskReport", day: pd.Timestamp) -> dict[str, dg.MetadataValue]:
    """Headline figures and a table per section for the UI."""
    out: dict[str, dg.MetadataValue] = {"as_of": dg.MetadataValue.text(f"{day:%Y-%m-%d}")}
    estimates = report.estimates
    for portfolio in ("target", "book"):
        mine = estimates.loc[(estimates.get("portfolio") == portfolio)
                             & (estimates.get("method") == "historical")
                             & (estimates.get("level") == 0.99)
                             & (estimates.get("horizon") == 1)] if len(estimates) else estimates
        if len(mine):      # percent of equity, as the project's other metadata
            out[f"{portfolio}_var_99_1d_pct"] = dg.MetadataValue.float(
                100.0 * float(mine["var"].iloc[0]))
            out[f"{portfolio}_es_99_1d_pct"] = dg.MetadataValue.float(
                100.0 * float(mine["es"].iloc[0]))
    measured = report.stress.dropna(subset=["loss"]) if len(report.stress) else report.stress
    if len(measured):
        worst = measured.sort_values("loss").iloc[-1]
        out["worst_scenario"] = dg.MetadataValue.text(f"{worst['portfolio']}: "
                                                      f"{worst['scenario']} {worst['loss']:.2%}")
    for name, frame in (("estimates", estimates), ("var_backtest", report.backtests),
                        ("stress", report.stress), ("liquidity", report.liquidity),
                        ("unmeasured", report.errors)):
        if len(frame):
            out[name] = table_value(frame, 100)
    return out


def risk_metadata(figures: PortfolioFigures | str | None) -> dict[str, dg.MetadataValue]:
    if not isinstance(figures, PortfolioFigures):
        return {"portfolio_risk": dg.MetadataValue.text(f"not measured: {figures}")}
    slowest = max(figures.days_to_liquidate.items(), key=lambda kv: kv[1], default=("", 0.0))
    return {    # percent of equity, as the project's other metadata
        "var_99_1d_pct": dg.MetadataValue.float(100.0 * figures.var_99),
        "es_99_1d_pct": dg.MetadataValue.float(100.0 * figures.es_99),
        "stress_loss_pct": dg.MetadataValue.float(100.0 * figures.stress_loss),
        "stress_window": dg.MetadataValue.text(figures.stress_window),
        "max_days_to_liquidate": dg.MetadataValue.float(float(slowest[1])),
        "slowest_to_liquidate": dg.MetadataValue.text(slowest[0] or "none"),
        "risk_observations": dg.MetadataValue.int(figures.observations),
    }


def book_differences(ledger: Ledger, venue: ExecutionVenue, account_id: str) -> list[str]:
    """Where the ledger's positions and cash differ from the venue's book (empty: equal)."""
    mine = {s: p.quantity for s, p in ledger.positions(account_id).items()}
    theirs = venue.positions(account_id)
    out = [f"{s}: ledger {mine.get(s, 0)} units, venue {theirs.get(s, 0)}"
           for s in sorted(set(mine) | set(theirs)) if mine.get(s, 0) != theirs.get(s, 0)]
    cash, venue_cash = ledger.cash(account_id), venue.cash(account_id)
    if abs(cash - venue_cash) > 1e-6:
        out.append(f"cash: ledger {cash:,.2f}, venue {venue_cash:,.2f}")
    return out


def paper_equity(fills, bars: pd.DataFrame, initial_cash: float,
                 first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """Cash, positions value and equity of the account per session, replayed from its fills
    and marked at each session's raw close (the last close without a bar)."""
    closes = (bars.assign(date=pd.to_datetime(bars["date"]))
              .pivot(index="date", columns="symbol", values="close").sort_index())
    closes = closes.loc[(closes.index >= first) & (closes.index <= last)].ffill()
    units = pd.DataFrame(0.0, index=closes.index, columns=closes.columns)
    cash = pd.Series(initial_cash, index=closes.index)
    for f in fills:
        when = closes.index >= pd.Timestamp(f.session)
        sign = 1.0 if str(f.side) == "buy" else -1.0
        if f.symbol not in units.columns:
            continue
        units.loc[when, f.symbol] += sign * f.quantity
        cash.loc[when] -= sign * f.quantity * f.price + f.commission
    value = (units * closes.fillna(0.0)).sum(axis=1)
    return pd.DataFrame({"cash": cash, "positions_value": value, "equity": cash + value})


def backtest_equity(signals, bars: pd.DataFrame, market_data: MarketDataResource,
                    cfg: BacktestConfig, initial_cash: float, first: pd.Timestamp,
                    last: pd.Timestamp) -> pd.Series:
    """The backtest engine's equity for the same approved signals (decision rows on each
    signal's date, T1_OPEN) over the same sessions and starting cash."""
    dates = pd.DatetimeIndex(sorted(pd.to_datetime(bars["date"]).unique()))
    dates = dates[(dates >= first) & (dates <= last)]
    symbols = sorted({s for sig in signals for s in sig.weights} |
                     set(bars["symbol"].astype(str)))
    targets = pd.DataFrame(np.nan, index=dates, columns=symbols)
    for sig in signals:
        row = pd.Timestamp(sig.as_of)
        if row in targets.index:
            targets.loc[row] = 0.0
            for s, w in sig.weights.items():
                targets.loc[row, s] = w
    run_cfg = dataclasses.replace(cfg, initial_cash=initial_cash)
    result = run_backtest(targets, bars, market_data.instruments(), run_cfg)
    return result.equity
