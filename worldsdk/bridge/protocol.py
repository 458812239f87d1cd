"""The bridge wire protocol: message layout, field validation, action and frame encoding.

Every message is a ZeroMQ multipart message: one msgpack header (a map with string keys) followed by
zero or more raw payload parts. Requests carry no payload in protocol 1.x; replies that return frames
carry them as raw uint8 bytes (one part, dtype and shape in the header) or as one JPEG per frame.
The full specification, written for engine developers, is `docs/protocol.md`; this module is its
executable form, shared by the server and the Python client.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION: tuple[int, int] = (1, 2)  # (major, minor): a different major is refused at hello
# 1.1 added: hello `predicts_rewards` / `num_starts`; reset `start` / `start_index` (and `start`, `start_index`,
# `prompt` in its reply); step replies `reward`, `terminated`, `reward_predicted`, `frame_rewards`.
# 1.2 added: hello's limits (`max_clients`, `max_sessions_per_client`, `max_batch`, `reply_window`, `ring_slots`,
# `max_header_bytes`, `max_prompt_chars`, `batching`); reset `batching` and the `shm` codec (and `batching`,
# `codec`, `quality` in its reply); hello starts a new incarnation of the client (its reply window is emptied).

# Request types and the reply type of each success (an error reply has type "error").
REQUEST_TYPES = ("hello", "reset", "step", "set_prompt", "close", "ping")
REPLY_TYPE = {"hello": "hello", "reset": "frames", "step": "frames", "set_prompt": "ok", "close": "ok", "ping": "pong"}

CODECS = ("raw", "jpeg", "shm")  # shm: frames in a shared-memory ring on the server's machine (see shm.py)
BATCHING_MODES = ("shared", "exact")  # shared: one forward for all waiting sessions; exact: a forward per session
START_MODES = ("prompt", "real")  # how a reset starts: the world generates a first chunk, or a real start of its bank

# Limits a request must respect (the server may lower the total size; the header limit is fixed).
MAX_HEADER_BYTES = 64 * 1024
MAX_PROMPT_CHARS = 4096
MAX_NAME_CHARS = 256
MAX_ACTION_DEPTH = 8
MAX_UINT63 = 2**63 - 1
SESSION_ID_RE = re.compile(r"[0-9a-f]{32}")

# Error codes (the `code` field of an error reply). Documented in docs/protocol.md.
BAD_MESSAGE = "bad_message"  # not a header + payload multipart, header not a msgpack map
TOO_LARGE = "too_large"  # a request over the size limits
VERSION_MISMATCH = "version_mismatch"  # hello with another major protocol version
BAD_TYPE = "bad_type"  # unknown request type
BAD_FIELD = "bad_field"  # missing, unknown, wrongly typed or out-of-range header field
BAD_ACTION = "bad_action"  # the action is not in the world's action space
UNKNOWN_SESSION = "unknown_session"  # no such session for this client (expired, closed, server restarted)
BUSY = "busy"  # the server holds as many sessions or clients as it may
INTERNAL = "internal"  # the world raised; the session keeps its previous state
ERROR_CODES = (BAD_MESSAGE, TOO_LARGE, VERSION_MISMATCH, BAD_TYPE, BAD_FIELD, BAD_ACTION, UNKNOWN_SESSION, BUSY, INTERNAL)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


class BridgeError(Exception):
    """Base class of every error the bridge raises."""


class ProtocolError(BridgeError):
    """An error reply (or a message that breaks the protocol): `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, request_id: int | None = None):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class VersionMismatchError(ProtocolError):
    """The server speaks another major protocol version."""


class SessionLostError(ProtocolError):
    """The server no longer knows this session: it restarted, the lease expired, or it was closed."""


class BridgeTimeoutError(BridgeError, TimeoutError):
    """No reply within the timeout, after the retries."""


class AuthenticationError(BridgeError):
    """The ZeroMQ handshake failed: wrong CURVE key, or CURVE on one side only."""


def error_from_reply(header: Mapping) -> ProtocolError:
    """The exception an error reply stands for."""
    code, message = str(header.get("code")), str(header.get("message"))
    cls = {VERSION_MISMATCH: VersionMismatchError, UNKNOWN_SESSION: SessionLostError}.get(code, ProtocolError)
    rid = header.get("id")
    return cls(code, message, rid if isinstance(rid, int) else None)


# ----------------------------------------------------------------------------------------------
# Headers
# ----------------------------------------------------------------------------------------------


def pack_header(header: Mapping) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def unpack_header(data: bytes, limit: int | None = MAX_HEADER_BYTES) -> dict:
    """Decode a header part; raise ProtocolError(bad_message / too_large) for anything but a map."""
    if limit is not None and len(data) > limit:
        raise ProtocolError(TOO_LARGE, f"header is {len(data)} bytes; the limit is {limit}", peek_request_id(data))
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, timestamp=0)
    except ValueError as e:
        if "not allowed for map key" in str(e):  # a map with int/bytes/... keys: refused below, with its id
            raise ProtocolError(BAD_MESSAGE, "header keys must be strings", peek_request_id(data)) from None
        raise ProtocolError(BAD_MESSAGE, f"header is not valid msgpack: {type(e).__name__}: {e}") from None
    except Exception as e:  # FormatError, ExtraData, StackError, UnicodeDecodeError, ...
        raise ProtocolError(BAD_MESSAGE, f"header is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_MESSAGE, f"header must be a msgpack map, got {type(header).__name__}")
    if not all(isinstance(k, str) for k in header):
        raise ProtocolError(BAD_MESSAGE, "header keys must be strings", peek_request_id(data))
    return header


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _uint63(value) -> bool:
    return _is_int(value) and 0 <= value <= MAX_UINT63


def _version(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_int(v) and 0 <= v < 2**16 for v in value)


def _session_id(value) -> bool:
    return isinstance(value, str) and SESSION_ID_RE.fullmatch(value) is not None


def _text(limit: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and len(value) <= limit


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _any(value) -> bool:
    return True  # checked later against the world's action space


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], bool]
    required: bool
    expected: str  # said in the error message


_COMMON = {
    "type": Field(lambda v: v in REQUEST_TYPES, True, f"one of {list(REQUEST_TYPES)}"),
    "id": Field(_uint63, True, "an integer in [0, 2**63)"),
}
_SESSION = Field(_session_id, True, "a session id (32 lowercase hex characters) from a reset reply")
_CONTEXT = Field(
    lambda v: isinstance(v, dict) and set(v) == {"dtype", "shape"} and v["dtype"] == "uint8" and isinstance(v["shape"], list)
    and len(v["shape"]) == 4 and all(_is_int(s) and 0 < s < 2**16 for s in v["shape"]),
    False,
    '{"dtype": "uint8", "shape": [N, H, W, 3]} describing the raw context frames in the payload part',
)
_CODEC = Field(lambda v: v in CODECS, False, f"one of {list(CODECS)}")
_QUALITY = Field(lambda v: _is_int(v) and 1 <= v <= 100, False, "an integer in [1, 100]")
_BATCHING = Field(_optional(lambda v: isinstance(v, str) and v in BATCHING_MODES), False, f"one of {list(BATCHING_MODES)} or nil")
_START = Field(_optional(lambda v: isinstance(v, str) and v in START_MODES), False, f"one of {list(START_MODES)} or nil")
_START_INDEX = Field(_optional(_uint63), False, "an integer in [0, 2**63) or nil (checked against the world's num_starts)")

REQUEST_FIELDS: dict[str, dict[str, Field]] = {
    "hello": {"v": Field(_version, True, "[major, minor]"), "client": Field(_text(MAX_NAME_CHARS), False, "a short string")},
    "reset": {
        "session": Field(_session_id, False, _SESSION.expected),
        "prompt": Field(_optional(_text(MAX_PROMPT_CHARS)), False, f"a string of at most {MAX_PROMPT_CHARS} characters"),
        "seed": Field(_optional(_uint63), False, "an integer in [0, 2**63) or nil"),
        "context": _CONTEXT,
        "codec": _CODEC,
        "quality": _QUALITY,
        "start": _START,  # since 1.1
        "start_index": _START_INDEX,  # since 1.1
        "batching": _BATCHING,  # since 1.2
    },
    "step": {"session": _SESSION, "action": Field(_any, True, "an action of the world's action space")},
    "set_prompt": {"session": _SESSION, "prompt": Field(_text(MAX_PROMPT_CHARS), True, f"a string of at most {MAX_PROMPT_CHARS} characters")},
    "close": {"session": _SESSION},
    "ping": {},
}


def request_id_of(header: Mapping) -> int | None:
    """The request id to echo in a reply, or None where the header has no valid one."""
    rid = header.get("id")
    return rid if _uint63(rid) else None


def peek_request_id(data: bytes) -> int | None:
    """The id of a header part that is refused as a whole (too large, non-string keys), when it can be
    read at all, so that even these errors find their request; None otherwise."""
    try:
        header = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=False, timestamp=0)
    except Exception:  # not msgpack, or keys that cannot be dict keys: no id to read
        return None
    return request_id_of(header) if isinstance(header, dict) else None


def validate_request(header: Mapping) -> str:
    """Check every field of a request header; return its type or raise ProtocolError."""
    rid = request_id_of(header)
    kind = header.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_FIELD, "field 'type' must be a string", rid)
    if kind not in REQUEST_TYPES:
        raise ProtocolError(BAD_TYPE, f"unknown request type {kind[:64]!r}; expected one of {list(REQUEST_TYPES)}", rid)
    schema = {**_COMMON, **REQUEST_FIELDS[kind]}
    unknown = sorted(set(header) - set(schema))
    if unknown:
        names = ", ".join(repr(k[:64]) for k in unknown[:8])
        raise ProtocolError(BAD_FIELD, f"unknown field(s) {names} in a {kind!r} request; allowed: {sorted(schema)}", rid)
    for name, spec in schema.items():
        if name not in header:
            if spec.required:
                raise ProtocolError(BAD_FIELD, f"a {kind!r} request needs field {name!r} ({spec.expected})", rid)
            continue
        if not spec.check(header[name]):
            raise ProtocolError(BAD_FIELD, f"field {name!r} must be {spec.expected}, got {_describe(header[name])}", rid)
    return kind


def _describe(value) -> str:
    """A refused value as an error message shows it: long strings by their length (the value itself
    would hide the reason, and could be 64 KiB long)."""
    if isinstance(value, str) and len(value) > 64:
        return f"a string of {len(value)} characters"
    return _short(value)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_version(client_version: Sequence[int]) -> None:
    """Refuse a client that speaks another major version (minor versions are compatible)."""
    major, minor = client_version
    if major != PROTOCOL_VERSION[0]:
        raise ProtocolError(
            VERSION_MISMATCH,
            f"client speaks bridge protocol {major}.{minor}, this server speaks {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}; "
            "use a client of the same major version",
        )


# ----------------------------------------------------------------------------------------------
# Actions
# ----------------------------------------------------------------------------------------------


def action_to_wire(action):
    """A Python/numpy action -> plain msgpack-able values (ints, floats, lists, maps)."""
    if isinstance(action, np.ndarray):
        return action.tolist()
    if isinstance(action, np.generic):
        return action.item()
    if isinstance(action, Mapping):
        return {str(k): action_to_wire(v) for k, v in action.items()}
    if isinstance(action, (list, tuple)):
        return [action_to_wire(v) for v in action]
    return action


def action_from_wire(spec, value, key_map: Mapping | None = None, depth: int = 0):
    """A decoded msgpack action -> the Python/numpy action `spec` (an ActionSpec) validates.

    A string names a key of the world's key map (e.g. "left"), so an engine can send key names.
    Raises ValueError naming the space and the value when the action is outside the space.
    """
    if depth > MAX_ACTION_DEPTH:
        raise ValueError("action is nested too deeply")
    if isinstance(value, str) and depth == 0:
        if not key_map or value not in key_map:
            raise ValueError(f"{_short(value)} is not a key of the world's key map {sorted(key_map or {})}")
        value = key_map[value]
    if spec.kind == "discrete":
        if not _is_int(value):
            raise ValueError(f"a discrete action must be an integer, got {_short(value)}")
        action = value
    elif spec.kind in ("multi_binary", "box"):
        action = _numeric_array(value, np.int8 if spec.kind == "multi_binary" else np.float32)
    else:
        if not isinstance(value, dict):
            raise ValueError(f"a dict action must be a map of {[name for name, _ in spec.spaces]}, got {_short(value)}")
        names = {name for name, _ in spec.spaces}
        if set(value) != names:
            raise ValueError(f"a dict action needs exactly the keys {sorted(names)}, got {_short(sorted(map(str, value)))}")
        action = {name: action_from_wire(sub, value[name], None, depth + 1) for name, sub in spec.spaces}
    spec.validate(action)
    return action


def _numeric_array(value, dtype) -> np.ndarray:
    """Nested lists of finite numbers -> an array; anything else is a ValueError."""

    def check(v, depth):
        if depth > MAX_ACTION_DEPTH:
            raise ValueError("action is nested too deeply")
        if isinstance(v, list):
            for item in v:
                check(item, depth + 1)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(f"action entries must be finite numbers, got {_short(v)}")
        elif isinstance(v, int) and abs(v) > 2**31:
            raise ValueError(f"action entry {v} is out of range")

    check(value, 0)
    try:
        array = np.asarray(value, dtype=np.float64)
    except ValueError as e:  # ragged lists
        raise ValueError(f"action is not a rectangular array: {e}") from None
    if dtype == np.int8:
        if not np.all((array == 0) | (array == 1)):
            raise ValueError(f"multi-binary action entries must be 0 or 1, got {_short(value)}")
        return array.astype(np.int8)
    return array.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------


def encode_frames(frames: np.ndarray, codec: str = "raw", quality: int = 90) -> tuple[dict, list]:
    """uint8 frames (T, H, W, 3) -> (header fields, payload parts).

    raw: one part, the C-contiguous bytes (sent without a copy); jpeg: one JPEG per frame.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    meta = {"codec": codec, "dtype": "uint8", "shape": list(frames.shape)}
    if codec == "raw":
        return meta, [np.ascontiguousarray(frames)]
    if codec == "jpeg":
        from PIL import Image

        parts = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
            parts.append(buffer.getvalue())
        return meta, parts
    raise ValueError(f"unknown codec {codec!r}; expected one of {list(CODECS)}")


def decode_frames(meta: Mapping, parts: Sequence) -> np.ndarray:
    """(header fields, payload parts) -> uint8 frames (T, H, W, 3). Raw frames are a read-only view."""
    codec, shape = meta.get("codec"), meta.get("shape")
    if meta.get("dtype") != "uint8" or not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(s) and s >= 0 for s in shape)):
        raise ProtocolError(BAD_MESSAGE, f"frames need dtype uint8 and a 4-d shape, got {meta.get('dtype')!r} {shape!r}")
    if codec == "raw":
        if len(parts) != 1:
            raise ProtocolError(BAD_MESSAGE, f"raw frames come in one part, got {len(parts)}")
        buffer = memoryview(parts[0])
        if buffer.nbytes != math.prod(shape):
            raise ProtocolError(BAD_MESSAGE, f"raw frames of shape {shape} need {math.prod(shape)} bytes, got {buffer.nbytes}")
        return np.frombuffer(buffer, dtype=np.uint8).reshape(shape)
    if codec == "jpeg":
        from PIL import Image

        if len(parts) != shape[0]:
            raise ProtocolError(BAD_MESSAGE, f"jpeg frames come one part per frame: {shape[0]} expected, got {len(parts)}")
        if not parts:
            return np.zeros(shape, np.uint8)
        frames = np.stack([np.asarray(Image.open(io.BytesIO(bytes(p))).convert("RGB")) for p in parts])
        if list(frames.shape) != shape:
            raise ProtocolError(BAD_MESSAGE, f"jpeg frames decode to {list(frames.shape)}, header says {shape}")
        return frames
    raise ProtocolError(BAD_MESSAGE, f"unknown frame codec {codec!r}")
