"""Pages of the API's lists: a list held in memory (:func:`page_of`), or a page the ledger
read in the database with its total (:func:`page_from`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from api.deps import Paging
from api.schemas import Page

S = TypeVar("S")
T = TypeVar("T")


def page_of(items: Sequence[S], paging: Paging, convert: Callable[[S], T]) -> Page[T]:
    window = items[paging.offset:paging.offset + paging.limit]
    return Page[T](items=[convert(i) for i in window], total=len(items), limit=paging.limit,
                   offset=paging.offset)


def page_from(found: tuple[Sequence[S], int], paging: Paging, convert: Callable[[S], T]
              ) -> Page[T]:
    """A page the database cut (its rows and how many match in all)."""
    rows, total = found
    return Page[T](items=[convert(r) for r in rows], total=total, limit=paging.limit,
                   offset=paging.offset)


def fields_of(record: Any) -> dict[str, Any]:
    """A dataclass record's fields, not copied (``dataclasses.asdict`` deep-copies every
    value, the largest cost of a page of fifty orders)."""
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
