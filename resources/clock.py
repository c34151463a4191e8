"""The clock the execution stage reads: now, or a pinned date (replays, the demo on a historical
sample, tests). Freshness of signals and what the paper venue can see both follow it."""

import dagster as dg
import pandas as pd


class ClockResource(dg.ConfigurableResource):
    """``as_of`` (``ETF_EXECUTION__AS_OF``, YYYY-MM-DD) pins the clock to the end of that day."""

    as_of: str | None = None
    timezone: str = "Asia/Shanghai"

    def now(self) -> pd.Timestamp:
        if self.as_of:
            return (pd.Timestamp(self.as_of).tz_localize(self.timezone)
                    + pd.Timedelta(hours=23, minutes=59))
        return pd.Timestamp.now(tz=self.timezone)
