"""Sessions in slots of one batch vs. sessions stacked and split around every step.

    python benchmarks/rollout_slots.py --preset tiny --sessions 1 4 16 --steps 24 --churn 4 [--out FILE]

For each number of sessions, every `churn` steps one session leaves and a new one joins, and
every step advances all sessions in one batched forward. Three ways, same world, same seeds:

- `stack_split`: what the bridge server did before its slots: each session keeps its own state; a
  batched step stacks them (`WorldState.stack`, a copy of every session's KV cache window), steps, and
  splits. A join opens a new single state.
- `split_restart`: what the vector env did before its slots: the batch steps in place, and a join
  splits the batch, opens a new single state and stacks all of them again (a copy of the batch).
- `slots`: one preallocated batch; a join resets its slot in place (`World.reset_sessions`:
  `KVCache.clear` and a refill of that slot), the step path never copies a cache.
- `vector_env`: `WorldVectorEnv` (slots) with episodes of `churn` steps, through its Gymnasium API.
- `bridge`: the bridge server (in this process, on loopback TCP) with one `Client` per session, all
  stepping at once so the server batches them; a leave is `Client.close`, a join a new client's reset.
  The same mode run on a checkout of the server before its slots gives the "before" figures:
  `git worktree add /tmp/before <commit>; cp benchmarks/rollout_slots.py /tmp/before/benchmarks/`
  and run it there with `--modes bridge`.

Reported per row: generated frames per second and KV-cache bytes copied per step (counted at
`KVCache.stack`, the only place a cache is copied), both over the timed steps, joins and leaves included.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from worldsdk import World
from worldsdk.model import KVCache
from worldsdk.world import WorldState
from worldsdk.bench import write_results

MODES = ("stack_split", "split_restart", "slots", "vector_env", "bridge")


class CopyCounter:
    """Counts the bytes `KVCache.stack` copies while installed."""

    def __init__(self):
        self.bytes = 0
        self._stack = KVCache.stack

    def __enter__(self):
        original = self._stack

        def counted(caches):
            out = original(caches)
            self.bytes += out.nbytes()
            return out

        KVCache.stack = staticmethod(counted)
        return self

    def __exit__(self, *exc):
        KVCache.stack = staticmethod(self._stack)


def run_bridge(world: World, sessions: int, steps: int, churn: int, actions, next_seed) -> tuple[float, int]:
    """Seconds and KV-cache bytes copied for `steps` batched steps of `sessions` bridge clients."""
    from concurrent.futures import ThreadPoolExecutor

    from worldsdk.bridge import Client, Server

    def join() -> Client:
        client = Client(server.address, timeout_ms=600_000)
        client.reset(seed=next(next_seed))
        return client

    with Server(world, "tcp://127.0.0.1:*", batch_window_ms=100, max_sessions=2 * sessions + 2,
                max_sessions_per_client=2).start() as server, ThreadPoolExecutor(sessions) as pool:
        clients = [join() for _ in range(sessions)]
        step = lambda: list(pool.map(lambda c, a: c.step(a), clients, actions()))  # noqa: E731
        step()  # warm-up
        with CopyCounter() as copies:
            start = time.perf_counter()
            for t in range(steps):
                if t % churn == churn - 1:  # one session leaves, a new one joins
                    b = t // churn % sessions
                    clients[b].close()
                    clients[b] = join()
                step()
            elapsed = time.perf_counter() - start
        for client in clients:
            client.close()
    return elapsed, copies.bytes


def run(world: World, mode: str, sessions: int, steps: int, churn: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_actions = world.spec.action.to_space().n
    actions = lambda: [int(a) for a in rng.integers(0, n_actions, sessions)]  # noqa: E731
    next_seed = iter(range(1000, 10**6))
    copied = 0
    with torch.inference_mode():
        if mode == "bridge":
            elapsed, copied = run_bridge(world, sessions, steps, churn, actions, next_seed)
        elif mode == "vector_env":
            from worldsdk.envs.world_env import WorldVectorEnv

            env = WorldVectorEnv(sessions, world, max_episode_steps=churn, autoreset_mode="same_step")
            env.reset(seed=seed)
            env.step(np.array(actions()))  # warm-up
            with CopyCounter() as copies:
                start = time.perf_counter()
                for _ in range(steps):
                    env.step(np.array(actions()))
                elapsed = time.perf_counter() - start
            copied = copies.bytes
        else:
            _, batch = world.init_state(sessions, seeds=[next(next_seed) for _ in range(sessions)])
            singles = batch.split() if mode == "stack_split" else None
            with CopyCounter() as copies:
                start = time.perf_counter()
                for step in range(steps):
                    if step % churn == churn - 1:  # one session leaves, a new one joins
                        b = step // churn % sessions
                        if mode == "slots":
                            world.reset_sessions(batch, [b], seeds=[next(next_seed)])
                        else:
                            _, single = world.init_state(1, seeds=[next(next_seed)])
                            if mode == "stack_split":
                                singles[b] = single
                            else:
                                parts = batch.split()
                                parts[b] = single
                                batch = WorldState.stack(parts)
                    if mode == "stack_split":
                        singles = world.step_state(WorldState.stack(singles), actions()).state.split()
                    else:
                        batch = world.step_state(batch, actions()).state
                elapsed = time.perf_counter() - start
            copied = copies.bytes
    frames = steps * sessions * world.chunk_frames
    return {"mode": mode, "sessions": sessions, "steps": steps, "churn": churn, "frames_per_s": frames / elapsed,
            "cache_bytes_copied_per_step": copied / steps,
            "cache_bytes_per_session": KVCache.empty(world.model.config, 1, world.spec.sink_frames).nbytes()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="world preset (random weights) or world file")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--churn", type=int, default=4, help="a session leaves and another joins every this many steps")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    world = World.load(args.preset, device=args.device)
    rows = []
    print("| mode | sessions | frames/s | KV-cache bytes copied per step |")
    print("|---|---|---|---|")
    for sessions in args.sessions:
        for mode in args.modes:
            r = run(world, mode, sessions, args.steps, args.churn)
            rows.append(r)
            print(f"| {mode} | {sessions} | {r['frames_per_s']:.1f} | {r['cache_bytes_copied_per_step']:,.0f} |", flush=True)
    if args.out:
        meta = {"preset": args.preset, "device": args.device, "torch_threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine()}
        write_results(args.out, {**meta, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
