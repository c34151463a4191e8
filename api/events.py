"""The live event stream's source: one PostgreSQL ``LISTEN ledger_events`` connection per app
(ledger migration 0005's triggers notify it on every signal, order, fill and kill-switch
write; the quote relay, trading.quotes, on every tick and 1-minute bar) fanned out to every
connected client through a bounded queue of its own, so a slow client loses events (and is
told how many) instead of holding up the others."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa

from api.schemas import EventOut, EventType

log = logging.getLogger(__name__)

CHANNEL = "ledger_events"
# Events a client may lag behind before newer ones are dropped for it.
CLIENT_QUEUE = 256
RECONNECT_SECONDS = 1.0
# The quote relay (trading.quotes) notifies the same channel with ``quotes`` and ``bars``.
EVENT_TYPES: dict[str, EventType] = {"signals": "signal", "orders": "order", "fills": "fill",
                                     "accounts": "kill_switch", "quotes": "quote",
                                     "bars": "bar"}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def notice(what: str, **payload: Any) -> EventOut:
    return EventOut(type="notice", entity="stream", at=now(), payload={"notice": what, **payload})


def event_of(raw: str) -> EventOut | None:
    """The message of a notification from migration 0005's trigger (None if unreadable)."""
    try:
        body = json.loads(raw)
        kind = EVENT_TYPES[body["table"]]
        return EventOut(type=kind, entity=body["table"], id=body.get("id"),
                        account=body.get("account"), at=body["at"],
                        payload={"op": body.get("op"), "status": body.get("status"),
                                 **body.get("row", {})})
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable ledger event skipped: %.200s", raw)
        return None


def libpq_url(postgres_url: str) -> str:
    """The ledger's SQLAlchemy URL (postgresql+psycopg://) as psycopg connects to it."""
    url = sa.engine.make_url(postgres_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[EventOut] = field(
        default_factory=lambda: asyncio.Queue(maxsize=CLIENT_QUEUE))
    dropped: int = 0
    # The event types this client asked for (``?types=``); None: all. Notices always come.
    types: frozenset[str] | None = None

    def offer(self, event: EventOut) -> None:
        if self.types is not None and event.type != "notice" and event.type not in self.types:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    async def next(self) -> EventOut:
        """The next message; once the client reads again after falling behind, first a notice
        of how many newer events it lost (the queued older ones follow)."""
        if self.dropped:
            missed, self.dropped = self.dropped, 0
            return notice("dropped", count=missed,
                          detail="this client fell behind; read the REST API to catch up")
        return await self.queue.get()


@dataclass(eq=False)
class EventHub:
    """Fan-out from the one listener to the clients; lives in the app's event loop."""

    subscribers: set[Subscriber] = field(default_factory=set)
    listening: asyncio.Event = field(default_factory=asyncio.Event)

    def subscribe(self, types: frozenset[str] | None = None) -> Subscriber:
        subscriber = Subscriber(types=types)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def publish(self, event: EventOut) -> None:
        for subscriber in list(self.subscribers):
            subscriber.offer(event)


async def listen(conninfo: str, hub: EventHub) -> None:
    """LISTEN until cancelled; a lost connection is retried, and clients are told that events
    may have been missed meanwhile."""
    while True:
        try:
            await _listen_once(conninfo, hub)
        except psycopg.OperationalError as exc:
            if hub.listening.is_set():
                hub.listening.clear()
                hub.publish(notice("ledger_connection_lost",
                                   detail="events may be missed until it is back"))
            log.warning("ledger event listener: %s; retrying in %.0f s", exc, RECONNECT_SECONDS)
            await asyncio.sleep(RECONNECT_SECONDS)


async def _listen_once(conninfo: str, hub: EventHub) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute(f"LISTEN {CHANNEL}")
        hub.listening.set()
        async for notification in conn.notifies():
            event = event_of(notification.payload)
            if event is not None:
                hub.publish(event)
