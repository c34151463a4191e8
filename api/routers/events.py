"""The live event stream: ``WS /api/v1/events`` sends every signal, order, fill and
kill-switch change of the ledger as an :class:`api.schemas.EventOut` JSON message."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, get_args

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from api.deps import WS_UNAUTHORIZED, ApiState, Session, WebSocketSession
from api.events import Subscriber, notice, now
from api.permissions import V1, WEBSOCKET, allowed, permission_of
from api.schemas import EventType

router = APIRouter(tags=["events"])

# How long a new client waits for the app's listener to be LISTENing before it is told so.
LISTENER_WAIT_SECONDS = 5.0
# A stream re-reads its user (revoked token, disabled, demoted) at most this often: not one
# query per message per client.
RECHECK_SECONDS = 10.0
EVENTS = f"{V1}/events"


@router.websocket(EVENTS)
async def events(websocket: WebSocket, session: WebSocketSession) -> None:
    """Messages until the client leaves or its access token expires or is revoked (close
    4401: reconnect with a fresh token). The first message is a ``subscribed`` notice: events
    committed from then on reach this client. ``?types=quote,bar``: only those event types
    (notices always); an unknown type closes the stream (4400) naming it. Whatever the client
    sends is ignored."""
    state: ApiState = websocket.app.state.api
    await websocket.accept()
    types = _types(websocket.query_params.get("types"))
    if isinstance(types, str):
        await websocket.close(WS_BAD_REQUEST, reason=types)
        return
    subscriber = state.events.subscribe(types)
    try:
        await _wait_for_listener(state)
        await websocket.send_text(notice("subscribed", user=session.user.username)
                                  .model_dump_json())
        await _until_first_ends(_forward(websocket, state, session, subscriber),
                                _until_disconnect(websocket))
    except WebSocketDisconnect:
        pass
    finally:
        state.events.unsubscribe(subscriber)


WS_BAD_REQUEST = 4400


def _types(raw: str | None) -> frozenset[str] | str | None:
    """The ``types`` query parameter as a set, or the reason it is refused."""
    if raw is None:
        return None
    types = frozenset(t.strip() for t in raw.split(",") if t.strip())
    unknown = sorted(types - set(get_args(EventType)))
    if unknown:
        return f"unknown event types {unknown}; known: {sorted(get_args(EventType))}"
    return types


async def _wait_for_listener(state: ApiState) -> None:
    # On timeout still subscribed: the listener retries and events flow once it is back.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.events.listening.wait(), LISTENER_WAIT_SECONDS)


async def _until_first_ends(*work: Coroutine[Any, Any, None]) -> None:
    """Run both; when one ends (the stream closed it, or the client left) cancel the other."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    for task in done:
        task.result()          # a send to a client that left raises here


async def _until_disconnect(websocket: WebSocket) -> None:
    # Reading is how a server learns an idle client has gone: it stops holding a queue.
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


async def _forward(websocket: WebSocket, state: ApiState, session: Session,
                   subscriber: Subscriber) -> None:
    """Send the subscriber's messages. Each client has its own task (this one), so a slow
    socket only fills its own queue. The token is checked again before a message once
    :data:`RECHECK_SECONDS` have passed (revoked, user disabled or demoted) and the stream
    closes when it expires."""
    expires = session.claims.expires_at.timestamp()
    checked = time.monotonic()
    while True:
        try:
            event = await asyncio.wait_for(subscriber.next(),
                                           max(expires - now().timestamp(), 0.0))
        except TimeoutError:
            await websocket.close(WS_UNAUTHORIZED, reason="the access token expired")
            return
        if time.monotonic() - checked > RECHECK_SECONDS:
            if not await run_in_threadpool(_still_allowed, state, session):
                await websocket.close(WS_UNAUTHORIZED, reason="the access token was revoked, "
                                      "or its user disabled or no longer allowed")
                return
            checked = time.monotonic()
        await websocket.send_text(event.model_dump_json())


def _still_allowed(state: ApiState, session: Session) -> bool:
    user = state.users.signed_in_user(session.claims.username, session.claims.jti)
    return user is not None and allowed(user.role, permission_of(WEBSOCKET, EVENTS))
