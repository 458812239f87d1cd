"""The bridge server keeps its sessions in slots of one batch: a join takes a free slot and resets it in
place, a leave frees it, and a step goes through a view of the sessions' slots, so no KV cache is
copied on the step path (worldsdk/bridge/server.py, SlotBatch)."""


import numpy as np
import pytest

from tests.conftest import reactive_world, run_together
from worldsdk.bridge import Client, Server
from worldsdk.bridge import protocol as P
from worldsdk.bridge.protocol import ProtocolError
from worldsdk.model import KVCache


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def step_together(clients: list[Client], actions: list[int]) -> list[np.ndarray]:
    """Every client steps at the same time (so the server can batch them); their chunks, in order."""
    frames: list[np.ndarray | None] = [None] * len(clients)

    def play(i: int, barrier):
        barrier.wait()
        frames[i] = clients[i].step(actions[i]).copy()

    run_together(len(clients), play, timeout=120)
    return frames


def test_joins_reuse_freed_slots_and_steps_copy_no_cache(monkeypatch):
    world = reactive_world()
    copies: list[int] = []
    stack = KVCache.stack
    monkeypatch.setattr(KVCache, "stack", staticmethod(lambda caches: copies.append(len(caches)) or stack(caches)))
    with Server(world, "tcp://127.0.0.1:*", batch_window_ms=2000).start() as server:
        clients = [Client(server.address, timeout_ms=60_000) for _ in range(4)]
        for i, client in enumerate(clients):
            client.reset(seed=i)
        batch = server.slots["shared"]
        assert batch.capacity == 4 and sorted(s.slot for s in server.sessions.values()) == [0, 1, 2, 3]
        assert copies, "the batch grew on joins (1, 2, 4 slots): the only place it copies"
        copies.clear()
        server.batch_sizes.clear()
        step_together(clients, [0, 1, 2, 3])
        leaving = clients[1].session
        clients[1].close()  # leaves: slot 1 is free
        clients[1] = Client(server.address, timeout_ms=60_000)
        first = clients[1].reset(seed=7).copy()  # joins: takes slot 1, cleared in place
        assert server.sessions[clients[1].session].slot == 1 and leaving not in server.sessions
        got = [first] + [step_together(clients, [0, 5, 2, 3])[1] for _ in range(3)]
        assert batch.capacity == 4 and copies == [], f"a step or a join into a free slot copied caches: {copies}"
        assert dict(server.batch_sizes) == {4: 4, 1: 1}  # every step one forward of all four; the join's reset alone
        for client in clients:
            client.close()
    reference = reactive_world()  # the joiner plays as if alone: nothing of slot 1's previous session is left
    want = [reference.reset(seed=7)] + [reference.step(5) for _ in range(3)]
    for t, (a, b) in enumerate(zip(got, want)):
        assert np.abs(a.astype(int) - b).max() <= 1, f"chunk {t}"


def test_sessions_that_do_not_neighbour_step_in_a_forward_per_run():
    world = reactive_world()
    with Server(world, "tcp://127.0.0.1:*", batch_window_ms=0).start() as server:
        clients = [Client(server.address, timeout_ms=60_000) for _ in range(4)]
        for i, client in enumerate(clients):
            client.reset(seed=i)
        server.batch_sizes.clear()
        step_together([clients[0], clients[2], clients[3]], [1, 1, 1])  # slots 0, 2 and 3: runs [0] and [2, 3]
        assert sum(n * count for n, count in server.batch_sizes.items()) == 3 and max(server.batch_sizes) <= 2
        got = clients[2].step(4)
        for client in clients:
            client.close()
    reference = reactive_world()
    reference.reset(seed=2)
    reference.step(1)
    assert np.abs(got.astype(int) - reference.step(4)).max() <= 1


def test_a_world_raising_after_writing_the_chunk_closes_the_session(monkeypatch):
    world = reactive_world()
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        client = Client(server.address, timeout_ms=60_000, retries=0)
        client.reset(seed=3, batching="exact")
        decode = world.codec.decode_chunk
        monkeypatch.setattr(world.codec, "decode_chunk", lambda *a: (_ for _ in ()).throw(RuntimeError("decoder")))
        with pytest.raises(ProtocolError) as info:
            client.step(1)  # the chunk was committed into the slot before decoding raised
        assert info.value.code == P.INTERNAL and "closed" in info.value.message
        assert not server.sessions
        client.close()
        monkeypatch.setattr(world.codec, "decode_chunk", decode)
        with Client(server.address, timeout_ms=60_000) as client:
            client.reset(seed=3, batching="exact")  # a new session in the freed slot plays as in-process
            assert server.sessions[client.session].slot == 0 and server.slots["exact"].capacity == 1
            got = [client.step(a).copy() for a in (1, 2)]
    reference = reactive_world()
    reference.reset(seed=3)
    np.testing.assert_array_equal(got, [reference.step(1), reference.step(2)])


def test_a_world_raising_before_writing_keeps_the_session(monkeypatch):
    world = reactive_world()
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        client = Client(server.address, timeout_ms=60_000, retries=0)
        client.reset(seed=4)
        denoise = world.model.denoise_chunk
        monkeypatch.setattr(world.model, "denoise_chunk", lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
        with pytest.raises(ProtocolError) as info:
            client.step(1)
        assert info.value.code == P.INTERNAL and "keeps its previous state" in info.value.message
        monkeypatch.setattr(world.model, "denoise_chunk", denoise)
        session = server.sessions[client.session]
        assert server.slots["shared"].state.cache.lengths[session.slot] == world.model.config.frames_per_chunk
        client.step(1)
        assert session.chunks == 1 and server.slots["shared"].state.steps[session.slot] == 2
        client.close()
