"""The quote relay from the settings (issue 18 item 3).

``python -m orchestration.quotes`` runs the quote relay (:mod:`trading.quotes`) against the vn.py
venue process the settings describe (``execution.vnpy``: host and RPC ports), records the ticks
in the deployment's Redis (``redis_url``), notifies the desk API's event stream through the
ledger (``postgres_url``, when set) and subscribes the deployment strategy's universe (every fund
the venue reports when the universe is a whole dataset). The live-price hash is the one the
intraday risk monitor and ``execution_job`` read: ``etf:last:<the strategy's market>``. The URLs
carry passwords: they reach the relay in its environment, never on its command line. The
deploy/ service's command.
"""

from __future__ import annotations

import os
import sys

from orchestration.settings import Settings, load_settings

# resources/live_quotes.py LiveQuotesResource's default namespace (what the deployment reads).
NAMESPACE = "etf"


def relay_argv(settings: Settings) -> list[str]:
    """The relay's arguments for ``settings`` (no URL among them: they carry passwords)."""
    v = settings.execution.vnpy
    unset = [f"execution.vnpy.{name} [env ETF_EXECUTION__VNPY__{name.upper()}]"
             for name in ("rep_port", "pub_port") if name not in v.model_fields_set]
    if unset:
        raise SystemExit(f"orchestration.quotes: {' and '.join(unset)} "
                         f"{'is' if len(unset) == 1 else 'are'} not set: the venue process's "
                         f"RPC ports (on execution.vnpy.host, {v.host}) the relay subscribes on")
    if not settings.redis_url:
        raise SystemExit("orchestration.quotes: redis_url [env ETF_REDIS_URL] is not set: the "
                         "relay records the ticks and live prices in Redis")
    from orchestration.deployment import strategy_for

    strategy = strategy_for(settings)
    argv = ["--rep", f"tcp://{v.host}:{v.rep_port}", "--pub", f"tcp://{v.host}:{v.pub_port}",
            "--market", strategy.market.name, "--namespace", NAMESPACE]
    symbols = strategy.universe.symbols
    if not symbols:
        return argv
    length = stream_length(len(symbols), settings.execution.vwap.sessions)
    return [*argv, "--symbols", ",".join(symbols), "--maxlen", str(length)]


def stream_length(funds: int, sessions: int) -> int:
    """Entries the relay's streams keep: the minute bars of ``sessions`` + 1 sessions of every
    fund (what a VWAP profile learned from the bars reads), never fewer than the relay's
    default."""
    from trading.quotes import DEFAULT_MAXLEN
    from trading.session_clock import SESSION_MINUTES

    return max(DEFAULT_MAXLEN, funds * SESSION_MINUTES * (sessions + 1))


def main() -> int:
    settings = load_settings()
    argv = relay_argv(settings)
    assert settings.redis_url is not None
    os.environ["ETF_REDIS_URL"] = settings.redis_url
    if settings.postgres_url:
        os.environ["ETF_POSTGRES_URL"] = settings.postgres_url
    from trading.quotes import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
