"""Many clients at once on loopback: no frame lost, duplicated or sent to the wrong session.

32 clients x 200 steps run against `NoiseWorld` (whose frames carry a code of their whole history,
so any frame from another session or step would differ); 32 clients x 10 steps run against the tiny
model world (perturbed, so its frames react to actions, prompt and history), whose batched frames must
equal what it gives in-process one session at a time, within the shared-batching bound.
"""


import numpy as np

from tests.conftest import assert_world_reacts, reactive_world, run_together
from worldsdk.bridge import Client, Server
from worldsdk.bridge.testing import NoiseWorld


def actions_of(client_index: int, steps: int) -> list[int]:
    return [(client_index * 7 + t) % 6 for t in range(steps)]


def play_concurrently(address: str, clients: int, steps: int) -> list[list[np.ndarray]]:
    """Each client resets with seed = its index and plays its actions; all start together."""
    frames: list[list[np.ndarray]] = [[] for _ in range(clients)]

    def play(i: int, barrier):
        with Client(address, timeout_ms=60_000) as client:
            barrier.wait()
            frames[i].append(client.reset(prompt=f"world {i % 3}", seed=i).copy())
            for t, action in enumerate(actions_of(i, steps)):
                frames[i].append(client.step(action).copy())
                assert client.chunk == t + 1, f"client {i}: chunk {client.chunk} after {t + 1} steps"

    run_together(clients, play)
    return frames


def in_process(world, clients: int, steps: int) -> list[list[np.ndarray]]:
    want = []
    for i in range(clients):
        chunks = [world.reset(prompt=f"world {i % 3}", seed=i)]
        chunks += [world.step(a) for a in actions_of(i, steps)]
        want.append(chunks)
    return want


def test_32_clients_200_steps_get_exactly_their_own_frames():
    clients, steps = 32, 200
    world = NoiseWorld(32, 32, 2)
    with Server(world, "tcp://127.0.0.1:*", max_batch=32).start() as server:
        got = play_concurrently(server.address, clients, steps)
        batch_sizes = dict(server.batch_sizes)
        assert len(server.sessions) == 0
    want = in_process(NoiseWorld(32, 32, 2), clients, steps)
    for i in range(clients):
        assert len(got[i]) == steps + 1
        for t in range(steps + 1):
            np.testing.assert_array_equal(got[i][t], want[i][t], err_msg=f"client {i} chunk {t}")
    assert sum(size * n for size, n in batch_sizes.items()) == clients * (steps + 1)
    assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"


def test_batched_model_frames_equal_the_world_in_process_one_session_at_a_time():
    # shared batching (the server's default): within the 1 grey level docs/protocol.md states, on a world
    # whose frames move by more than that when an action, a prompt or the history changes
    clients, steps = 32, 10
    world = reactive_world()
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        got = play_concurrently(server.address, clients, steps)
        batch_sizes = dict(server.batch_sizes)
    reference = reactive_world()
    assert_world_reacts(reference)
    want = in_process(reference, clients, steps)
    for i in range(clients):
        for t in range(steps + 1):
            assert np.abs(got[i][t].astype(int) - want[i][t]).max() <= 1, f"client {i} chunk {t}"
    assert max(batch_sizes) > 1, f"no batching happened: {batch_sizes}"
