"""Capital across strategies: allocation, netting and the split of fills (rotation.allocation).

Returns are daily returns of real funds (cn_etf_akshare_qfq_2020) standing in for strategies'
out-of-sample returns; every figure is checked against an independent computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

from rotation.allocation import (
    allocate,
    cross,
    net_targets,
    risk_contributions,
    risk_parity_weights,
    split_fill,
)
from rotation.portfolio_risk import shrunk_covariance

FUNDS = ["510300", "518880", "159915", "510880"]   # CSI 300, gold, ChiNext, dividend


@pytest.fixture(scope="module")
def returns(shared_data: Path) -> pd.DataFrame:
    root = shared_data / "cn_etf_akshare_qfq_2020" / "parquet"
    closes = {f: pd.read_parquet(root / f"{f}.parquet").set_index("date")["close"]
              for f in FUNDS}
    return pd.DataFrame(closes).sort_index().pct_change(fill_method=None).iloc[1:]


def test_fixed_weights_are_normalised_and_checked() -> None:
    got = allocate("fixed", ["a", "b"], fixed={"a": 3.0, "b": 1.0})
    assert got.to_dict() == {"a": 0.75, "b": 0.25}
    for fixed, why in (({"a": 1.0}, r"missing \['b'\]"), ({"a": 1, "b": 1, "c": 1}, r"\['c'\]"),
                       ({"a": -1.0, "b": 1.0}, r"\['a'\] must be finite and >= 0"),
                       ({"a": 0.0, "b": 0.0}, "sum to 0")):
        with pytest.raises(ValueError, match=why):
            allocate("fixed", ["a", "b"], fixed=fixed)


def test_inverse_volatility_is_one_over_sigma(returns: pd.DataFrame) -> None:
    got = allocate("inverse_volatility", FUNDS, returns=returns)
    sigma = returns.dropna().to_numpy().std(axis=0, ddof=1)
    np.testing.assert_allclose(got.to_numpy(), (1 / sigma) / (1 / sigma).sum(), rtol=1e-12)
    flat = returns.assign(**{"510300": 0.0})
    for method in ("inverse_volatility", "risk_parity"):    # shrinkage must not hide it
        with pytest.raises(ValueError, match=r"\['510300'\] have no out-of-sample volatility"):
            allocate(method, FUNDS, returns=flat)


def test_risk_parity_equalises_risk_contributions(returns: pd.DataFrame) -> None:
    got = allocate("risk_parity", FUNDS, returns=returns)
    cov = shrunk_covariance(returns.dropna().to_numpy())
    np.testing.assert_allclose(risk_contributions(got.to_numpy(), cov), 0.25, atol=1e-10)
    assert got.sum() == pytest.approx(1.0, abs=1e-12) and (got > 0).all()
    # An independent solver of the same convex problem (Spinu 2013).
    n = len(FUNDS)
    result = minimize(lambda y: 0.5 * y @ cov @ y - np.log(y).sum() / n,
                      np.full(n, 10.0), jac=lambda y: cov @ y - 1 / (n * y),
                      method="L-BFGS-B", bounds=[(1e-9, None)] * n,
                      options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000})
    np.testing.assert_allclose(got.to_numpy(), result.x / result.x.sum(), rtol=1e-5)
    # Uncorrelated strategies: risk parity is inverse volatility.
    diagonal = np.diag(np.diag(cov))
    sigma = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(risk_parity_weights(diagonal), (1 / sigma) / (1 / sigma).sum(),
                               rtol=1e-10)


def test_estimates_need_shared_history(returns: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="share 59 out-of-sample sessions, fewer than the 60"):
        allocate("risk_parity", FUNDS, returns=returns.iloc[:59])
    with pytest.raises(ValueError, match=r"no out-of-sample returns for strategies \['x'\]"):
        allocate("inverse_volatility", [*FUNDS, "x"], returns=returns)
    with pytest.raises(ValueError, match="needs the strategies' out-of-sample returns"):
        allocate("risk_parity", FUNDS)


def test_netting_sums_the_strategies_parts() -> None:
    targets = {"rotation": {"510300": 0.5, "518880": 0.5},
               "ma_cross": {"510300": 1.0},
               "rsi": {}}
    netted = net_targets(targets, {"rotation": 0.6, "ma_cross": 0.3, "rsi": 0.1})
    assert netted.weights == pytest.approx({"510300": 0.6, "518880": 0.3})
    assert netted.parts["510300"] == pytest.approx({"rotation": 0.3, "ma_cross": 0.3})
    for fund, parts in netted.parts.items():
        assert sum(parts.values()) == pytest.approx(netted.weights[fund])
    with pytest.raises(ValueError, match=r"differ in \['rsi'\]"):
        net_targets(targets, {"rotation": 0.6, "ma_cross": 0.4})
    with pytest.raises(ValueError, match=r"sum to 1\.500000 > 1"):
        net_targets({"a": {"x": 1.0}, "b": {"y": 1.0}}, {"a": 0.5, "b": 1.0})
    with pytest.raises(ValueError, match="strategy a weight of x is nan"):
        net_targets({"a": {"x": float("nan")}}, {"a": 1.0})


def test_opposite_wishes_cross_and_fills_split_in_whole_units() -> None:
    crossed, remaining = cross({"rotation": 1_000, "ma_cross": -400, "rsi": 300})
    assert sum(crossed.values()) == 0 and crossed["ma_cross"] == -400
    assert remaining == {"rotation": 1_000 - crossed["rotation"],
                         "rsi": 300 - crossed["rsi"]}
    assert sum(remaining.values()) == 900          # the net order
    shares = split_fill(remaining, 500, fee=5.0)
    assert sum(s.units for s in shares.values()) == 500
    assert sum(s.fee for s in shares.values()) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="more than the 900"):
        split_fill(remaining, 901, fee=1.0)
    with pytest.raises(ValueError, match="must all be on one side"):
        split_fill({"a": 100, "b": -100}, 0, fee=0.0)


def test_strategy_books_always_sum_to_the_account() -> None:
    """Random wishes, crossings and partial fills: per-strategy units and cash (so P&L) add
    up to the account's, and no strategy is filled beyond what it wanted."""
    rng = np.random.default_rng(15)
    names = ["a", "b", "c", "d"]
    units = dict.fromkeys(names, 0)
    cash = dict.fromkeys(names, 250_000.0)
    account_units, account_cash = 0, 1_000_000.0
    for _ in range(300):
        wants = {s: int(rng.integers(-20, 21)) * 100 for s in names}
        price = float(rng.uniform(1, 5))
        crossed, remaining = cross(wants)
        for s, u in crossed.items():
            units[s] += u
            cash[s] -= u * price
        net = sum(remaining.values())
        filled = int(rng.integers(0, abs(net) // 100 + 1)) * 100
        fee = max(filled * price * 2e-4, 5.0) if filled else 0.0
        for s, share in split_fill(remaining, filled, fee).items():
            assert abs(share.units) <= abs(remaining[s])
            units[s] += share.units
            cash[s] -= share.units * price + share.fee
        account_units += int(np.sign(net)) * filled
        account_cash -= int(np.sign(net)) * filled * price + fee
        assert sum(units.values()) == account_units
        assert sum(cash.values()) == pytest.approx(account_cash, rel=1e-12)


def test_the_blended_returns_hold_each_strategy_at_its_share() -> None:
    from rotation.allocation import blended_returns

    days = pd.bdate_range("2024-01-01", periods=5)
    first = pd.Series([1.0, 1.01, 1.0, 1.02, 1.03], index=days)
    second = pd.Series([2.0, 1.98, 2.0, 2.02], index=days[1:])   # starts a session later
    blended = blended_returns({"a": first, "b": second}, {"a": 1.0, "b": 3.0})
    expected = 0.25 * first.pct_change() + 0.75 * second.pct_change()
    assert list(blended.index) == list(days[2:])      # sessions both curves have a return on
    assert np.allclose(blended.to_numpy(), expected.loc[days[2:]].to_numpy(), atol=1e-15)
    with pytest.raises(ValueError, match="no positive share"):
        blended_returns({"a": first}, {"a": 0.0})
