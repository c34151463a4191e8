"""Paging over the lists the ledger returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from api.deps import Paging
from api.schemas import Page

S = TypeVar("S")
T = TypeVar("T")


def page_of(items: Sequence[S], paging: Paging, convert: Callable[[S], T]) -> Page[T]:
    window = items[paging.offset:paging.offset + paging.limit]
    return Page[T](items=[convert(i) for i in window], total=len(items), limit=paging.limit,
                   offset=paging.offset)
