"""The bridge wire format as pure functions: header validation, action and frame codecs."""

import msgpack
import numpy as np
import pytest

from worldsdk.bridge import protocol as P
from worldsdk.config import ActionSpec

SESSION = "0123456789abcdef0123456789abcdef"


def test_every_request_type_validates_with_its_required_fields():
    requests = [
        {"type": "hello", "id": 1, "v": [1, 0]},
        {"type": "hello", "id": 1, "v": [1, 7], "client": "engine"},
        {"type": "reset", "id": 2},
        {"type": "reset", "id": 2, "session": SESSION, "prompt": None, "seed": None, "codec": "jpeg", "quality": 80},
        {"type": "reset", "id": 2, "context": {"dtype": "uint8", "shape": [2, 32, 32, 3]}},
        {"type": "step", "id": 3, "session": SESSION, "action": 2},
        {"type": "set_prompt", "id": 4, "session": SESSION, "prompt": "neon"},
        {"type": "close", "id": 5, "session": SESSION},
        {"type": "ping", "id": 2**63 - 1},
    ]
    for header in requests:
        assert P.validate_request(header) == header["type"]


@pytest.mark.parametrize(
    "header, code, words",
    [
        ({"id": 1}, P.BAD_FIELD, "'type'"),
        ({"type": "dance", "id": 1}, P.BAD_TYPE, "dance"),
        ({"type": "ping"}, P.BAD_FIELD, "'id'"),
        ({"type": "ping", "id": -1}, P.BAD_FIELD, "'id'"),
        ({"type": "ping", "id": True}, P.BAD_FIELD, "'id'"),
        ({"type": "ping", "id": 2**63}, P.BAD_FIELD, "'id'"),
        ({"type": "ping", "id": 1, "extra": 0}, P.BAD_FIELD, "'extra'"),
        ({"type": "hello", "id": 1}, P.BAD_FIELD, "'v'"),
        ({"type": "hello", "id": 1, "v": [1]}, P.BAD_FIELD, "'v'"),
        ({"type": "hello", "id": 1, "v": "1.0"}, P.BAD_FIELD, "'v'"),
        ({"type": "step", "id": 1, "action": 0}, P.BAD_FIELD, "'session'"),
        ({"type": "step", "id": 1, "session": "ABC", "action": 0}, P.BAD_FIELD, "'session'"),
        ({"type": "step", "id": 1, "session": SESSION}, P.BAD_FIELD, "'action'"),
        ({"type": "reset", "id": 1, "seed": -5}, P.BAD_FIELD, "'seed'"),
        ({"type": "reset", "id": 1, "seed": 1.5}, P.BAD_FIELD, "'seed'"),
        ({"type": "reset", "id": 1, "prompt": "x" * 5000}, P.BAD_FIELD, "'prompt'"),
        ({"type": "reset", "id": 1, "prompt": b"bytes"}, P.BAD_FIELD, "'prompt'"),
        ({"type": "reset", "id": 1, "codec": "png"}, P.BAD_FIELD, "'codec'"),
        ({"type": "reset", "id": 1, "quality": 0}, P.BAD_FIELD, "'quality'"),
        ({"type": "reset", "id": 1, "context": {"dtype": "float32", "shape": [2, 32, 32, 3]}}, P.BAD_FIELD, "'context'"),
        ({"type": "reset", "id": 1, "context": {"dtype": "uint8", "shape": [2, 32, 32]}}, P.BAD_FIELD, "'context'"),
        ({"type": "set_prompt", "id": 1, "session": SESSION, "prompt": None}, P.BAD_FIELD, "'prompt'"),
    ],
)
def test_bad_headers_are_refused_with_a_code_naming_the_field(header, code, words):
    with pytest.raises(P.ProtocolError) as info:
        P.validate_request(header)
    assert info.value.code == code
    assert words in info.value.message


def test_unpack_header_refuses_everything_but_a_string_keyed_map():
    assert P.unpack_header(msgpack.packb({"type": "ping", "id": 1})) == {"type": "ping", "id": 1}
    for data in [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({1: 2}), msgpack.packb({"a": 1}) + b"\x00", b"\xff" * 10]:
        with pytest.raises(P.ProtocolError) as info:
            P.unpack_header(data)
        assert info.value.code == P.BAD_MESSAGE
    with pytest.raises(P.ProtocolError) as info:
        P.unpack_header(b"\x00" * (P.MAX_HEADER_BYTES + 1))
    assert info.value.code == P.TOO_LARGE


