"""docs/protocol.md, "Batching": exact sessions reproduce the world in-process bit for bit whatever else
the server serves; shared sessions stay within the stated bound of 1 grey level.

The tiny world is perturbed (tests.conftest.reactive_world) so its frames depend on the seed, the actions
and the batch's rounding; with its zero output head they would be constant and these tests could not fail.
"""


import numpy as np

from tests.conftest import reactive_world as reacting_world
from tests.conftest import run_together
from worldsdk.bridge import Client, Server

CLIENTS, STEPS = 4, 12


def actions(i: int) -> list[int]:
    return [(3 * i + t) % 6 for t in range(STEPS)]


def play_together(address: str, batching: list[str | None], default: str = "shared") -> list[np.ndarray]:
    """Each client resets (seed = its index, its batching mode) and plays; all step at the same time."""
    frames: list[list[np.ndarray]] = [[] for _ in batching]

    def play(i: int, barrier):
        with Client(address, timeout_ms=60_000) as client:
            frames[i].append(client.reset(seed=i, batching=batching[i]).copy())
            assert client.last_reset.batching == (batching[i] or default)
            barrier.wait()
            frames[i] += [client.step(a).copy() for a in actions(i)]

    run_together(len(batching), play)
    return [np.stack(f) for f in frames]


def alone(world, i: int) -> np.ndarray:
    return np.stack([world.reset(seed=i)] + [world.step(a) for a in actions(i)])


def test_exact_sessions_equal_the_world_alone_and_shared_ones_stay_within_one_grey_level():
    world = reacting_world()
    modes = ["exact", "exact", "shared", None]  # None: the server's default, shared
    with Server(world, "tcp://127.0.0.1:*", batch_window_ms=200).start() as server:
        got = play_together(server.address, modes)
        sizes = dict(server.batch_sizes)
    assert max(sizes) >= 2, f"the shared sessions never shared a forward: {sizes}"
    reference = reacting_world()
    for i, mode in enumerate(modes):
        want = alone(reference, i)
        if mode == "exact":
            np.testing.assert_array_equal(got[i], want, err_msg=f"exact session {i}")
        else:
            assert np.abs(got[i].astype(int) - want).max() <= 1, f"shared session {i}"
    assert len({f.tobytes() for f in got[0]}) > 1  # the frames do react


def test_a_server_in_exact_mode_gives_every_session_its_own_forward():
    world = reacting_world()
    with Server(world, "tcp://127.0.0.1:*", batching="exact", batch_window_ms=200).start() as server:
        with Client(server.address, timeout_ms=10_000) as client:
            assert client.hello().batching == "exact"
        got = play_together(server.address, [None, None, None], default="exact")
        assert set(server.batch_sizes) == {1}
    reference = reacting_world()
    for i in range(3):
        np.testing.assert_array_equal(got[i], alone(reference, i))
