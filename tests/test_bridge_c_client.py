"""The C reference client (examples/c_client) builds, plays a live server and writes the right frames."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_world_reacts, reactive_world
from worldsdk.bridge import Server

C_CLIENT = Path(__file__).resolve().parents[1] / "examples" / "c_client"


def _have_libraries() -> bool:
    if shutil.which("make") is None or shutil.which("cc") is None or shutil.which("pkg-config") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", "libzmq", "msgpack"]).returncode == 0


pytestmark = pytest.mark.skipif(not _have_libraries(), reason="needs make, cc and libzmq3-dev + libmsgpack-dev (.ci/apt-packages.txt)")


def read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, size, maxval, pixels = data.split(b"\n", 3)
    width, height = map(int, size.split())
    assert magic == b"P6" and maxval == b"255"
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)


def test_c_client_plays_a_live_server(tmp_path):
    build = subprocess.run(["make", "-C", str(C_CLIENT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    world = reactive_world()
    try:
        with Server(world, "tcp://127.0.0.1:*").start() as server:
            run = subprocess.run(
                [str(C_CLIENT / "build" / "worldsdk_client"), "-p", "pong, neon style", "-s", "7", "-n", "5", "-o", str(tmp_path),
                 "-t", "20000", server.address],
                capture_output=True, text=True, timeout=60,
            )
            assert run.returncode == 0, run.stderr
            assert "reset: session" in run.stdout and len(server.sessions) == 0  # the client closed its session
            bad = subprocess.run([str(C_CLIENT / "build" / "worldsdk_client"), "-n", "0", "-t", "300", "tcp://127.0.0.1:1"],
                                 capture_output=True, text=True, timeout=30)
            assert bad.returncode == 1 and "no reply" in bad.stderr
        reference = reactive_world()
        assert_world_reacts(reference)  # so equal frames show that the client's keys arrived as actions
        keys = list(world.spec.key_map)  # the C client steps through the key names in the order hello lists them
        want = [reference.reset(prompt="pong, neon style", seed=7)]
        want += [reference.step(world.spec.key_map[keys[i % len(keys)]]) for i in range(5)]
        want = np.concatenate(want)
        got = np.stack([read_ppm(p) for p in sorted(tmp_path.glob("frame_*.ppm"))])
        np.testing.assert_array_equal(got, want)
    finally:
        torch.set_num_threads(threads)


def run_client(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(C_CLIENT / "build" / "worldsdk_client"), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built():
    build = subprocess.run(["make", "-C", str(C_CLIENT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr


def test_c_client_reads_shared_memory_frames_equal_to_the_socket_ones(tmp_path, built):
    """docs/protocol.md, "Shared-memory frames": the same frames as raw, none through the socket."""
    world = reactive_world()  # frames that depend on the actions, so a wrong chunk cannot pass
    with Server(world, "tcp://127.0.0.1:*").start() as server:
        for codec in ("raw", "shm"):
            run = run_client("-p", "pong", "-s", "3", "-n", "12", "-c", codec, "-o", str(tmp_path / codec), "-t", "20000", server.address)
            assert run.returncode == 0, run.stderr
        assert not server.sessions and not list(Path("/dev/shm").glob("worldsdk-*"))  # closing freed the ring
    raw = np.stack([read_ppm(p) for p in sorted((tmp_path / "raw").glob("*.ppm"))])
    shm = np.stack([read_ppm(p) for p in sorted((tmp_path / "shm").glob("*.ppm"))])
    assert len(raw) == 26 and len({frame.tobytes() for frame in raw}) > 2
    np.testing.assert_array_equal(shm, raw)


def test_c_client_reports_a_nil_id_error_as_the_servers_error(built):
    from worldsdk.bridge.testing import NoiseWorld

    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*").start() as server:
        run = run_client("-n", "0", "-t", "20000", "-i", str(2**63), server.address)  # an id the server cannot read
    assert run.returncode == 1 and "server error [bad_field]" in run.stderr and "'id'" in run.stderr, run.stderr
    assert "no reply" not in run.stderr


def test_c_client_stops_at_a_failed_handshake(tmp_path, built):
    from worldsdk.bridge.cli import generate_keys
    from worldsdk.bridge.testing import NoiseWorld

    keys = generate_keys(tmp_path / "keys")
    with Server(NoiseWorld(16, 16, 2), "tcp://127.0.0.1:*", curve_secret_key=keys["server_secret"],
                curve_clients_dir=keys["clients_dir"]).start() as server:
        run = run_client("-n", "0", "-t", "20000", server.address, timeout=10)  # a plaintext client of a CURVE server
    assert run.returncode == 1 and "handshake failed" in run.stderr, run.stderr
