"""docs/protocol.md, "Retries": a repeated request is answered from the reply window, exactly once.

"The server keeps, per client incarnation, the replies to the last `reply_window` requests of each of
its sessions and to the last `reply_window` requests that name none of its sessions"; "a request with
the same id and the same bytes is a retry"; "hello starts a new incarnation"; "replies to requests of
an earlier incarnation are not sent"; "an error reply is not kept". NoiseWorld frames carry a code of
the session's whole history, so a chunk stepped twice can never pass for the right one.
"""

import time

import msgpack
import numpy as np
import zmq

from worldsdk.bridge import Client, Server
from worldsdk.bridge import protocol as P
from worldsdk.bridge.testing import NoiseWorld


class Peer:
    """A bare DEALER socket with a routing id of our choosing (an engine that keeps its id across restarts)."""

    def __init__(self, address: str, routing_id: bytes = b"engine-1"):
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.routing_id = routing_id
        self.socket.connect(address)
        self.strays: list[dict] = []  # replies skipped while waiting for another id

    def send(self, header: dict) -> None:
        self.socket.send(msgpack.packb(header))

    def recv(self, timeout_ms: int = 5000) -> tuple[dict, list[bytes]]:
        assert self.socket.poll(timeout_ms), "no reply"
        parts = self.socket.recv_multipart()
        return msgpack.unpackb(parts[0]), parts[1:]

    def request(self, header: dict) -> tuple[dict, list[bytes]]:
        """Send and wait for the reply with this id, skipping others, as the doc asks of a client."""
        self.send(header)
        while True:
            reply, parts = self.recv()
            if reply["id"] == header["id"]:
                return reply, parts
            self.strays.append(reply)

    def close(self):
        self.socket.close()


def step(sid: str, rid: int, action: int = 1) -> dict:
    return {"type": "step", "id": rid, "session": sid, "action": action}


def test_a_retried_step_after_pings_and_other_sessions_steps_is_not_run_again():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", reply_window=2).start() as server:
        peer = Peer(server.address)
        a = peer.request({"type": "reset", "id": 1, "seed": 1})[0]["session"]
        b = peer.request({"type": "reset", "id": 2, "seed": 2})[0]["session"]
        first = peer.request(step(a, 3))
        for rid in range(4, 24):  # heartbeats and another session's play: 20 requests, far more than the window
            peer.request({"type": "ping", "id": rid} if rid % 2 else step(b, rid))
        again = peer.request(step(a, 3))
        assert again == first and first[0]["chunk"] == 1
        assert server.sessions[a].chunks == 1 and server.sessions[b].chunks == 10
        peer.close()


def test_pipelined_steps_retried_together_are_each_answered_once():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", reply_window=3).start() as server:
        peer = Peer(server.address)
        sid = peer.request({"type": "reset", "id": 1, "seed": 0})[0]["session"]
        for rid in (2, 3, 4):  # three steps in flight at once (the window's depth)
            peer.send(step(sid, rid, rid))
        replies = {reply["id"]: (reply, parts) for reply, parts in (peer.recv() for _ in range(3))}
        assert [replies[r][0]["chunk"] for r in (2, 3, 4)] == [1, 2, 3]  # answered in order, per session
        for rid in (2, 3, 4):  # the connection dropped before the replies arrived: all three are sent again
            peer.send(step(sid, rid, rid))
        for _ in range(3):
            reply, parts = peer.recv()
            assert (reply, parts) == replies[reply["id"]]
        assert server.sessions[sid].chunks == 3
        world = NoiseWorld(16, 16, 2)  # the chunks are those of three steps, in order, each stepped once
        state = world.init_state(1, seeds=[0])[1]
        for rid in (2, 3, 4):
            result = world.step_state(state, [rid])
            want, state = result.frames, result.state
            np.testing.assert_array_equal(P.decode_frames(replies[rid][0]["frames"], replies[rid][1]), want[0])
        peer.close()


def test_the_window_holds_exactly_reply_window_replies_per_session():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", reply_window=2).start() as server:
        peer = Peer(server.address)
        sid = peer.request({"type": "reset", "id": 1, "seed": 0})[0]["session"]
        peer.request(step(sid, 2))
        peer.request(step(sid, 3))
        assert peer.request(step(sid, 2))[0]["chunk"] == 1  # one later request: still in the window
        peer.request(step(sid, 4))  # the session's last two are now 3 and 4
        assert peer.request(step(sid, 2))[0]["chunk"] == 4  # outside the window: served as a new request
        peer.close()


