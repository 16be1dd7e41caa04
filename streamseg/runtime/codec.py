"""Messages to multipart ZeroMQ frames and back, without pickle.

Wire format (version 1), one ZeroMQ multipart message per :mod:`streamseg.runtime.messages` object:

- part 0: a UTF-8 JSON header ``{"v": 1, "msg": BODY, "arrays": [[dtype, shape], ...]}``, where
  BODY is the message with dataclasses written as ``{"@": "TypeName", field: value, ...}``,
  fractions as ``{"/": [num, den]}`` and arrays as ``{"#": i}``, a reference to part ``i + 1``;
- parts 1..n: the raw C-order bytes of each array, sent and received without copies. On an ipc
  link a large array may instead lie in shared memory (:mod:`streamseg.runtime.shm`): its spec is then
  ``[dtype, shape, slot name, byte offset]`` and its part is empty.

:func:`decode` trusts nothing: the header must parse, every type and field must be known, every
array's dtype must be allowed and its byte size must match its shape, and the message's own
checks (``__post_init__``) must pass. Anything else is a :class:`~streamseg.errors.MessageError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import numpy as np

from ..errors import MessageError
from . import shm
from .messages import MESSAGE_TYPES
from .shm import SharedPool

WIRE_VERSION = 1
ALLOWED_DTYPES = frozenset({"uint8", "bool", "float32", "int64"})
MAX_ARRAY_DIMS = 4
MAX_HEADER_BYTES = 1 << 20
"""Headers are small (a Batch of 16 frames is about 2 KB); a bigger one is refused before parsing."""
_TYPES = {cls.__name__: cls for cls in MESSAGE_TYPES}
_HINTS = {cls: typing.get_type_hints(cls) for cls in MESSAGE_TYPES}


def encode(message: Any) -> list[Any]:
    """The multipart frames of ``message``: a JSON header, then one buffer per array."""
    return encode_shared(message, None).parts


@dataclass(frozen=True)
class Encoded:
    """A message's frames, and the shared-memory slots they name (ours, and other workers')."""

    parts: list[Any]
    own: list[str]
    """Slots of this worker's pool (in use while the message is in flight)."""
    foreign: list[str]
    """Slots of other workers, passed on by name."""


def encode_shared(message: Any, pool: SharedPool | None) -> Encoded:
    """:func:`encode`, with the large arrays in shared memory when a ``pool`` is given: an array
    that already lies in a mapped slot is named, any other is copied into a slot of ``pool``."""
    arrays: list[np.ndarray] = []
    body = _to_json(message, arrays)
    specs: list[list[Any]] = []
    parts: list[Any] = []
    own: list[str] = []
    foreign: list[str] = []
    for a in arrays:
        spec: list[Any] = [a.dtype.name, list(a.shape)]
        if pool is not None and a.nbytes >= shm.MIN_BYTES:
            where = shm.REGISTRY.locate(a)
            if where is None or not (pool.owns(where[0]) or shm.exists(where[0])):
                where = pool.put(a)
            (own if pool.owns(where[0]) else foreign).append(where[0])
            specs.append(spec + [where[0], where[1]])
            parts.append(b"")
            continue
        specs.append(spec)
        parts.append(memoryview(a).cast("B") if a.size else b"")
    header = {"v": WIRE_VERSION, "msg": body, "arrays": specs}
    return Encoded([json.dumps(header, separators=(",", ":")).encode(), *parts], own, foreign)


