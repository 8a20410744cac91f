"""The parameter server's wire format: a small JSON header frame, then at most one frame of raw
array bytes. Never pickled; every field of every received message is validated before anyone
acts on it, and a rejected message raises ``WireError`` naming the problem in one short line.

A message is a list of frames for ``socket.send_multipart(frames, copy=False)``:

- frame 0: the header, a UTF-8 JSON object of at most ``HEADER_MAX`` bytes with ``"type"``
  and the fields ``MESSAGE_TYPES`` lists for that type;
- frame 1, only for the types that carry an array (start, grad, params): the array's bytes in
  C order and native (little-endian) byte order, described by the header's dtype, shape and
  nbytes.

JSON is Python's: a grad's loss may be NaN or Infinity (a diverging worker must still report
its step); every other number is a finite non-negative integer.

numpy only: zmq frames are read through the buffer protocol, so this module imports no zmq.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, get_origin

import numpy as np

HEADER_MAX = 4096  # bytes; a header is a handful of numbers, so anything longer is hostile
DEFAULT_DTYPES: tuple[str, ...] = ("float32",)  # the flat parameter buffer is float32
MAX_INT = 2**63 - 1  # every integer field must fit an int64 on the receiving side
MAX_NDIM = 32


class MessageSpec(NamedTuple):
    """One row of ``MESSAGE_TYPES``: the fields a message must have and may have (name →
    Python type; ``list[int]`` is a list of ints), and whether an array frame follows."""

    required: Mapping[str, Any]
    optional: Mapping[str, Any]
    payload: bool


_ARRAY: dict[str, Any] = {"dtype": str, "shape": list[int], "nbytes": int}


def _spec(required: dict[str, Any], optional: dict[str, Any] | None = None, payload: bool = False) -> MessageSpec:
    return MessageSpec(MappingProxyType(required), MappingProxyType(optional or {}), payload)


MESSAGE_TYPES: Mapping[str, MessageSpec] = MappingProxyType({
    # worker → server: join; host and pid only name the worker in the server's log
    "hello": _spec({"version": str, "config_hash": str, "numel": int}, {"host": str, "pid": int}),
    # server → worker: admitted with a rank at a step (``start`` then says the slice it computes)
    "welcome": _spec({"rank": int, "world": int, "step": int}),
    # server → worker: not admitted, and why (what differs)
    "refuse": _spec({"reason": str}),
    # server → worker: the parameters to start from at ``step``, and the slice of every batch
    # this worker computes from then on: ``rank`` of ``world``, in membership generation ``gen``
    "start": _spec({"step": int, "rank": int, "world": int, "gen": int, **_ARRAY}, payload=True),
    # worker → server: this worker's gradient sum and local loss for ``step``, cut for
    # membership ``gen`` (``stop`` = 1 when the worker was asked to stop: SIGTERM/SIGINT)
    "grad": _spec({"step": int, "rank": int, "gen": int, "loss": float, **_ARRAY}, {"stop": int}, payload=True),
    # server → worker: the parameters after ``step``, the global loss, whether to stop, and
    # the slice of the next step (``rank`` of ``world``, generation ``gen``)
    "params": _spec({"step": int, "rank": int, "world": int, "gen": int, **_ARRAY}, {"loss": float, "stop": int},
                    payload=True),
    # server → worker: the workers of ``step`` changed (one was lost): compute it again, as
    # ``rank`` of ``world``, generation ``gen``; gradients of an older generation are dropped
    "recut": _spec({"step": int, "rank": int, "world": int, "gen": int}),
    # both ways: still alive
    "heartbeat": _spec({"rank": int}, {"step": int}),
    # server → worker: the job ends; ``code`` is the exit code
    "stop": _spec({"reason": str, "code": int}),
    # server → worker: the job goes on without this worker (it was silent too long, or cut off)
    "drop": _spec({"reason": str}),
    # worker → server: leaving cleanly
    "bye": _spec({"rank": int}),
})

# Integer fields whose range is narrower than [0, MAX_INT].
_INT_RANGES: dict[str, tuple[int, int]] = {"world": (1, MAX_INT), "code": (0, 255)}

_FIELDS = frozenset({"type"}).union(*(set(s.required) | set(s.optional) for s in MESSAGE_TYPES.values()))

# The short keys ``WireError.reason`` takes: what ``Counters`` counts drops by.
REASONS = ("frames", "header-size", "utf8", "json", "not-object", "type", "missing-field",
           "unknown-field", "field-type", "value", "dtype", "shape", "nbytes", "payload-size",
           "step", "mismatch")


class WireError(ValueError):
    """A message was rejected. ``str(err)`` is one short line naming the problem (safe to log:
    peer-supplied values appear only through truncated ``repr``); ``err.reason`` is one of
    ``REASONS``, a stable key to count drops by."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _short(value: Any, limit: int = 40) -> str:
    # repr escapes newlines and control characters, so a hostile value cannot forge log lines.
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int, and True is not a rank