def test_the_same_id_with_other_bytes_is_a_new_request():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*").start() as server:
        peer = Peer(server.address)
        sid = peer.request({"type": "reset", "id": 1, "seed": 0})[0]["session"]
        assert peer.request(step(sid, 2, action=1))[0]["chunk"] == 1
        assert peer.request(step(sid, 2, action=2))[0]["chunk"] == 2
        peer.close()


def test_an_error_is_not_kept_so_its_retry_is_served_again():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", max_sessions=1).start() as server:
        holder, peer = Peer(server.address, b"holder"), Peer(server.address)
        held = holder.request({"type": "reset", "id": 1, "seed": 0})[0]["session"]
        refused = peer.request({"type": "reset", "id": 7, "seed": 0})[0]
        assert refused["code"] == P.BUSY and refused["id"] == 7
        holder.request({"type": "close", "id": 2, "session": held})
        opened = peer.request({"type": "reset", "id": 7, "seed": 0})[0]  # the same request again
        assert opened["type"] == "frames" and opened["chunk"] == 0
        holder.close()
        peer.close()


def test_a_restarted_engine_with_the_same_routing_id_gets_its_own_replies():
    with Server(NoiseWorld(16, 16, 2, step_seconds=0.4), "tcp://127.0.0.1:*").start() as server:
        old = Peer(server.address)
        assert old.request({"type": "ping", "id": 1})[0]["type"] == "pong"  # a 1.0-style client: no hello
        old_session = old.request({"type": "reset", "id": 2, "seed": 0})[0]["session"]
        # Sent while the server is in the forward of step 9 (0.4 s), steps 3 and 4 are taken off the socket
        # together when it ends: 3 goes into the next forward, 4 waits in the server's queue. (Sent while
        # it idles, 3 may be read alone, and 4 still sitting in the socket when the process dies may be
        # lost with the connection: the scenario would depend on the machine's load.)
        old.send(step(old_session, 9))
        time.sleep(0.1)
        old.send(step(old_session, 3))  # in the forward when the process dies
        old.send(step(old_session, 4))  # still waiting in the server's queue then
        assert old.recv()[0]["id"] == 9
        time.sleep(0.1)
        old.close()
        new = Peer(server.address)  # the restarted process: same routing id, ids from 1 again
        hello, _ = new.request({"type": "hello", "id": 1, "v": list(P.PROTOCOL_VERSION)})
        assert hello["type"] == "hello" and hello["id"] == 1  # not the old process's pong
        reset, _ = new.request({"type": "reset", "id": 2, "seed": 5})
        assert reset["type"] == "frames" and reset["session"] != old_session  # a new reset, not the old reply
        reply, _ = new.request(step(reset["session"], 3))
        assert reply["session"] == reset["session"] and reply["chunk"] == 1  # its own step 3, not the old one's
        reply, _ = new.request(step(reset["session"], 4))
        assert reply["session"] == reset["session"] and reply["chunk"] == 2  # the old step 4's reply was dropped
        # the old step's reply can only reach the new process before the server reads its hello, so
        # before the new process sent any id but 1: a client that skips other ids never takes it for its own
        assert all(stray["id"] == 3 and stray["session"] == old_session for stray in new.strays)
        assert not new.socket.poll(600)
        assert server.sessions[old_session].chunks == 3  # the old steps did run (the old process asked for them)
        new.close()


def test_a_retried_hello_is_answered_again_and_retries_after_it_still_work():
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*").start() as server:
        peer = Peer(server.address)
        first = peer.request({"type": "hello", "id": 1, "v": [1, 2]})[0]
        assert peer.request({"type": "hello", "id": 1, "v": [1, 2]})[0] == first
        sid = peer.request({"type": "reset", "id": 2, "seed": 0})[0]["session"]
        assert peer.request(step(sid, 3)) == peer.request(step(sid, 3))
        assert server.sessions[sid].chunks == 1
        peer.close()


def test_the_python_client_retry_is_answered_once_while_another_client_plays():
    world = NoiseWorld(16, 16, 2, step_seconds=0.5)
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        slow = Client(server.address, timeout_ms=200, retries=8)
        other = Client(server.address, timeout_ms=10_000)
        slow.reset(seed=0)
        other.reset(seed=1)
        frames = slow.step(3)  # times out and is sent again at least once, while the server is busy
        other.step(2)
        assert slow.chunk == 1 and server.sessions[slow.session].chunks == 1
        want = world.step_state(world.init_state(1, seeds=[0])[1], [3]).frames
        np.testing.assert_array_equal(frames, want[0])
        slow.close()
        other.close()
