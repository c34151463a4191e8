"""The Dagster layer's assets.

The project uses Dagster APIs that Dagster 1.13 marks beta, on purpose and pinned to
``dagster==1.13.*``: ``BackfillPolicy`` (a multi-year backfill as one run),
``TimeWindowPartitionMapping(allow_nonexistent_upstream_partitions=...)`` (the cross-sections'
look-back before the first partition) and ``dagster_pandera.pandera_schema_to_dagster_type``
(the market-data frames' types), and ``run_failure_sensor`` passes the beta ``owners`` itself.
Their BetaWarnings are silenced here, once, for those names only: `make dev`, `make demo` and
every code server start quietly, and any other beta or deprecated API still warns.
"""

import warnings

import dagster as dg

for _known in (r"Parameter `backfill_policy` of function `asset`",
               r"Parameter `allow_nonexistent_upstream_partitions` of initializer "
               r"`TimeWindowPartitionMapping.__init__`",
               r"Function `pandera_schema_to_dagster_type`",
               # dagster's own run_failure_sensor passes it (sensors/alerts.py)
               r"Parameter `owners` of initializer `SensorDefinition.__init__`"):
    warnings.filterwarnings("ignore", message=_known, category=dg.BetaWarning)