def _check_int(name: str, value: int) -> None:
    lo, hi = _INT_RANGES.get(name, (0, MAX_INT))
    if not lo <= value <= hi:
        raise WireError("value", f"{name} {_short(value)} out of range [{lo}, {hi}]")


def _check_str(name: str, value: str) -> None:
    # Strings end up in log lines: no control characters (a newline forges a line) and no lone
    # surrogates (which JSON escapes allow and which crash a UTF-8 log handler).
    for ch in value:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            raise WireError("value", f"{name} has a control or surrogate character {_short(ch)}")


def _check_field(header: dict[str, Any], name: str, kind: Any) -> None:
    value = header[name]
    if kind is float:
        # An int is a fine float; loss may be non-finite (NaN, inf) so that a diverging
        # worker's step reaches the server, which stops the job naming it, as the MPI path does.
        if type(value) is float:
            return
        if _is_int(value):
            try:
                header[name] = float(value)
            except OverflowError:
                raise WireError("value", f"{name} {_short(value)} out of range for a float") from None
            return
        raise WireError("field-type", f"{name} is {type(value).__name__}, expected float")
    if kind is int:
        if not _is_int(value):
            raise WireError("field-type", f"{name} is {type(value).__name__}, expected int")
        _check_int(name, value)
    elif kind is str:
        if type(value) is not str:
            raise WireError("field-type", f"{name} is {type(value).__name__}, expected str")
        _check_str(name, value)
    elif get_origin(kind) is list:  # list[int]: only shape
        if type(value) is not list:
            raise WireError("field-type", f"{name} is {type(value).__name__}, expected list of int")
        if len(value) > MAX_NDIM:
            raise WireError("shape", f"{name} has {len(value)} dimensions, at most {MAX_NDIM}")
        for i, dim in enumerate(value):
            if not _is_int(dim) or not 0 <= dim <= MAX_INT:
                raise WireError("shape", f"{name}[{i}] is {_short(dim, 24)}, expected a non-negative int")
    else:  # pragma: no cover - MESSAGE_TYPES holds only the kinds above
        raise AssertionError(f"unknown field kind {kind!r}")


