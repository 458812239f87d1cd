"""docs/protocol.md, "Errors", "Limits" and "CURVE": every error finds its request, limits are reported.

"The id is nil only when the server could not read one: the header is not msgpack or not a map, or its
`id` is missing or not an integer in [0, 2**63)"; "a client with one request in flight takes a nil-id
error as the reply to it"; "hello reports every limit the server enforces"; "one client may hold
`max_sessions_per_client` sessions".
"""

import itertools
import time

import msgpack
import pytest
import zmq

from worldsdk.bridge import AuthenticationError, Client, ProtocolError, Server
from worldsdk.bridge import protocol as P
from worldsdk.bridge.cli import generate_keys
from worldsdk.bridge.testing import NoiseWorld


@pytest.fixture
def server():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", max_sessions=8).start() as server:
        yield server


def raw(address: str) -> zmq.Socket:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.linger = 0
    socket.connect(address)
    return socket


def ask(socket: zmq.Socket, *parts: bytes) -> dict:
    socket.send_multipart(list(parts))
    assert socket.poll(5000), "no reply"
    return msgpack.unpackb(socket.recv_multipart()[0])


def test_errors_echo_the_id_whenever_the_header_has_a_readable_one(server):
    socket = raw(server.address)
    too_long_header = msgpack.packb({"type": "ping", "id": 11, "pad": "x" * (P.MAX_HEADER_BYTES + 10)})
    assert ask(socket, too_long_header) == {**ask(socket, too_long_header), "code": P.TOO_LARGE, "id": 11}
    oversized = ask(socket, msgpack.packb({"type": "ping", "id": 12}), b"\0" * (server.max_request_bytes + 1))
    assert (oversized["code"], oversized["id"]) == (P.TOO_LARGE, 12)
    int_keys = ask(socket, msgpack.packb({"type": "ping", "id": 13, 1: 2}, strict_types=False))
    assert (int_keys["code"], int_keys["id"]) == (P.BAD_MESSAGE, 13) and "keys must be strings" in int_keys["message"]
    for unreadable in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"type": "ping", "id": -1}), msgpack.packb({"type": "ping"})):
        reply = ask(socket, unreadable)
        assert reply["type"] == "error" and reply["id"] is None, reply
    socket.close()


def test_the_python_client_raises_a_nil_id_error_instead_of_timing_out(server):
    client = Client(server.address, timeout_ms=10_000, retries=3)
    client._ids = itertools.count(2**63)  # an id the server cannot read: its error comes back with id nil
    start = time.monotonic()
    with pytest.raises(ProtocolError) as info:
        client.ping()
    assert info.value.code == P.BAD_FIELD and "'id'" in info.value.message
    assert time.monotonic() - start < 5  # answered, not a timeout after retries
    client._ids = itertools.count(1)
    assert client.ping() > 0  # the client goes on
    client.close()


def test_a_long_prompt_is_refused_by_its_length(server):
    with Client(server.address, timeout_ms=5000) as client:
        with pytest.raises(ProtocolError, match="at most 4096 characters, got a string of 4097 characters"):
            client.reset(prompt="x" * 4097)
        client.reset(prompt="x" * 4096)
        with pytest.raises(ProtocolError, match="at most 4096 characters, got a string of 4097 characters"):
            client.set_prompt("y" * 4097)


def test_quality_is_reported_as_nil_with_the_raw_codec(server):
    socket = raw(server.address)
    reply = ask(socket, msgpack.packb({"type": "reset", "id": 1, "codec": "raw", "quality": 50}))
    assert reply["codec"] == "raw" and reply["quality"] is None  # said, not silently dropped
    reply = ask(socket, msgpack.packb({"type": "reset", "id": 2, "session": reply["session"], "codec": "jpeg"}))
    assert reply["codec"] == "jpeg" and reply["quality"] == 50  # kept for the session, used once it is jpeg
    socket.close()


