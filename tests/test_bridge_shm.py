"""docs/protocol.md, "Shared-memory frames": the socket carries the header, the frames land in a ring.

"A session that resets with codec `shm` gets a ring of `ring_slots` slots"; "its frames are exactly the
raw codec's"; "a reply the server may still resend points to frames that are still in the ring";
"the ring is removed when the session is closed or its lease lapses"; "offered only on a loopback or
ipc endpoint".
"""

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from worldsdk.bridge import BridgeError, Client, ProtocolError, Server
from worldsdk.bridge import protocol as P
from worldsdk.bridge import shm
from worldsdk.bridge.shm import RingReader
from worldsdk.bridge.testing import NoiseWorld

pytestmark = pytest.mark.skipif(not shm.available(), reason="shared-memory rings need Linux /dev/shm")


def rings() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("worldsdk-*")}


def test_shm_frames_equal_raw_frames_and_leave_the_socket_empty():
    world = NoiseWorld(48, 64, 3)
    before = rings()
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        with Client(server.address, timeout_ms=5000, codec="shm") as fast, Client(server.address, timeout_ms=5000) as plain:
            assert fast.hello().limits["ring_slots"] == server.reply_window + 1
            got = [fast.reset(seed=4)] + [fast.step(a) for a in (1, 2, 3, 4, 5) * 4]  # wraps the ring twice
            want = [plain.reset(seed=4)] + [plain.step(a) for a in (1, 2, 3, 4, 5) * 4]
            assert fast.last_reset.codec == "shm" and len(rings() - before) == 1
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        assert rings() == before  # closing the session removed its ring
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(server.address)
        socket.send(msgpack.packb({"type": "reset", "id": 1, "seed": 0, "codec": "shm"}))
        assert socket.poll(5000)
        parts = socket.recv_multipart()
        header = msgpack.unpackb(parts[0])
        assert len(parts) == 1 and header["frames"]["codec"] == "shm" and header["frames"]["offset"] % 64 == 0
        socket.close()


def test_a_retried_shm_reply_still_points_to_its_frames():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", reply_window=3).start() as server:
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.linger = 0
        socket.connect(server.address)

        def request(header):
            socket.send(msgpack.packb(header))
            assert socket.poll(5000)
            return msgpack.unpackb(socket.recv_multipart()[0])

        sid = request({"type": "reset", "id": 1, "seed": 0, "codec": "shm"})["session"]
        reader = RingReader()
        first = request({"type": "step", "id": 2, "session": sid, "action": 1})
        frames = reader.read(first["frames"])
        for rid in (3, 4):  # the window still holds step 2 after two more steps of the session
            request({"type": "step", "id": rid, "session": sid, "action": rid})
        again = request({"type": "step", "id": 2, "session": sid, "action": 1})
        assert again == first
        np.testing.assert_array_equal(reader.read(again["frames"]), frames)
        for rid in range(5, 5 + server.ring_slots):  # a full turn of the ring later, the slot is someone else's
            request({"type": "step", "id": rid, "session": sid, "action": 0})
        with pytest.raises(BridgeError, match="overwritten"):
            reader.read(first["frames"])
        reader.close()
        socket.close()


def test_a_lapsed_lease_removes_the_ring():
    before = rings()
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", lease_s=0.5).start() as server:
        client = Client(server.address, timeout_ms=5000, codec="shm")
        client.reset(seed=0)
        assert len(rings() - before) == 1
        deadline = time.monotonic() + 3
        while rings() != before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rings() == before and not server.sessions
        client.session = None  # the server forgot it
        client.close()


def test_a_server_without_shared_memory_refuses_the_shm_codec(monkeypatch):
    monkeypatch.setattr(shm, "available", lambda: False)
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*").start() as server:
        with Client(server.address, timeout_ms=5000) as client:
            info = client.hello()
            assert "shm" not in info.codecs and info.limits["ring_slots"] == 0
            with pytest.raises(ProtocolError) as refused:
                client._request({"type": "reset", "codec": "shm"})
            assert refused.value.code == P.BAD_FIELD and "loopback or ipc" in refused.value.message
        with Client(server.address, timeout_ms=5000, codec="shm") as client, pytest.raises(BridgeError, match="no shared-memory"):
            client.reset(seed=0)