def _check_header(header: dict[str, Any], payload_nbytes: int | None, dtypes: Sequence[str]) -> MessageSpec:
    """Everything about one message except ``expect``: type, fields, values, and the array
    description against the payload. ``payload_nbytes`` is None when no payload frame came."""
    if isinstance(dtypes, str):  # ("float32") is a str, and "float" would be in it
        dtypes = (dtypes,)
    kind = header.get("type")
    if kind is None:
        raise WireError("type", "header has no type")
    if type(kind) is not str or kind not in MESSAGE_TYPES:
        raise WireError("type", f"unknown message type {_short(kind)}")
    spec = MESSAGE_TYPES[kind]
    missing = [name for name in spec.required if name not in header]
    if missing:
        raise WireError("missing-field", f"{kind} message lacks {', '.join(missing)}")
    unknown = [name for name in header if name != "type" and name not in spec.required and name not in spec.optional]
    if unknown:
        shown = ", ".join(_short(name, 24) for name in unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise WireError("unknown-field", f"{kind} message has unknown field {shown}")
    for name, field_kind in spec.required.items():
        _check_field(header, name, field_kind)
    for name, field_kind in spec.optional.items():
        if name in header:
            _check_field(header, name, field_kind)
    if "world" in header and header["rank"] >= header["world"]:
        raise WireError("value", f"rank {header['rank']} is not below world {header['world']}")

    if not spec.payload:
        if payload_nbytes is not None:
            raise WireError("frames", f"{kind} message carries no payload, got 2 frames")
        return spec
    if payload_nbytes is None:
        raise WireError("frames", f"{kind} message needs a payload frame, got 1 frame")
    dtype = header["dtype"]
    if dtype not in dtypes:  # checked before np.dtype ever sees a string from the network
        raise WireError("dtype", f"dtype {_short(dtype)} not allowed (allowed: {', '.join(dtypes)})")
    size = math.prod(header["shape"]) * np.dtype(dtype).itemsize  # Python ints: no overflow
    if size != header["nbytes"]:
        raise WireError("nbytes", f"shape {_short(header['shape'])} of {dtype} is {size} bytes, "
                                  f"nbytes says {header['nbytes']}")
    if payload_nbytes != size:
        raise WireError("payload-size", f"payload is {payload_nbytes} bytes, nbytes says {size}")
    return spec


def _check_expect(header: dict[str, Any], expect: Mapping[str, Any]) -> None:
    for name, wanted in expect.items():
        if name not in _FIELDS:
            # A typo here would silently disable a check: fail the caller, not the message.
            raise ValueError(f"expect: unknown field {name!r}; fields are {', '.join(sorted(_FIELDS))}")
        if name not in header:
            continue  # a field this type does not carry (the optional step of a heartbeat)
        value = header[name]
        if isinstance(wanted, (set, frozenset)):
            # any(==) rather than ``in``: a shape is a list, which a set cannot hash
            if any(value == w for w in wanted):
                continue
            shown = "one of " + ", ".join(str(w) for w in sorted(wanted, key=str))
        elif value == wanted:
            continue
        else:
            shown = str(wanted)
        if name == "step":
            raise WireError("step", f"out-of-order step {value}, expected {shown}")
        if name == "type":
            raise WireError("mismatch", f"unexpected {_short(value)} message, expected {shown}")
        raise WireError("mismatch", f"wrong {name} {_short(value)}, expected {shown[:60]}")


def _view(frame: Any, index: int) -> memoryview:
    # zmq.Frame, bytes, bytearray and memoryview all export the buffer protocol: a zmq.Frame
    # received with copy=False gives a view of libzmq's message memory, not a copy.
    try:
        view = memoryview(frame)
    except TypeError:
        raise WireError("frames", f"frame {index} is {type(frame).__name__}, not bytes") from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise WireError("frames", f"frame {index} is not a contiguous buffer")
        view = view.cast("B") if view.nbytes else memoryview(b"")
    return view


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of duplicate keys; another reader might keep the first. Refuse both.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise WireError("json", f"duplicate key {_short(key, 24)} in header")
        result[key] = value
    return result


_type = type  # encode's first parameter shadows the builtin: it is named as the header field


def encode(type: str, /, payload: np.ndarray | None = None, *, dtypes: Sequence[str] = DEFAULT_DTYPES,
           **fields: Any) -> list[bytes | memoryview]:
    """The frames of one message, for ``socket.send_multipart(frames, copy=False)``.

    ``fields`` are the header fields ``MESSAGE_TYPES[type]`` lists, except dtype, shape and
    nbytes, which come from ``payload`` (required for start, grad and params; a C-contiguous,
    native-order array of one of ``dtypes``). The payload frame is a memoryview of the array's
    own memory, not a copy: with ``copy=False``, zmq may still be reading it after
    ``send_multipart`` returns (above ``zmq.COPY_THRESHOLD`` bytes), so don't write into the
    array until the peer has answered. Raises WireError if the message would be rejected by
    ``decode`` (the sender learns of its mistake, not the receiver).
    """
    spec = MESSAGE_TYPES.get(type) if _type(type) is str else None
    if spec is None:
        raise WireError("type", f"unknown message type {_short(type)}")
    if spec.payload and payload is None:
        raise WireError("frames", f"{type} message needs a payload array")
    if not spec.payload and payload is not None:
        raise WireError("frames", f"{type} message carries no payload")
    header: dict[str, Any] = {"type": type}
    for name, value in fields.items():
        # numpy scalars (a step from an int64 counter) become the JSON number they stand for.
        header[name] = value.item() if isinstance(value, np.generic) else value
    if payload is not None:
        if not isinstance(payload, np.ndarray):
            raise WireError("frames", f"payload is {_type(payload).__name__}, expected a numpy array")
        given = sorted({"dtype", "shape", "nbytes"} & fields.keys())
        if given:
            raise WireError("unknown-field", f"{', '.join(given)} come from the payload array, not fields")
        if not payload.flags.c_contiguous:
            raise WireError("frames", "payload array is not C-contiguous (np.ascontiguousarray it)")
        if not payload.dtype.isnative:
            raise WireError("dtype", f"payload dtype {payload.dtype.str} is not in native byte order")
        header.update(dtype=payload.dtype.name, shape=[int(d) for d in payload.shape], nbytes=int(payload.nbytes))
    _check_header(header, None if payload is None else int(payload.nbytes), dtypes)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(raw) > HEADER_MAX:
        raise WireError("header-size", f"header is {len(raw)} bytes, at most {HEADER_MAX}")
    if payload is None:
        return [raw]
    # A 1-D byte view of the array's own memory (reshape of a C-contiguous array is a view);
    # the dtype was checked above, so no object array gets here.
    return [raw, memoryview(payload.reshape(-1).view(np.uint8))]


def decode(frames: Sequence[Any], expect: Mapping[str, Any] | None = None, *,
           dtypes: Sequence[str] = DEFAULT_DTYPES) -> tuple[dict[str, Any], memoryview | None]:
    """Validate one received message; returns (header, payload), payload a memoryview of the
    array frame (no copy) or None. Raises WireError for anything wrong with it.

    ``frames`` are what ``recv_multipart`` returned (zmq.Frame with ``copy=False``, else bytes),
    after a ROUTER's identity frame is removed. Checked, in this order: 1 or 2 frames; header
    size; UTF-8; a JSON object without duplicate keys; known type; required fields present,
    no others; exact field types (bool is not int, int is accepted as float and returned as
    float); ints non-negative and in range, strings free of control characters; dtype in
    ``dtypes``; shape a list of non-negative ints; product(shape) * itemsize == nbytes ==
    payload length; then ``expect``: each field the message carries is compared with the
    expected value (a set means any of its members), so ``expect={"step": 5}`` rejects a
    message for step 7 as "out-of-order step 7, expected 5". An unknown field name in
    ``expect`` is the caller's bug and raises ValueError.

    Bound the size of what zmq accepts with the socket's ``zmq.MAXMSGSIZE``: by the time
    decode runs, the bytes are already in memory.
    """
    try:
        count = len(frames)
    except TypeError:
        raise WireError("frames", f"frames is {type(frames).__name__}, not a list") from None
    if count not in (1, 2):
        raise WireError("frames", f"{count} frames, expected 1 or 2")
    head = _view(frames[0], 0)
    if head.nbytes > HEADER_MAX:
        raise WireError("header-size", f"header is {head.nbytes} bytes, at most {HEADER_MAX}")
    if head.nbytes == 0:
        raise WireError("header-size", "header is empty")
    try:
        text = bytes(head).decode("utf-8")
    except UnicodeDecodeError as err:
        raise WireError("utf8", f"header is not UTF-8 (byte {err.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as err:
        raise WireError("json", f"header is not JSON ({err.msg} at char {err.pos})") from None
    except RecursionError:
        raise WireError("json", "header JSON is nested too deeply") from None
    except ValueError as err:  # e.g. an integer literal too long to convert
        raise WireError("json", f"header is not usable JSON ({_short(str(err), 60)})") from None
    if type(header) is not dict:
        raise WireError("not-object", f"header is a JSON {type(header).__name__}, not an object")
    payload = _view(frames[1], 1) if count == 2 else None
    _check_header(header, None if payload is None else payload.nbytes, dtypes)
    if expect:
        _check_expect(header, expect)
    return header, payload


def _as_array(dest: np.ndarray, payload: Any) -> np.ndarray:
    if not (dest.flags.c_contiguous and dest.flags.writeable):
        raise ValueError("destination array must be C-contiguous and writeable")
    view = memoryview(payload)
    if view.nbytes != dest.nbytes:
        raise ValueError(f"payload is {view.nbytes} bytes, destination is {dest.nbytes} bytes")
    # A view of the payload's memory (the zmq frame's), reinterpreted as dest's dtype: no copy.
    return np.frombuffer(view, dtype=dest.dtype).reshape(dest.shape)


def add_into(acc: np.ndarray, payload: Any) -> np.ndarray:
    """``acc += payload``, reading the payload in place; returns ``acc``.

    ``np.frombuffer`` over the frame's buffer is a view of the received message, so summing a
    worker's gradient into the accumulator costs one pass and no copy. The payload is read as
    ``acc.dtype``: decode it first with the matching dtype and ``expect={"nbytes": acc.nbytes}``.
    Raises ValueError if the sizes differ.
    """
    np.add(acc, _as_array(acc, payload), out=acc)
    return acc


def sum_into(acc: np.ndarray, first: Any, second: Any) -> np.ndarray:
    """``acc[...] = first + second``, both read in place: one pass, where copying the first and
    adding the second would be two. Returns ``acc``. Raises ValueError if the sizes differ."""
    np.add(_as_array(acc, first), _as_array(acc, second), out=acc)
    return acc


def copy_into(dest: np.ndarray, payload: Any) -> np.ndarray:
    """``dest[...] = payload``, read in place (one copy, into the preallocated ``dest``, which
    then no longer depends on the message); returns ``dest``. Raises ValueError if the sizes
    differ."""
    np.copyto(dest, _as_array(dest, payload))
    return dest


class Counters:
    """Messages accepted (by type) and dropped (by ``WireError.reason``), for the server's log
    and metrics: a drop is logged once and counted here."""

    def __init__(self) -> None:
        self.accepted: dict[str, int] = {}
        self.dropped: dict[str, int] = {}

    def accept(self, msg_type: str) -> None:
        """Count one accepted message of ``msg_type``."""
        self.accepted[msg_type] = self.accepted.get(msg_type, 0) + 1

    def drop(self, reason: WireError | str) -> None:
        """Count one dropped message, by the error's reason key (or a reason string)."""
        key = reason.reason if isinstance(reason, WireError) else reason
        self.dropped[key] = self.dropped.get(key, 0) + 1

    @property
    def n_accepted(self) -> int:
        return sum(self.accepted.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Copies of both tables, e.g. for a metrics record."""
        return {"accepted": dict(self.accepted), "dropped": dict(self.dropped)}

    def summary(self) -> str:
        """One line, e.g. ``accepted 12 (grad 10, heartbeat 2); dropped 3 (step 2, json 1)``:
        most frequent first, ties by name."""
        def part(label: str, table: dict[str, int]) -> str:
            total = sum(table.values())
            if not total:
                return f"{label} 0"
            items = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))
            return f"{label} {total} (" + ", ".join(f"{k} {v}" for k, v in items) + ")"
        return part("accepted", self.accepted) + "; " + part("dropped", self.dropped)


__all__ = ["MESSAGE_TYPES", "MessageSpec", "HEADER_MAX", "DEFAULT_DTYPES", "MAX_INT", "REASONS",
           "WireError", "encode", "decode", "add_into", "copy_into", "Counters"]
