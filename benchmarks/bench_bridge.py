"""Bridge benchmarks: what the ZeroMQ round trip adds to a step, and what batching gains.

    python benchmarks/bench_bridge.py                 # all figures
    python benchmarks/bench_bridge.py --quick         # fewer repetitions
    python benchmarks/bench_bridge.py --json out.json

1. Round trip of one step, for 64x64 chunks (the small worlds' chunk, 2 frames) and 832x480 x
   12-frame chunks (the wan-1.3b chunk), in one run: in-process, over loopback TCP, over ipc, and
   with shared-memory frames (codec shm: headers over loopback TCP, frames in a ring), each also as
   a ratio to the in-process step. The world is `NoiseWorld` (random frames, whose step costs only
   the frame copy, so the difference is the bridge). The overhead is also given as a share of a real
   step: the `small` world's step measured here, and, for 832x480, the paper's 0.69 s chunk latency
   on one H100 (Causal Forcing, DESIGN.md).
2. Aggregate frames/s of the `tiny` and `small` worlds served to 1, 4 and 16 clients, with
   batching (max batch 16), without (max batch 1), and in exact batching mode (a forward per session).

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


def _serve(kind: str, args: dict, max_batch: int, threads: int, bind: str, queue, batching: str = "shared") -> None:
    import torch

    torch.set_num_threads(threads)
    from worldsdk.bridge import Server

    if kind == "noise":
        from worldsdk.bridge.testing import NoiseWorld

        world = NoiseWorld(**args)
    else:
        from worldsdk import World

        world = World.from_preset(kind, seed=0)
    server = Server(world, bind, max_batch=max_batch, max_sessions=64, max_sessions_per_client=64, batching=batching)
    queue.put(server.address)
    server.serve_forever()


class ServerProcess:
    def __init__(self, kind: str, args: dict | None = None, max_batch: int = 32, threads: int = 1, bind: str = "tcp://127.0.0.1:*",
                 batching: str = "shared"):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.process = ctx.Process(target=_serve, args=(kind, args or {}, max_batch, threads, bind, queue, batching), daemon=True)
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


def round_trip(height: int, width: int, chunk: int, repeats: int, real_step_ms: float | None) -> dict:
    """One step's round trip in-process, over TCP, over ipc and with shared-memory frames, in one run."""
    from worldsdk.bridge import Client
    from worldsdk.bridge.testing import NoiseWorld

    args = {"height": height, "width": width, "chunk_frames": chunk}
    world = NoiseWorld(**args)
    world.reset(seed=0)
    times = {"in_process": _median_ms(lambda: world.step(1), repeats)}
    ipc = f"ipc:///tmp/worldsdk-bench-{os.getpid()}"
    for transport, bind, codec in (("tcp", "tcp://127.0.0.1:*", "raw"), ("ipc", ipc, "raw"), ("shm", "tcp://127.0.0.1:*", "shm")):
        with ServerProcess("noise", args, bind=bind) as server, Client(server.address, timeout_ms=60_000, codec=codec) as client:
            client.reset(seed=0)
            times[transport] = _median_ms(lambda: client.step(1), repeats)
            if transport == "tcp":
                times["ping"] = _median_ms(client.ping, repeats)
    row = {"chunk": f"{width}x{height}x{chunk}", "bytes": height * width * chunk * 3,
           **{f"{name}_ms": round(ms, 3) for name, ms in times.items()},
           **{f"{name}_ratio": round(times[name] / times["in_process"], 2) for name in ("tcp", "ipc", "shm")}}
    if real_step_ms:
        row["real_step_ms"] = round(real_step_ms, 1)
        for name in ("tcp", "shm"):
            row[f"{name}_overhead_pct_of_real_step"] = round(100 * (times[name] - times["in_process"]) / real_step_ms, 2)
    return row


def world_step_ms(preset: str, repeats: int) -> float:
    import torch

    from worldsdk import World

    torch.set_num_threads(1)
    world = World.from_preset(preset, seed=0)
    world.reset(seed=0)
    return _median_ms(lambda: world.step(1), repeats)


def aggregate(preset: str, clients: int, steps: int, max_batch: int, batching: str = "shared") -> dict:
    from worldsdk.bridge import Client

    with ServerProcess(preset, max_batch=max_batch, batching=batching) as server:
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
    return {"world": preset, "clients": clients, "max_batch": max_batch, "batching": batching, "steps_per_client": steps,
            "frames_per_s": round(frames / seconds, 1),
            "chunks_per_s": round(clients * steps / seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worlds", default="tiny,small", help="presets served to 1, 4 and 16 clients (comma-separated; '' for none)")
    args = parser.parse_args()
    repeats = 50 if args.quick else 300

    small_ms = world_step_ms("small", 5 if args.quick else 20)
    results = {"machine": f"{os.cpu_count()} CPU cores (shared), server torch threads 1", "small_world_step_ms": round(small_ms, 1)}
    big = max(20, repeats // 10)
    results["round_trip"] = [
        round_trip(64, 64, 2, repeats, small_ms),
        round_trip(480, 832, 12, big, PAPER_CHUNK_SECONDS * 1000),
    ]
    for row in results["round_trip"]:
        print(json.dumps(row), flush=True)
    results["aggregate"] = []
    for preset in filter(None, args.worlds.split(",")):
        steps = (8 if args.quick else 20) if preset != "tiny" else (30 if args.quick else 100)
        for max_batch, batching in ((16, "shared"), (1, "shared"), (16, "exact")):
            for clients in (1, 4, 16):
                row = aggregate(preset, clients, steps, max_batch, batching)
                results["aggregate"].append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
