"""Liveness: the process answers (no database round trip, so a probe never piles up on it)."""

from __future__ import annotations

from importlib.metadata import version

from fastapi import APIRouter

from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", summary="The service is up")
def health() -> Health:
    return Health(version=version("etf-rotation"))
