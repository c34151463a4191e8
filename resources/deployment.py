"""Resources the deployment fixes: no launch config can change them.

A ``ConfigurableResource`` handed to ``dg.Definitions`` as it is exposes every field as run
config: whoever reaches the Dagster UI or GraphQL could launch a run with another ledger URL,
the kill switch off or the clock moved, and GraphQL shows the configured values (passwords in
URLs included). :func:`fixed` binds the resource as the deployment built it (settings from the
environment and secrets, read when the code location loads, i.e. when a run worker starts) to a
definition whose config schema is empty, so Dagster refuses any ``resources.<key>.config`` a run
supplies, and the UI shows no configured value at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import dagster as dg

T = TypeVar("T")

_DESCRIPTION = "Fixed by the deployment (environment and secrets); not launch-configurable."


def _yield_copy(resource: dg.ConfigurableResource) -> Any:
    def _fn(context: dg.InitResourceContext) -> Iterator[Any]:
        # A copy per run: its lifecycle (setup, teardown) never touches another run's.
        with resource.model_copy().yield_for_execution(context) as value:
            yield value

    return _fn


class FixedResource(dg.ResourceDefinition):
    """A resource with no run config; ``deployed`` is the object the deployment built."""

    def __init__(self, resource: dg.ConfigurableResource) -> None:
        super().__init__(resource_fn=_yield_copy(resource), config_schema=dg.Shape({}),
                         description=_DESCRIPTION)
        self.deployed = resource


class FixedIOManager(dg.IOManagerDefinition):
    """An IO manager with no run config (a launch could otherwise point storage elsewhere
    and feed the gate a forged target portfolio)."""

    def __init__(self, io_manager: dg.ConfigurableIOManager) -> None:
        super().__init__(resource_fn=_yield_copy(io_manager), config_schema=dg.Shape({}),
                         description=_DESCRIPTION)
        self.deployed = io_manager


def fixed(resource: dg.ConfigurableResource) -> dg.ResourceDefinition:
    if isinstance(resource, dg.ConfigurableIOManager):
        return FixedIOManager(resource)
    return FixedResource(resource)


def deployed(defs: dg.Definitions, key: str, kind: type[T]) -> T:
    """The resource object behind ``key`` in ``defs`` (for scripts and tests that call it
    outside a run)."""
    definition = (defs.resources or {}).get(key)
    value = getattr(definition, "deployed", definition)
    if not isinstance(value, kind):
        raise TypeError(f"resource {key!r} is {type(value).__name__}, not {kind.__name__}")
    return value