def _to_json(value: Any, arrays: list[np.ndarray]) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {"@": type(value).__name__}
        for f in dataclasses.fields(value):
            out[f.name] = _to_json(getattr(value, f.name), arrays)
        return out
    if isinstance(value, np.ndarray):
        arrays.append(np.ascontiguousarray(value))
        return {"#": len(arrays) - 1}
    if isinstance(value, Fraction):
        return {"/": [value.numerator, value.denominator]}
    if isinstance(value, (tuple, list)):
        return [_to_json(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _buffer(part: Any) -> memoryview:
    return part.buffer if hasattr(part, "buffer") else memoryview(part)


def decode(parts: Sequence[Any], mappings: shm.Mappings | None = None) -> Any:
    """The message in ``parts`` (``bytes`` or ``zmq.Frame``), validated; raises MessageError.

    ``mappings`` resolves arrays in shared memory (None: a message that names one is refused)."""
    if not parts:
        raise MessageError("empty message")
    head = _buffer(parts[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header is {head.nbytes} bytes, more than {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(head))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"header is not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("header nests too deeply") from None
    if not isinstance(header, dict) or header.get("v") != WIRE_VERSION:
        raise MessageError(f"header has no supported version (want v={WIRE_VERSION})")
    specs = header.get("arrays")
    if not isinstance(specs, list) or len(specs) != len(parts) - 1:
        raise MessageError(f"header announces {len(specs) if isinstance(specs, list) else '?'} arrays, "
                           f"message carries {len(parts) - 1}")
    arrays = [_array(spec, _buffer(part), i, mappings) for i, (spec, part) in enumerate(zip(specs, parts[1:]))]
    try:
        return _from_json(header.get("msg"), arrays, top=True)
    except MessageError:
        raise
    except (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError, RecursionError) as exc:
        raise MessageError(f"malformed message body: {type(exc).__name__}: {exc}") from None


def _array(spec: Any, buffer: memoryview, i: int, mappings: shm.Mappings | None) -> np.ndarray:
    if (not isinstance(spec, list) or len(spec) not in (2, 4) or spec[0] not in ALLOWED_DTYPES
            or not isinstance(spec[1], list) or len(spec[1]) > MAX_ARRAY_DIMS
            or not all(type(d) is int and d >= 0 for d in spec[1])):
        raise MessageError(f"array {i}: bad spec {str(spec)[:80]}")
    dtype = np.dtype(spec[0])
    expected = math.prod(spec[1]) * dtype.itemsize
    if len(spec) == 4:
        if mappings is None:
            raise MessageError(f"array {i}: in shared memory, on a link without it")
        if buffer.nbytes:
            raise MessageError(f"array {i}: both in shared memory and in the message")
        buffer = mappings.view(spec[2], spec[3], expected)
    if expected != buffer.nbytes:
        raise MessageError(f"array {i}: {spec[0]}{spec[1]} needs {expected} bytes, got {buffer.nbytes}")
    return np.frombuffer(buffer, dtype=dtype).reshape(spec[1]) if expected else np.zeros(spec[1], dtype)


def _from_json(value: Any, arrays: list[np.ndarray], top: bool = False) -> Any:
    if isinstance(value, dict):
        if "#" in value:
            index = value["#"]
            if type(index) is not int or not 0 <= index < len(arrays):
                raise MessageError(f"bad array reference {index!r}")
            return arrays[index]
        if "/" in value:
            num, den = value["/"]
            if type(num) is not int or type(den) is not int or den <= 0:
                raise MessageError(f"bad fraction {value['/']!r}")
            return Fraction(num, den)
        cls = _TYPES.get(value.get("@"))
        if cls is None:
            raise MessageError(f"unknown message type {str(value.get('@'))[:40]!r}")
        return _build(cls, value, arrays)
    if top:
        raise MessageError("message body is not a typed object")
    if isinstance(value, list):
        return tuple(_from_json(v, arrays) for v in value)
    return value


def _build(cls: type, value: dict[str, Any], arrays: list[np.ndarray]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    extra = set(value) - fields - {"@"}
    if extra:
        raise MessageError(f"{cls.__name__}: unknown fields {sorted(extra)[:5]}")
    kwargs = {}
    for name, hint in _HINTS[cls].items():
        if name not in value:
            continue  # a missing field takes its default, or the constructor says it is missing
        item = _from_json(value[name], arrays)
        _check_type(cls.__name__, name, item, hint)
        kwargs[name] = item
    return cls(**kwargs)


def _check_type(owner: str, name: str, item: Any, hint: Any) -> None:
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    for option in options:
        if option is type(None) and item is None:
            return
        origin = typing.get_origin(option)
        if origin is tuple:
            inner = typing.get_args(option)[0]
            if isinstance(item, tuple) and all(isinstance(x, inner) for x in item):
                return
        elif option in (int, str, bool) and type(item) is option:
            return
        elif option is float and type(item) in (int, float):
            return
        elif isinstance(option, type) and option not in (int, str, bool, float) and isinstance(item, option):
            return
    raise MessageError(f"{owner}.{name}: {type(item).__name__} is not {hint}")


_UnionType = type(int | str)
