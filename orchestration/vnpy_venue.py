"""The vn.py venue from the settings (``execution.vnpy``: ``VnpySettings``).

``python -m orchestration.vnpy_venue`` runs the venue process (:mod:`trading.vnpy_process`) as
the settings describe it: the deploy/ service's command. The gateway's setting, a secret, goes
to the process in its environment (``VNPY_GATEWAY_SETTING``), never on its command line.
:func:`vnpy_venue` builds the client (:class:`trading.vnpy_venue.VnpyVenue`) for the execution
account. Neither imports Dagster; vn.py is imported only when the process or the client is made.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from orchestration.settings import Settings, load_settings
from rotation.costs import CostModel

if TYPE_CHECKING:
    from trading.vnpy_venue import VnpyVenue

SETTING_ENV = "VNPY_GATEWAY_SETTING"


def process_argv(settings: Settings) -> list[str]:
    """The venue process's arguments for ``settings`` (the gateway's setting not among them)."""
    v = settings.execution.vnpy
    if not v.gateway:
        raise SystemExit("orchestration.vnpy_venue: execution.vnpy.gateway is not set "
                         "(ETF_EXECUTION__VNPY__GATEWAY, e.g. vnpy_ctp:CtpGateway)")
    state_dir = v.state_dir or settings.home / "vnpy_venue"
    argv = ["--gateway", v.gateway, "--setting-env", SETTING_ENV, "--host", v.bind_host or v.host,
            "--rep-port", str(v.rep_port), "--pub-port", str(v.pub_port),
            "--state-dir", str(state_dir)]
    return argv + (["--paper"] if v.paper else [])


def vnpy_venue(settings: Settings, costs: CostModel, *, replay_clock: bool = False
               ) -> VnpyVenue:
    """The client of the configured venue process, for the execution account."""
    from trading.vnpy_venue import VnpyEndpoint, VnpyVenue

    v = settings.execution.vnpy
    endpoint = VnpyEndpoint(settings.execution.account_id, f"tcp://{v.host}:{v.rep_port}",
                            f"tcp://{v.host}:{v.pub_port}", broker_account=v.broker_account)
    return VnpyVenue([endpoint], costs, rpc_timeout=v.rpc_timeout_seconds,
                     ack_timeout=v.ack_timeout_seconds, replay_clock=replay_clock)


def main() -> int:
    settings = load_settings()
    argv = process_argv(settings)
    os.environ[SETTING_ENV] = settings.execution.vnpy.gateway_setting.get_secret_value()
    from trading.vnpy_process import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
