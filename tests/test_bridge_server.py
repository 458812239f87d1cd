"""Bridge contract: a world served over ZeroMQ answers exactly as the same world in-process."""

import os
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from worldsdk import World
from worldsdk.bridge import AuthenticationError, Client, ProtocolError, Server, SessionLostError, VersionMismatchError
from worldsdk.bridge import protocol as P
from tests.conftest import assert_world_reacts, perturb_, reactive_world
from tests.test_reward import constant_bank, set_bias, tiny_reward_model
from worldsdk.bridge.cli import generate_keys
from worldsdk.bridge.client import ResetInfo, StepInfo, WorldInfo
from worldsdk.bridge.testing import NoiseWorld

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world():
    return reactive_world()  # frames that depend on actions, prompt and history: a dropped one shows


@pytest.fixture
def reference():
    """The same world (same weights), in-process, for comparing frames."""
    return reactive_world()


@pytest.fixture
def server(world):
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        yield server


class RawPeer:
    """A bare DEALER socket, to send what the Python client never would."""

    def __init__(self, address: str):
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.connect(address)

    def request(self, header: dict, *payload: bytes, timeout_ms: int = 5000) -> tuple[dict, list[bytes]]:
        self.socket.send_multipart([msgpack.packb(header), *payload])
        assert self.socket.poll(timeout_ms), f"no reply to {header}"
        parts = self.socket.recv_multipart()
        return msgpack.unpackb(parts[0]), parts[1:]

    def close(self):
        self.socket.close()


def test_hello_reports_the_world_and_protocol(server, world):
    with Client(server.address, timeout_ms=5000) as client:
        info = client.hello()
    assert info.protocol == P.PROTOCOL_VERSION
    assert info.spec == world.spec
    assert info.observation_shape == world.observation_shape and info.chunk_frames == world.chunk_frames
    assert info.action_space == world.action_space
    assert "raw" in info.codecs and info.lease_s == server.lease_s
    assert info.predicts_rewards is False and info.num_starts == 0


def test_frames_equal_the_world_in_process(server, reference):
    assert_world_reacts(reference)  # else equal frames would not show that actions and prompts arrived
    with Client(server.address, timeout_ms=5000) as client:
        client.hello()
        got = [client.reset(prompt="pong, neon style", seed=7)]
        got += [client.step(a) for a in (0, 2, np.int64(3), "left", "space")]
        client.set_prompt("breakout, grey")
        got += [client.step(a) for a in (1, 5)]
        assert client.chunk == 7
    want = [reference.reset(prompt="pong, neon style", seed=7)]
    want += [reference.step(a) for a in (0, 2, 3, 3, 1)]
    reference.set_prompt("breakout, grey")
    want += [reference.step(a) for a in (1, 5)]
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.uint8 and g.shape == w.shape
        np.testing.assert_array_equal(g, w, err_msg=f"chunk {i}")


def test_reset_with_context_continues_from_real_frames(server, reference):
    context = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    with Client(server.address, timeout_ms=5000) as client:
        first = client.reset(seed=3, context=context)
        after = client.step(2)
    np.testing.assert_array_equal(first, reference.reset(seed=3, context=context))
    np.testing.assert_array_equal(after, reference.step(2))
    with Client(server.address, timeout_ms=5000) as client, pytest.raises(ProtocolError, match="context"):
        client.reset(context=context[:, :16])


def test_bad_action_is_refused_and_the_session_goes_on(server, reference):
    with Client(server.address, timeout_ms=5000) as client:
        client.reset(seed=1)
        with pytest.raises(ProtocolError) as info:
            client.step(9)
        assert info.value.code == P.BAD_ACTION and "Discrete(6)" in info.value.message
        with pytest.raises(ProtocolError, match="key map"):
            client.step("jump")
        frames = client.step(4)
    reference.reset(seed=1)
    np.testing.assert_array_equal(frames, reference.step(4))


def test_another_major_version_is_refused_at_the_handshake(server):
    peer = RawPeer(server.address)
    reply, _ = peer.request({"type": "hello", "id": 1, "v": [P.PROTOCOL_VERSION[0] + 1, 0]})
    assert reply["type"] == "error" and reply["code"] == P.VERSION_MISMATCH and reply["id"] == 1
    assert f"{P.PROTOCOL_VERSION[0] + 1}.0" in reply["message"]
    reply, _ = peer.request({"type": "hello", "id": 2, "v": [P.PROTOCOL_VERSION[0], 99]})
    assert reply["type"] == "hello" and reply["v"] == list(P.PROTOCOL_VERSION)
    peer.close()


