"""The format of a Redis cache entry: values that cannot execute code, behind an HMAC tag.

An entry is ``MAGIC | tag | payload``. ``tag`` is HMAC-SHA256 under the cache secret over the
magic, the Redis key and the payload, so an entry planted without the secret, altered, cut short
or copied to another key never verifies; nothing in it is parsed before it does.

The payload holds only data: a JSON manifest (scalars, lists, tuples, dicts and the few
dataclasses the pipeline caches, by field) and Arrow IPC streams for pandas frames, series and
indexes. Decoding builds pandas objects and the registered dataclasses and nothing else, so even
an entry signed with a leaked secret can at worst hold wrong numbers, never run code (unlike the
pickle it replaces). A value of any other type is refused with :class:`UncacheableValue`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
from collections.abc import Callable
from functools import cache
from typing import Any

import pandas as pd
import pyarrow as pa

MAGIC = b"etf-cache/1\n"   # format and version: anything else (a pickle, say) is not read
TAG_BYTES = hashlib.sha256().digest_size
_HEADER = struct.Struct(">I")   # manifest length
_SCALARS = (type(None), bool, int, float, str)   # exact types: numpy scalars would not survive


class UncacheableValue(TypeError):
    """The value (or a part of it, named by its path) has no safe, exact encoding."""


class RejectedEntry(ValueError):
    """A stored entry that is not a verified entry of this format (the message says why)."""


@cache
def cacheable_dataclasses() -> dict[str, Any]:
    """The composite values the pipeline caches: ``bars`` (LoadResult) and
    ``research_panels`` (ResearchData with its MarketPanels, Universe and Instruments)."""
    from rotation.backtest import MarketPanels
    from rotation.bars import Instrument, LoadResult
    from rotation.walkforward import ResearchData, Universe

    return {cls.__name__: cls for cls in (LoadResult, ResearchData, MarketPanels, Universe,
                                          Instrument)}


# -- sealing ------------------------------------------------------------------------------------
def tag(secret: bytes, key: str, payload: bytes) -> bytes:
    # The key is length-prefixed so no (key, payload) pair can pose as another.
    encoded_key = key.encode()
    message = MAGIC + _HEADER.pack(len(encoded_key)) + encoded_key + payload
    return hmac.new(secret, message, hashlib.sha256).digest()


def seal(secret: bytes, key: str, value: object) -> bytes:
    payload = encode(value)
    return MAGIC + tag(secret, key, payload) + payload


def unseal(secret: bytes, key: str, entry: bytes) -> Any:
    """The value of a verified entry; :class:`RejectedEntry` for anything else."""
    if not entry.startswith(MAGIC):
        kind = "a pickle" if entry[:1] == b"\x80" else "unknown format"
        raise RejectedEntry(f"not a signed cache entry ({kind})")
    stored = entry[len(MAGIC):len(MAGIC) + TAG_BYTES]
    payload = entry[len(MAGIC) + TAG_BYTES:]
    if len(stored) != TAG_BYTES:
        raise RejectedEntry("truncated entry")
    if not hmac.compare_digest(stored, tag(secret, key, payload)):
        raise RejectedEntry("integrity tag does not verify (altered, truncated, moved from "
                            "another key or written with another secret)")
    try:
        return decode(payload)
    except (ValueError, KeyError, TypeError, IndexError, struct.error, pa.ArrowException) as exc:
        # Verified but unreadable: written by another version of this code.
        raise RejectedEntry(f"verified entry does not decode: {type(exc).__name__}: {exc}"
                            ) from exc


# -- payload ------------------------------------------------------------------------------------
def encode(value: object) -> bytes:
    blobs: list[bytes] = []
    root = _encode(value, blobs, "value")
    manifest = json.dumps({"root": root, "blobs": [len(b) for b in blobs]},
                          separators=(",", ":")).encode()
    return _HEADER.pack(len(manifest)) + manifest + b"".join(blobs)


def decode(payload: bytes) -> Any:
    (length,) = _HEADER.unpack_from(payload)
    manifest = json.loads(payload[_HEADER.size:_HEADER.size + length])
    blobs, offset = [], _HEADER.size + length
    for size in manifest["blobs"]:
        blobs.append(payload[offset:offset + size])
        offset += size
    if offset != len(payload):
        raise ValueError(f"payload holds {len(payload)} bytes, the manifest {offset}")
    return _decode(manifest["root"], blobs)


def _encode(value: object, blobs: list[bytes], path: str) -> Any:
    """A JSON node: a scalar as itself, anything else as an object whose ``t`` names its kind."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return {"t": type(value).__name__,
                "items": [_encode(v, blobs, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict) and type(value) is dict:
        return {"t": "dict", "items": [[_encode(k, blobs, f"{path} key"),
                                        _encode(v, blobs, f"{path}[{k!r}]")]
                                       for k, v in value.items()]}
    if isinstance(value, pd.Index) or type(value) in (pd.DataFrame, pd.Series):
        return _encode_pandas(value, blobs, path)
    if cacheable_dataclasses().get(type(value).__name__) is type(value):
        return _encode_dataclass(value, blobs, path)
    raise UncacheableValue(
        f"cannot cache {path} of type {type(value).__module__}.{type(value).__qualname__}: the "
        "cache stores only pandas DataFrame/Series/Index, None/bool/int/float/str, list, tuple, "
        f"dict and the dataclasses {sorted(cacheable_dataclasses())}")


def _encode_dataclass(value: Any, blobs: list[bytes], path: str) -> dict[str, Any]:
    return {"t": "dataclass", "name": type(value).__name__,
            "fields": {f.name: _encode(getattr(value, f.name), blobs, f"{path}.{f.name}")
                       for f in dataclasses.fields(value)}}


def _decode(node: Any, blobs: list[bytes]) -> Any:
    if not isinstance(node, dict):
        return node
    return _DECODERS[node["t"]](node, blobs)


def _decode_dataclass(node: dict[str, Any], blobs: list[bytes]) -> Any:
    cls = cacheable_dataclasses()[node["name"]]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(node["fields"]) != names:
        raise ValueError(f"{cls.__name__} fields changed: stored {sorted(node['fields'])}")
    return cls(**{k: _decode(v, blobs) for k, v in node["fields"].items()})


# -- pandas through Arrow -----------------------------------------------------------------------
def _encode_pandas(value: pd.DataFrame | pd.Series | pd.Index, blobs: list[bytes],
                   path: str) -> dict[str, Any]:
    node: dict[str, Any] = {"blob": len(blobs)}
    if isinstance(value, pd.DataFrame):
        frame, node["t"] = value, "frame"
    elif isinstance(value, pd.Series):
        frame, node["t"] = pd.DataFrame({"values": value}), "series"
        node["name"] = _encode(value.name, blobs, f"{path}.name")
    else:
        frame, node["t"] = pd.DataFrame(index=value), "index"
    # Arrow keeps every index and dtype in its pandas metadata except a DatetimeIndex's freq.
    node["freq"] = getattr(frame.index, "freqstr", None)
    blobs.append(_arrow_bytes(frame, path))
    return node


def _arrow_bytes(frame: pd.DataFrame, path: str) -> bytes:
    try:
        table = pa.Table.from_pandas(frame)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise UncacheableValue(f"cannot cache {path}: Arrow refuses it ({exc})") from exc
    _refuse_retyped_objects(frame, table, path)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _refuse_retyped_objects(frame: pd.DataFrame, table: pa.Table, path: str) -> None:
    """Object columns (and index levels) come back as objects only when they hold strings (or
    nothing): Arrow would return timestamps or numbers in them as a typed column."""
    dtypes = list(frame.dtypes)
    if not isinstance(frame.index, pd.RangeIndex):   # a RangeIndex is metadata, not a column
        dtypes += [frame.index.get_level_values(i).dtype for i in range(frame.index.nlevels)]
    for field, dtype in zip(table.schema, dtypes, strict=True):
        if pd.api.types.is_object_dtype(dtype) and not (pa.types.is_string(field.type)
                                                         or pa.types.is_null(field.type)):
            raise UncacheableValue(
                f"cannot cache {path}: object column {field.name!r} holds {field.type} values, "
                "which would not come back as objects")


def _read_frame(node: dict[str, Any], blobs: list[bytes]) -> pd.DataFrame:
    frame = pa.ipc.open_stream(blobs[node["blob"]]).read_all().to_pandas()
    if node["freq"] is not None:
        frame.index = pd.DatetimeIndex(frame.index, freq=node["freq"])
    return frame


def _read_series(node: dict[str, Any], blobs: list[bytes]) -> pd.Series:
    return _read_frame(node, blobs)["values"].rename(_decode(node["name"], blobs))


_DECODERS: dict[str, Callable[[dict[str, Any], list[bytes]], Any]] = {
    "list": lambda node, blobs: [_decode(v, blobs) for v in node["items"]],
    "tuple": lambda node, blobs: tuple(_decode(v, blobs) for v in node["items"]),
    "dict": lambda node, blobs: {_decode(k, blobs): _decode(v, blobs) for k, v in node["items"]},
    "dataclass": _decode_dataclass,
    "frame": _read_frame,
    "series": _read_series,
    "index": lambda node, blobs: _read_frame(node, blobs).index,
}
