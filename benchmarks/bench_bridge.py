"""Bridge benchmarks: what the ZeroMQ round trip adds to a step, and what batching gains.

    python benchmarks/bench_bridge.py                 # all figures
    python benchmarks/bench_bridge.py --quick         # fewer repetitions
    python benchmarks/bench_bridge.py --json out.json

1. Round-trip overhead over loopback TCP versus the same step in-process, for 64x64 chunks (the
   small worlds' chunk, 2 frames) and 832x480 x 12-frame chunks (the wan-1.3b chunk), with random
   frames (`NoiseWorld`, whose step costs only the frame copy, so the difference is the bridge).
   The overhead is also given as a share of a real step: the `small` world's step measured here,
   and, for 832x480, the paper's 0.69 s chunk latency on one H100 (Causal Forcing, DESIGN.md).
2. Aggregate frames/s of the `tiny` and `small` worlds served to 1, 4 and 16 clients, with
   batching (max batch 16) and without (max batch 1).

The server runs in its own process (as `worldsdk serve` would); clients are threads here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PAPER_CHUNK_SECONDS = 0.69  # Causal Forcing, one H100, chunk-wise latency (DESIGN.md)


def _serve(kind: str, args: dict, max_batch: int, threads: int, bind: str, queue) -> None:
    import torch

    torch.set_num_threads(threads)
    from worldsdk.bridge import Server

    if kind == "noise":
        from worldsdk.bridge.testing import NoiseWorld

        world = NoiseWorld(**args)
    else:
        from worldsdk import World

        world = World.from_preset(kind, seed=0)
    server = Server(world, bind, max_batch=max_batch, max_sessions=64)
    queue.put(server.address)
    server.serve_forever()


class ServerProcess:
    def __init__(self, kind: str, args: dict | None = None, max_batch: int = 32, threads: int = 1, bind: str = "tcp://127.0.0.1:*"):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(kind, args or {}, max_batch, threads, bind, queue), daemon=True)
        self.process.start()
        deadline = time.monotonic() + 300
        while True:
            try:
                self.address = queue.get(timeout=1)
                break
            except Exception:  # queue.Empty
                if not self.process.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} server process did not start (exit code {self.process.exitcode})") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.join(10)


def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def round_trip(height: int, width: int, chunk: int, repeats: int, real_step_ms: float | None, bind: str = "tcp://127.0.0.1:*") -> dict:
    from worldsdk.bridge import Client
    from worldsdk.bridge.testing import NoiseWorld

    args = {"height": height, "width": width, "chunk_frames": chunk}
    world = NoiseWorld(**args)
    world.reset(seed=0)
    in_process = _median_ms(lambda: world.step(1), repeats)
    with ServerProcess("noise", args, bind=bind) as server, Client(server.address, timeout_ms=60_000) as client:
        client.reset(seed=0)
        remote = _median_ms(lambda: client.step(1), repeats)
        ping = _median_ms(client.ping, repeats)
    overhead = remote - in_process
    row = {
        "chunk": f"{width}x{height}x{chunk}", "transport": bind.split("://")[0], "bytes": height * width * chunk * 3,
        "in_process_ms": round(in_process, 3),
        "loopback_ms": round(remote, 3), "overhead_ms": round(overhead, 3), "ping_ms": round(ping, 3),
        "throughput_GBps": round(height * width * chunk * 3 / (remote / 1000) / 1e9, 2),
    }
    if real_step_ms:
        row["real_step_ms"] = round(real_step_ms, 1)
        row["overhead_pct_of_step"] = round(100 * overhead / real_step_ms, 2)
    return row


def world_step_ms(preset: str, repeats: int) -> float:
    import torch

    from worldsdk import World

    torch.set_num_threads(1)
    world = World.from_preset(preset, seed=0)
    world.reset(seed=0)
    return _median_ms(lambda: world.step(1), repeats)


def aggregate(preset: str, clients: int, steps: int, max_batch: int) -> dict:
    from worldsdk.bridge import Client

    with ServerProcess(preset, max_batch=max_batch) as server:
        sessions = [Client(server.address, timeout_ms=120_000) for _ in range(clients)]
        for i, client in enumerate(sessions):
            client.reset(seed=i)
            client.step(0)  # warm up
        frames_per_step = sessions[0].info.observation_shape[0] if sessions[0].info else 2
        barrier = threading.Barrier(clients + 1)

        def play(client):
            barrier.wait()
            for t in range(steps):
                client.step(t % 6)

        threads = [threading.Thread(target=play, args=(c,)) for c in sessions]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - start
        for client in sessions:
            client.close()
    frames = clients * steps * frames_per_step
    return {"world": preset, "clients": clients, "max_batch": max_batch, "steps_per_client": steps,
            "frames_per_s": round(frames / seconds, 1),
            "chunks_per_s": round(clients * steps / seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worlds", default="tiny,small", help="presets served to 1, 4 and 16 clients (comma-separated)")
    args = parser.parse_args()
    repeats = 50 if args.quick else 300

    small_ms = world_step_ms("small", 5 if args.quick else 20)
    results = {"machine": f"{os.cpu_count()} CPU cores (shared), server torch threads 1", "small_world_step_ms": round(small_ms, 1)}
    big = max(20, repeats // 10)
    results["round_trip"] = [
        round_trip(64, 64, 2, repeats, small_ms),
        round_trip(480, 832, 12, big, PAPER_CHUNK_SECONDS * 1000),
        round_trip(480, 832, 12, big, PAPER_CHUNK_SECONDS * 1000, bind=f"ipc:///tmp/worldsdk-bench-{os.getpid()}"),
    ]
    for row in results["round_trip"]:
        print(json.dumps(row), flush=True)
    results["aggregate"] = []
    for preset in args.worlds.split(","):
        steps = (8 if args.quick else 20) if preset != "tiny" else (30 if args.quick else 100)
        for max_batch in (16, 1):
            for clients in (1, 4, 16):
                row = aggregate(preset, clients, steps, max_batch)
                results["aggregate"].append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