def test_the_client_raises_a_clear_error_on_another_major_version(server):
    client = Client(server.address, timeout_ms=5000)
    client.protocol_version = (P.PROTOCOL_VERSION[0] + 1, 0)
    with pytest.raises(VersionMismatchError, match="protocol"):
        client.hello()
    client.close()


def test_a_req_socket_is_served_too(server):
    req = zmq.Context.instance().socket(zmq.REQ)
    req.linger = 0
    req.connect(server.address)
    req.send(msgpack.packb({"type": "ping", "id": 1}))
    assert req.poll(5000)
    assert msgpack.unpackb(req.recv())["type"] == "pong"
    req.close()


def test_a_slow_step_retried_by_the_client_is_stepped_once():
    world = NoiseWorld(16, 16, 2, step_seconds=0.6)
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        client = Client(server.address, timeout_ms=250, retries=6)
        client.reset(seed=0)
        frames = client.step(3)  # times out at least once: the client reconnects and sends it again
        assert client.chunk == 1 and server.sessions[client.session].chunks == 1
        want = world.step_state(world.init_state(1, seeds=[0])[1], [3]).frames
        np.testing.assert_array_equal(frames, want[0])
        assert client.step(2).shape == frames.shape and client.chunk == 2
        client.close()


def test_a_client_can_act_only_on_its_own_sessions(server):
    with Client(server.address, timeout_ms=5000) as owner:
        owner.reset(seed=0)
        intruder = RawPeer(server.address)
        for header in (
            {"type": "step", "id": 1, "session": owner.session, "action": 0},
            {"type": "set_prompt", "id": 2, "session": owner.session, "prompt": "stolen"},
            {"type": "close", "id": 3, "session": owner.session},
            {"type": "reset", "id": 4, "session": owner.session},
        ):
            reply, parts = intruder.request(header)
            assert reply["code"] == P.UNKNOWN_SESSION and not parts
        intruder.close()
        owner.step(1)
        assert owner.chunk == 1 and len(server.sessions) == 1


def test_close_frees_the_session(server):
    client = Client(server.address, timeout_ms=5000)
    client.reset(seed=0)
    assert len(server.sessions) == 1
    session = client.session
    client.close()
    client.close()
    assert len(server.sessions) == 0
    peer = RawPeer(server.address)
    reply, _ = peer.request({"type": "step", "id": 1, "session": session, "action": 0})
    assert reply["code"] == P.UNKNOWN_SESSION
    peer.close()


def test_a_retried_request_is_answered_once(server):
    peer = RawPeer(server.address)
    reply, _ = peer.request({"type": "reset", "id": 1, "seed": 5})
    step = {"type": "step", "id": 2, "session": reply["session"], "action": 1}
    first, frames1 = peer.request(step)
    again, frames2 = peer.request(step)
    assert first == again and first["chunk"] == 1 and frames1 == frames2
    assert server.sessions[reply["session"]].chunks == 1
    peer.close()


def test_steps_waiting_together_run_as_one_forward():
    world = NoiseWorld(16, 16, 2, step_seconds=0.3)
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        peers = [RawPeer(server.address) for _ in range(4)]
        sessions = [peer.request({"type": "reset", "id": 1, "seed": i})[0]["session"] for i, peer in enumerate(peers)]
        server.batch_sizes.clear()
        peers[0].socket.send(msgpack.packb({"type": "step", "id": 2, "session": sessions[0], "action": 0}))
        time.sleep(0.1)  # the server is now inside the first forward; the next three wait together
        for peer, session in zip(peers[1:], sessions[1:]):
            peer.socket.send(msgpack.packb({"type": "step", "id": 2, "session": session, "action": 1}))
        replies = []
        for peer in peers:
            assert peer.socket.poll(5000)
            replies.append(peer.socket.recv_multipart())
        assert dict(server.batch_sizes) == {1: 1, 3: 1}
        want = world.step_state(world.init_state(1, seeds=[2])[1], [1]).frames
        np.testing.assert_array_equal(P.decode_frames(msgpack.unpackb(replies[2][0])["frames"], replies[2][1:]), want[0])
        for peer in peers:
            peer.close()