def test_hello_reports_every_limit_the_server_enforces():
    world = NoiseWorld(16, 16, 2)
    with Server(world, "tcp://127.0.0.1:*", max_sessions=6, max_sessions_per_client=2, max_clients=3,
                reply_window=4, max_batch=5, lease_s=30).start() as server, Client(server.address, timeout_ms=5000) as client:
        info = client.hello()
        assert info.limits == {"max_sessions": 6, "max_sessions_per_client": 2, "max_clients": 3, "max_batch": 5,
                               "reply_window": 4, "ring_slots": 5, "max_header_bytes": P.MAX_HEADER_BYTES,
                               "max_prompt_chars": P.MAX_PROMPT_CHARS, "max_context_frames": 8,
                               "max_request_bytes": server.max_request_bytes}
        assert info.lease_s == 30 and info.batching == "shared" and "shm" in info.codecs
        others = [raw(server.address) for _ in range(3)]  # with the client above: one more than max_clients
        assert ask(others[0], msgpack.packb({"type": "ping", "id": 1}))["type"] == "pong"
        assert ask(others[1], msgpack.packb({"type": "ping", "id": 1}))["type"] == "pong"
        refused = ask(others[2], msgpack.packb({"type": "ping", "id": 1}))  # a ping-only client holds a slot too
        assert refused["code"] == P.BUSY and "max_clients" in refused["message"]
        for socket in others:
            socket.close()


def test_one_client_may_hold_max_sessions_per_client_sessions(server):
    assert server.max_sessions_per_client == 2  # a quarter of max_sessions=8
    socket = raw(server.address)
    sessions = [ask(socket, msgpack.packb({"type": "reset", "id": i, "seed": i}))["session"] for i in (1, 2)]
    refused = ask(socket, msgpack.packb({"type": "reset", "id": 3}))
    assert refused["code"] == P.BUSY and "max_sessions_per_client" in refused["message"]
    assert ask(socket, msgpack.packb({"type": "reset", "id": 4, "session": sessions[0]}))["type"] == "frames"  # a reset of its own
    with Client(server.address, timeout_ms=5000) as other:  # other clients are not held back
        other.reset(seed=0)
    ask(socket, msgpack.packb({"type": "close", "id": 5, "session": sessions[1]}))
    assert ask(socket, msgpack.packb({"type": "reset", "id": 6}))["type"] == "frames"
    socket.close()


def test_serve_help_lists_the_limits(capsys):
    from worldsdk.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for words in ("--max-sessions-per-client", "--max-clients", "--reply-window", "--batching", "limits",
                  "4096 characters", "64 KiB", "also one that only pings"):
        assert words in text, words


def handshake_failures(socket: zmq.Socket, seconds: float) -> int:
    """Handshake failures the server sees within `seconds` (a monitor on its ROUTER socket)."""
    monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    count, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if monitor.poll(int(left * 1000) + 1):
            monitor.recv_multipart()
            count += 1
    socket.disable_monitor()
    monitor.close()
    return count


def test_failed_handshakes_raise_at_once_and_stop_reconnecting(tmp_path):
    keys, stranger = generate_keys(tmp_path / "keys"), generate_keys(tmp_path / "stranger")
    world = NoiseWorld(16, 16, 2)
    cases = [  # (client keys, words of the documented event)
        ({"curve_server_key": keys["server_public"], "curve_client_key": stranger["client_secret"]}, "refused this client's CURVE key"),
        ({"curve_server_key": stranger["server_public"], "curve_client_key": keys["client_secret"]}, "wrong server key, or CURVE on one side only"),
        ({}, "wrong server key, or CURVE on one side only"),
    ]
    with Server(world, "tcp://127.0.0.1:*", curve_secret_key=keys["server_secret"], curve_clients_dir=keys["clients_dir"]) as server:
        for kwargs, words in cases:
            client = Client(server.address, timeout_ms=5000, retries=0, **kwargs)
            start = time.monotonic()
            with pytest.raises(AuthenticationError, match=words):
                client.hello()
            assert time.monotonic() - start < 3
            time.sleep(0.3)  # the failed connection winds down
            assert handshake_failures(server.socket, 1.5) == 0  # ZeroMQ no longer retries in the background
            client.close()
