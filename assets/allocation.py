"""An account that trades several strategies (issue 15 item 3): its capital split among them
(``account_allocation``: fixed weights, inverse volatility or risk parity of their stitched
out-of-sample returns) and their target portfolios netted into the one target the approval
gate decides (``account_target``), with each strategy's part of every fund kept for the
ledger's attribution. Thin over :mod:`rotation.allocation`."""

from collections.abc import Mapping

import dagster as dg
import numpy as np
import pandas as pd

from assets.code_version import code_version
from assets.metadata import table
from rotation import allocation as alloc
from trading.account import Account
from trading.attribution import netted_strategy

ALLOCATION_GROUP = "allocation"
PART_PREFIX = "part:"          # account_target's column of a strategy's part of each fund


def input_name(kind: str, strategy: str) -> str:
    return f"{kind}_{strategy}"


def allocation_assets(account: Account, backtests: Mapping[str, dg.AssetKey],
                      targets: Mapping[str, dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """``backtests``/``targets``: each of the account's strategies → the key of its
    ``oos_backtest`` / ``target_portfolio``."""
    spec = account.allocation
    strategies = list(spec.strategies)
    label = netted_strategy(strategies)

    @dg.asset(
        group_name=ALLOCATION_GROUP,
        kinds={"pandas"},
        ins={input_name("oos", s): dg.AssetIn(key=backtests[s]) for s in strategies},
        code_version=code_version("account_allocation", account.account_id, spec),
        description=f"Account {account.account_id}'s capital across its strategies "
        f"({', '.join(strategies)}) by {spec.method}: each strategy's share (summing to 1), the "
        "volatility of its out-of-sample daily returns and its share of the account's risk.",
    )
    def account_allocation(**oos: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        returns = pd.DataFrame({s: oos[input_name("oos", s)].set_index("date")["equity"]
                                for s in strategies}).pct_change(fill_method=None).iloc[1:]
        recent = returns.dropna().tail(spec.lookback_sessions)
        try:
            weights = alloc.allocate(spec.method, strategies, returns=recent,
                                     fixed=spec.weights or dict.fromkeys(strategies, 1.0))
        except ValueError as exc:
            raise dg.Failure(f"account {account.account_id}: {exc}") from None
        frame = _allocation_frame(weights, recent)
        return dg.Output(frame, metadata={
            "method": dg.MetadataValue.text(spec.method),
            "allocation": table(frame.round(6), 50),
            "sessions": dg.MetadataValue.int(len(recent)),
            "span": dg.MetadataValue.text(f"{recent.index.min():%Y-%m-%d}.."
                                          f"{recent.index.max():%Y-%m-%d}" if len(recent)
                                          else "none"),
        })

    @dg.asset(
        group_name=ALLOCATION_GROUP,
        kinds={"pandas"},
        ins={"account_allocation": dg.AssetIn(key=account_allocation.key),
             **{input_name("target", s): dg.AssetIn(key=targets[s]) for s in strategies}},
        code_version=code_version("account_target", account.account_id, spec),
        description=f"Account {account.account_id}'s one target: Σ share × weight per fund "
        f"over its strategies' target portfolios, the rows of target_portfolio with strategy "
        f"{label!r} and, per strategy, its part of each fund ({PART_PREFIX}<strategy>). All "
        "targets must be of the same session: a strategy behind the others stops the account.",
    )
    def account_target(account_allocation: pd.DataFrame, **wanted: pd.DataFrame
                       ) -> dg.Output[pd.DataFrame]:
        frames = {s: wanted[input_name("target", s)] for s in strategies}
        day = _one_session(account.account_id, frames)
        shares = account_allocation.set_index("strategy")["weight"]
        try:
            netted = alloc.net_targets(
                {s: dict(zip(f["symbol"].astype(str), f["weight"].astype(float), strict=True))
                 for s, f in frames.items()}, shares.to_dict())
        except ValueError as exc:
            raise dg.Failure(f"account {account.account_id}: {exc}") from None
        frame = _target_frame(day, label, netted, frames)
        held = frame.loc[frame["weight"] > 0]
        return dg.Output(frame, metadata={
            "as_of": dg.MetadataValue.text(f"{day:%Y-%m-%d}"),
            "strategy": dg.MetadataValue.text(label),
            "invested_pct": dg.MetadataValue.float(round(float(frame["weight"].sum()) * 100, 2)),
            "holdings": table(held.drop(columns=["date"]).round(6), 60),
        })

    return [account_allocation, account_target]


def _allocation_frame(weights: pd.Series, returns: pd.DataFrame) -> pd.DataFrame:
    vol = returns.std(ddof=1) * np.sqrt(252)
    frame = pd.DataFrame({"strategy": weights.index, "weight": weights.to_numpy(),
                          "annual_volatility": vol.reindex(weights.index).to_numpy()})
    if len(returns) > 1:
        # The covariance risk parity equalises contributions under (rotation.allocation).
        from rotation.portfolio_risk import shrunk_covariance

        cov = shrunk_covariance(returns[list(weights.index)].to_numpy())
        frame["risk_share"] = alloc.risk_contributions(weights.to_numpy(), cov)
    return frame


def _one_session(account_id: str, frames: Mapping[str, pd.DataFrame]) -> pd.Timestamp:
    days = {s: pd.Timestamp(f["date"].iloc[0]).normalize() for s, f in frames.items()}
    if len(set(days.values())) != 1:
        raise dg.Failure(f"account {account_id}: its strategies' targets are of different "
                         f"sessions ({', '.join(f'{s} {d:%Y-%m-%d}' for s, d in days.items())}); "
                         "refresh the strategies behind before approving")
    return next(iter(days.values()))


def _target_frame(day: pd.Timestamp, label: str, netted: alloc.NettedTarget,
                  frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    funds = sorted({str(f) for frame in frames.values() for f in frame["symbol"]})
    frame = pd.DataFrame({"date": day, "strategy": label, "symbol": funds,
                          "weight": [netted.weights.get(f, 0.0) for f in funds]})
    for strategy in frames:
        frame[PART_PREFIX + strategy] = [netted.parts.get(f, {}).get(strategy, 0.0)
                                         for f in funds]
    frame["reason"] = [", ".join(f"{s} {p:.1%}" for s, p in netted.parts.get(f, {}).items())
                       or "no strategy holds it" for f in funds]
    return frame
