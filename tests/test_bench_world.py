"""`worldsdk bench --world W` benches a trained world file, not only the presets."""

import json
import os
import subprocess
import sys

from worldsdk import World


def test_bench_a_world_file(tmp_path):
    path = World.from_preset("tiny", seed=0).save(tmp_path / "mine.safetensors")
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "worldsdk.cli", "bench", "--world", str(path), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [r["preset"] for r in results["step"]] == [str(path)] * 2 and [r["batch_size"] for r in results["step"]] == [1, 4]
    assert all(r["frames_per_s"] > 0 for r in results["step"]) and results["memory"]["chunks"] == 20
    assert f"{path}" in result.stdout


def test_bench_an_unknown_world_is_one_line():
    result = subprocess.run([sys.executable, "-m", "worldsdk.cli", "bench", "--world", "no-such-world", "--quick"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "no world 'no-such-world'" in result.stderr and "Traceback" not in result.stderr
