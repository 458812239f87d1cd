"""The C reference client (examples/c_client) builds, plays a live server and writes the right frames."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsdk import World
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
    world = World.from_preset("tiny", seed=0)
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
        reference = World.from_preset("tiny", seed=0)
        keys = list(world.spec.key_map)  # the C client steps through the key names in the order hello lists them
        want = [reference.reset(prompt="pong, neon style", seed=7)]
        want += [reference.step(world.spec.key_map[keys[i % len(keys)]]) for i in range(5)]
        want = np.concatenate(want)
        got = np.stack([read_ppm(p) for p in sorted(tmp_path.glob("frame_*.ppm"))])
        np.testing.assert_array_equal(got, want)
    finally:
        torch.set_num_threads(threads)