def test_max_sessions_is_enforced(world):
    with Server(world, "tcp://127.0.0.1:*", max_sessions=2).start() as server:
        clients = [Client(server.address, timeout_ms=5000) for _ in range(3)]
        clients[0].reset(seed=0)
        clients[1].reset(seed=1)
        with pytest.raises(ProtocolError) as info:
            clients[2].reset(seed=2)
        assert info.value.code == P.BUSY
        clients[0].close()
        clients[2].reset(seed=2)
        for client in clients:
            client.close()


KILLED_CLIENT = """
import sys, time, msgpack, zmq
socket = zmq.Context().socket(zmq.DEALER)
socket.connect(sys.argv[1])
def request(header):
    socket.send(msgpack.packb(header))
    return msgpack.unpackb(socket.recv_multipart()[0])
session = request({"type": "reset", "id": 1, "seed": 0})["session"]
request({"type": "step", "id": 2, "session": session, "action": 1})
print(session, flush=True)
time.sleep(60)
"""  # a bare client (no torch import, so it starts fast); killed with SIGKILL mid-episode


def test_a_killed_client_loses_its_session_within_the_lease(world):
    lease = 1.0
    with Server(world, "tcp://127.0.0.1:*", lease_s=lease).start() as server:
        child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, server.address], stdout=subprocess.PIPE, text=True)
        try:
            session = child.stdout.readline().strip()
            assert session in server.sessions
            child.kill()
            killed = time.monotonic()
            child.wait()
            while len(server.sessions) and time.monotonic() - killed < lease + 2.0:
                time.sleep(0.05)
            freed_after = time.monotonic() - killed
        finally:
            child.kill()
            child.stdout.close()
        assert len(server.sessions) == 0 and not server.peers
        assert freed_after <= lease + 0.3  # lease + one poll period


def test_a_restarted_server_says_session_lost_and_the_client_starts_again(world, reference):
    first = Server(world, "tcp://127.0.0.1:*").start()
    address = first.address
    client = Client(address, timeout_ms=5000)
    client.reset(seed=4)
    client.step(0)
    first.stop()
    with Server(world, address).start():
        with pytest.raises(SessionLostError, match="reset"):
            client.step(0)
        frames = client.reset(seed=4)
        assert client.chunk == 0
        np.testing.assert_array_equal(frames, reference.reset(seed=4))
        client.close()


def test_curve_lets_in_known_keys_only(world, tmp_path):
    keys = generate_keys(tmp_path / "keys")
    stranger = generate_keys(tmp_path / "stranger")
    server = Server(world, "tcp://127.0.0.1:*", curve_secret_key=keys["server_secret"], curve_clients_dir=keys["clients_dir"])
    with server.start():
        good = Client(server.address, timeout_ms=5000, curve_server_key=keys["server_public"], curve_client_key=keys["client_secret"])
        assert good.reset(seed=0).shape == world.observation_shape
        good.close()
        wrong = Client(server.address, timeout_ms=5000, retries=0, curve_server_key=keys["server_public"],
                       curve_client_key=stranger["client_secret"])
        with pytest.raises(AuthenticationError, match="refused"):
            wrong.hello()
        wrong.close()
        plain = Client(server.address, timeout_ms=5000, retries=0)
        with pytest.raises(AuthenticationError):
            plain.hello()
        plain.close()
        assert len(server.sessions) == 0


def test_a_handshake_refused_before_the_first_request_is_reported_not_waited_on(world, tmp_path):
    # The server refuses an unknown key while the client is still idle; for a moment after that ZeroMQ
    # has no connection to queue a message on, and a blocking send of the first request waited for one
    # forever (about 1 try in 20 hung before the client polled for room to send). Each try is bounded.
    import random
    import threading

    keys = generate_keys(tmp_path / "keys")
    stranger = generate_keys(tmp_path / "stranger")
    server = Server(world, "tcp://127.0.0.1:*", curve_secret_key=keys["server_secret"], curve_clients_dir=keys["clients_dir"])
    pause = random.Random(0)
    with server.start():
        for attempt in range(30):
            client = Client(server.address, timeout_ms=3000, retries=0, curve_server_key=keys["server_public"],
                            curve_client_key=stranger["client_secret"])
            time.sleep(pause.uniform(0.0, 0.25))  # the refusal lands before, during or after the request
            outcome = []

            def hello(client=client, outcome=outcome):
                try:
                    client.hello()
                    outcome.append("answered")
                except Exception as exc:  # noqa: BLE001 - the test reports whatever ended the request
                    outcome.append(exc)

            thread = threading.Thread(target=hello, daemon=True)
            thread.start()
            thread.join(timeout=15)
            assert not thread.is_alive(), f"try {attempt}: the request waited on a connection that was refused"
            assert isinstance(outcome[0], AuthenticationError), (attempt, outcome)
            client.close()
        assert len(server.sessions) == 0