def test_version_check_refuses_another_major_only():
    P.check_version([P.PROTOCOL_VERSION[0], P.PROTOCOL_VERSION[1] + 3])
    with pytest.raises(P.ProtocolError) as info:
        P.check_version([P.PROTOCOL_VERSION[0] + 1, 0])
    assert info.value.code == P.VERSION_MISMATCH and "2.0" in info.value.message


def test_error_replies_map_to_their_exceptions():
    lost = P.error_from_reply({"type": "error", "id": 3, "code": P.UNKNOWN_SESSION, "message": "gone"})
    assert isinstance(lost, P.SessionLostError) and lost.request_id == 3
    assert isinstance(P.error_from_reply({"code": P.VERSION_MISMATCH, "message": ""}), P.VersionMismatchError)
    assert type(P.error_from_reply({"code": P.BAD_ACTION, "message": ""})) is P.ProtocolError


SPACES = {
    "discrete": ActionSpec.discrete(6),
    "multi_binary": ActionSpec.multi_binary(4),
    "box": ActionSpec.box((2,), -1.0, 1.0),
    "dict": ActionSpec.dict(keyboard=ActionSpec.multi_binary(4), mouse=ActionSpec.box((2,))),
}


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_actions_round_trip_through_msgpack(kind):
    spec = SPACES[kind]
    space = spec.to_space()
    space.seed(0)
    for _ in range(20):
        action = space.sample()
        wire = msgpack.unpackb(msgpack.packb(P.action_to_wire(action)))
        decoded = P.action_from_wire(spec, wire)
        spec.validate(decoded)
        np.testing.assert_allclose(spec.encode(decoded), spec.encode(action), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kind, value",
    [
        ("discrete", 6), ("discrete", -1), ("discrete", 1.0), ("discrete", True), ("discrete", [1]), ("discrete", None),
        ("multi_binary", [0, 1, 2, 0]), ("multi_binary", [0, 1]), ("multi_binary", [[0, 1], [1]]), ("multi_binary", "0101"),
        ("box", [0.5, 2.0]), ("box", [0.5]), ("box", [float("nan"), 0.0]), ("box", [0.1, "x"]), ("box", [[[[[[[[[[0]]]]]]]]]]),
        ("dict", {"keyboard": [0, 0, 0, 0]}), ("dict", [0, 0]), ("dict", {"keyboard": [0, 0, 0, 0], "mouse": [0, 0], "x": 1}),
    ],
)
def test_actions_outside_the_space_raise_value_error(kind, value):
    with pytest.raises(ValueError):
        P.action_from_wire(SPACES[kind], value)


def test_key_names_map_through_the_key_map():
    spec = SPACES["discrete"]
    assert P.action_from_wire(spec, "left", {"left": 3}) == 3
    with pytest.raises(ValueError, match="key map"):
        P.action_from_wire(spec, "jump", {"left": 3})


def test_raw_frames_round_trip_without_a_copy():
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    meta, parts = P.encode_frames(frames)
    assert meta == {"codec": "raw", "dtype": "uint8", "shape": [3, 8, 10, 3]} and len(parts) == 1
    decoded = P.decode_frames(msgpack.unpackb(msgpack.packb(meta)), [bytes(memoryview(parts[0]))])
    np.testing.assert_array_equal(decoded, frames)
    with pytest.raises(P.ProtocolError):
        P.decode_frames(meta, [b"\x00" * 10])
    with pytest.raises(P.ProtocolError):
        P.decode_frames({**meta, "dtype": "float32"}, parts)


def test_jpeg_frames_are_close_and_smaller():
    y, x = np.mgrid[0:48, 0:64]
    frame = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)
    frames = np.stack([frame, frame[::-1]])
    meta, parts = P.encode_frames(frames, "jpeg", quality=90)
    assert len(parts) == 2 and sum(map(len, parts)) < frames.nbytes / 4
    decoded = P.decode_frames(meta, parts)
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames).mean() < 3