def test_serve_command_refuses_to_bind_beyond_localhost_without_curve():
    from worldsdk.cli import main

    assert main(["serve", "--world", "tiny", "--bind", "tcp://0.0.0.0:5599"]) == 2


def test_serve_command_generates_curve_keys(tmp_path):
    from worldsdk.cli import main

    assert main(["serve", "--gen-keys", str(tmp_path)]) == 0
    names = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert names == {"server.key", "server.key_secret", "client.key", "client.key_secret", "clients/client.key"}


def test_serve_command_serves(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-m", "worldsdk.cli", "serve", "--world", "tiny", "--bind", "tcp://127.0.0.1:*",
                              "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = child.stdout.readline()
        address = line.split(" on ")[1].split()[0]
        with Client(address, timeout_ms=10000) as client:
            assert client.hello().spec.name == "tiny"
            assert client.reset(seed=0).shape == (2, 32, 32, 3)
            assert client.step("left").shape == (2, 32, 32, 3)
    finally:
        child.terminate()
        child.wait(10)
        child.stdout.close()


# -- 1.1: predicted rewards and real starts ----------------------------------------------------------


def rewarded_world(bias: bool = False) -> World:
    """The tiny world with a reward model (random and eventful, or biased to +1 and always terminating)
    and a bank of 5 constant-valued starts with prompts p0..p4; the same weights on every call."""
    world = reactive_world()
    model = tiny_reward_model(world, reward_threshold=0.3, termination_threshold=0.3)
    # seed 3: on the reacting world, a reward model whose rewards vary and whose episodes both end and go on
    world.set_reward_model(set_bias(model, reward_class=2, terminate=True) if bias else perturb_(model, 1.0, seed=3))
    world.set_start_bank(constant_bank(world), [f"p{i}" for i in range(5)])
    return world


def test_step_replies_carry_the_rewards_the_world_predicts_in_process():
    actions = (0, 1, 2, 3, 4, 5, "left", 1)
    with Server(rewarded_world(), "tcp://127.0.0.1:*").start() as server, Client(server.address, timeout_ms=5000) as client:
        assert client.hello().predicts_rewards is True
        client.reset(prompt="pong, neon style", seed=2)
        assert client.last_step is None
        got = []
        for action in actions:
            client.step(action)
            got.append(client.last_step)
    reference = rewarded_world()
    reference.reset(prompt="pong, neon style", seed=2)
    for i, (action, step) in enumerate(zip(actions, got), start=1):
        reference.step(reference.spec.key_map[action] if isinstance(action, str) else action)
        rewards, ends = reference.predicted_rewards()
        assert step.chunk == i and step.reward_predicted is True
        assert step.reward == float(rewards[0].sum()) and step.terminated == bool(ends[0].any())
        np.testing.assert_array_equal(step.frame_rewards, rewards[0])
    assert len({s.reward for s in got}) > 1 and {s.terminated for s in got} == {True, False}  # not trivially constant


def test_rewards_of_a_batched_step_are_split_per_session():
    world = rewarded_world()
    with Server(world, "tcp://127.0.0.1:*", batch_window_ms=2000).start() as server:
        peers = [RawPeer(server.address) for _ in range(3)]
        sessions = [peer.request({"type": "reset", "id": 1, "seed": 10 + i})[0]["session"] for i, peer in enumerate(peers)]
        server.batch_sizes.clear()
        for i, (peer, session) in enumerate(zip(peers, sessions)):
            peer.socket.send(msgpack.packb({"type": "step", "id": 2, "session": session, "action": i}))
        replies = []
        for peer in peers:
            assert peer.socket.poll(10_000)
            replies.append(msgpack.unpackb(peer.socket.recv_multipart()[0]))
            peer.close()
        assert dict(server.batch_sizes) == {3: 1}
    reference = rewarded_world()
    for i, reply in enumerate(replies):
        reference.reset(seed=10 + i)
        reference.step(i)
        rewards, ends = reference.predicted_rewards()
        assert reply["reward_predicted"] is True and reply["frame_rewards"] == rewards[0].tolist()
        assert reply["reward"] == float(rewards[0].sum()) and reply["terminated"] == bool(ends[0].any())


def test_a_biased_reward_model_gives_its_reward_and_ends_the_episode():
    with Server(rewarded_world(bias=True), "tcp://127.0.0.1:*").start() as server:
        peer = RawPeer(server.address)
        session = peer.request({"type": "reset", "id": 1, "seed": 0})[0]["session"]
        reply, _ = peer.request({"type": "step", "id": 2, "session": session, "action": 0})
        assert (reply["reward"], reply["terminated"], reply["reward_predicted"]) == (2.0, True, True)  # +1 on both frames
        assert reply["frame_rewards"] == [1.0, 1.0]
        peer.close()


def test_a_world_without_a_reward_model_says_so(server):
    peer = RawPeer(server.address)
    hello, _ = peer.request({"type": "hello", "id": 1, "v": list(P.PROTOCOL_VERSION)})
    assert hello["predicts_rewards"] is False and hello["num_starts"] == 0
    session = peer.request({"type": "reset", "id": 2, "seed": 0})[0]["session"]
    reply, _ = peer.request({"type": "step", "id": 3, "session": session, "action": 1})
    assert (reply["reward"], reply["terminated"], reply["reward_predicted"]) == (0.0, False, False)
    assert "frame_rewards" not in reply
    peer.close()
    with Client(server.address, timeout_ms=5000) as client:
        client.reset(seed=0)
        client.step(1)
        assert client.last_step == StepInfo(chunk=1, reward=0.0, terminated=False, reward_predicted=False, frame_rewards=None)


def test_real_starts_show_the_bank_and_are_deterministic_by_seed():
    world = rewarded_world()
    with Server(world, "tcp://127.0.0.1:*").start() as server, Client(server.address, timeout_ms=5000) as client:
        assert client.hello().num_starts == 5
        for index in (0, 3, 4):
            frames = client.reset(start="real", start_index=index, seed=1)
            np.testing.assert_array_equal(frames, world.start_frames[index][-world.chunk_frames:])
            assert client.last_reset == ResetInfo("real", index, f"p{index}", "shared", "raw")
        client.reset(start_index=2, prompt="mine")  # an index alone means a real start; a prompt sent wins
        assert client.last_reset == ResetInfo("real", 2, "mine", "shared", "raw")
        drawn = set()
        for seed in range(8):
            first = client.reset(start="real", seed=seed)
            index = client.last_reset.start_index
            assert index == int(np.random.default_rng(seed).integers(5))  # the documented draw
            after = client.step(2)
            again = client.reset(start="real", seed=seed)
            assert client.last_reset.start_index == index
            np.testing.assert_array_equal(again, first)
            np.testing.assert_array_equal(client.step(2), after)
            np.testing.assert_array_equal(first, world.start_frames[index][-world.chunk_frames:])
            drawn.add(index)
        assert len(drawn) > 1
        client.reset(start="prompt", seed=0)
        assert client.last_reset == ResetInfo("prompt", None, world.spec.default_prompt, "shared", "raw")
    reference = rewarded_world()  # a real start plays on exactly like its bank frames sent as context, in-process
    context, prompt = reference.start(3)
    np.testing.assert_array_equal(reference.reset(prompt=prompt, seed=5, context=context), world.start_frames[3][-2:])
    with Server(world, "tcp://127.0.0.1:*").start() as server, Client(server.address, timeout_ms=5000) as client:
        client.reset(start_index=3, seed=5)
        np.testing.assert_array_equal(client.step(4), reference.step(4))


BAD_STARTS = [
    ({"start": "random"}, "'start'"),
    ({"start": 1}, "'start'"),
    ({"start": ["real"]}, "'start'"),
    ({"start": "real", "start_index": -1}, "'start_index'"),
    ({"start": "real", "start_index": 1.0}, "'start_index'"),
    ({"start": "real", "start_index": True}, "'start_index'"),
    ({"start": "real", "start_index": "2"}, "'start_index'"),
    ({"start": "real", "start_index": 2**63}, "'start_index'"),
    ({"start": "real", "start_index": 5}, "[0, 5)"),
    ({"start_index": 1}, "needs start 'real'"),
    ({"start": "prompt", "start_index": 1}, "needs start 'real'"),
]


def test_bad_starts_get_an_error_and_the_server_keeps_serving():
    world = rewarded_world()
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        peer = RawPeer(server.address)
        for i, (fields, words) in enumerate(BAD_STARTS):
            reply, parts = peer.request({"type": "reset", "id": 100 + i, **fields})
            assert reply["type"] == "error" and reply["code"] == P.BAD_FIELD and reply["id"] == 100 + i, (fields, reply)
            assert words in reply["message"] and not parts, (fields, reply)
        context = {"dtype": "uint8", "shape": [2, 32, 32, 3]}
        reply, _ = peer.request({"type": "reset", "id": 200, "start": "real", "context": context}, bytes(2 * 32 * 32 * 3))
        assert reply["code"] == P.BAD_FIELD and "not both" in reply["message"]
        assert not server.sessions
        reply, parts = peer.request({"type": "reset", "id": 201, "start": "real", "start_index": 4, "seed": 0})
        assert reply["type"] == "frames" and reply["start_index"] == 4 and reply["prompt"] == "p4"
        np.testing.assert_array_equal(P.decode_frames(reply["frames"], parts), world.start_frames[4][-2:])
        reply, _ = peer.request({"type": "reset", "id": 202, "session": reply["session"], "start": None, "start_index": None})
        assert reply["type"] == "frames" and reply["start"] == "prompt" and "start_index" not in reply
        peer.close()


def test_a_real_start_without_a_bank_is_refused(server):
    peer = RawPeer(server.address)
    reply, _ = peer.request({"type": "reset", "id": 1, "start": "real"})
    assert reply["code"] == P.BAD_FIELD and "'tiny' has none" in reply["message"]
    assert peer.request({"type": "ping", "id": 2})[0]["type"] == "pong"
    peer.close()
    with Client(server.address, timeout_ms=5000) as client:
        with pytest.raises(ProtocolError, match="bank of real starts") as info:
            client.reset(start="real", seed=0)
        assert info.value.code == P.BAD_FIELD
        assert client.reset(seed=0).shape == (2, 32, 32, 3) and client.last_reset.start == "prompt"


def test_a_1_0_peer_is_served_and_a_1_1_client_keeps_to_a_1_0_server(server, world, monkeypatch):
    peer = RawPeer(server.address)
    assert peer.request({"type": "hello", "id": 1, "v": [1, 0]})[0]["type"] == "hello"
    reply, parts = peer.request({"type": "reset", "id": 2, "seed": 0, "prompt": None})  # what a 1.0 client sends
    assert reply["type"] == "frames" and len(parts) == 1
    peer.close()
    monkeypatch.setattr(P, "PROTOCOL_VERSION", (1, 0))  # a server that says it speaks 1.0 (the client was built for 1.1)
    with Server(world, "tcp://127.0.0.1:*").start() as old, Client(old.address, timeout_ms=5000) as client:
        with pytest.raises(P.BridgeError, match="start='real' needs bridge protocol 1.1"):
            client.reset(start="real")
        assert client.info.protocol == (1, 0) and client.protocol_version >= (1, 1)
        client.reset(seed=0, start="prompt")  # a prompt start sends no 1.1 field
        assert client.last_reset.start == "prompt"
    old_hello = {"v": [1, 0], "server": "worldsdk-bridge", "world": server.spec.to_dict(), "chunk_frames": 2,
                 "observation": {"dtype": "uint8", "shape": [2, 32, 32, 3]}, "codecs": ["raw"], "lease_s": 60.0,
                 "max_request_bytes": 1}
    info = WorldInfo.from_reply(old_hello)
    assert info.predicts_rewards is False and info.num_starts == 0
    assert StepInfo.from_reply({"type": "frames", "chunk": 3}) == StepInfo(3, 0.0, False, False, None)
