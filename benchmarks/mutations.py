"""Plant known bugs one at a time (by monkeypatching, never by editing files) and check the tests catch each.

    python benchmarks/mutations.py                 # every mutation, a table of caught / not caught
    python benchmarks/mutations.py --only noop-actions set-prompt-ignored

Each mutation runs its test files with `pytest -x -q` in a fresh process whose `sitecustomize` applies the
patch, so the subprocesses the tests start (torchrun ranks, a resumed training run) carry it too. The bugs
are those an independent review planted (issue 19): a suite that passes with one of them is blind to it.
Exit status: 0 when every mutation is caught.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_VAR = "WORLDSDK_MUTATION"


# -- the bugs -------------------------------------------------------------------------------------------


def evict_keys_only() -> None:
    """Cache eviction shifts the keys left but leaves the values where they were."""
    from worldsdk.model.cache import KVCache

    def _evict(self, b, frames):
        t, s, n = self.tokens_per_frame, self.sink_frames, self.lengths[b]
        for layer in range(self.num_layers):
            self.keys[layer][b, s * t : (n - frames) * t] = self.keys[layer][b, (s + frames) * t : n * t].clone()
        self.lengths[b] = n - frames

    KVCache._evict = _evict


def absolute_query_positions() -> None:
    """Queries take the absolute frame index (frames since reset) instead of their slot in the window."""
    import torch

    from worldsdk.model.cache import KVCache

    def positions(self, chunk_frames):
        device = self.keys[0].device
        query = torch.tensor(self.total, device=device)[:, None] + torch.arange(chunk_frames, device=device)[None, :]
        history = torch.arange(max(self.lengths), device=device)[None, :].expand(self.batch_size, -1)
        return query, torch.cat([history, torch.tensor(self.lengths, device=device)[:, None]
                                 + torch.arange(chunk_frames, device=device)[None, :]], dim=1)

    KVCache.positions = positions


def set_prompt_ignored() -> None:
    """The server acknowledges set_prompt but never applies it."""
    from worldsdk.bridge import protocol as P
    from worldsdk.bridge.server import Server

    answer = Server._answer_now

    def _answer_now(self, request):
        if request.type != "set_prompt":
            return answer(self, request)
        session = self._session(request)
        self._reply(request, [P.pack_header({"type": P.REPLY_TYPE[request.type], "id": request.id, "session": session.id})])

    Server._answer_now = _answer_now


def noop_actions() -> None:
    """The server checks each action, then replaces it by the no-op."""
    from worldsdk.bridge.server import Server

    action = Server._action
    Server._action = lambda self, request: (action(self, request), self.spec.action.noop_action())[1]


def rank0_shard() -> None:
    """Every rank reads rank 0's shard of the data."""
    from trainers.batches import BatchStream

    init = BatchStream.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.rank = 0

    BatchStream.__init__ = __init__


def replay_ignores_reset_prompt() -> None:
    """A replayed recording resets with the game's current prompt, not the one recorded at its reset."""
    from worldsdk.viewer.game import Game

    reset = Game._reset

    def _reset(self, prompt=None, seed=None, expected=None):
        return reset(self, None if self.replay is not None else prompt, seed, expected)

    Game._reset = _reset


def resume_skips_rng() -> None:
    """Resuming a training run restores weights, optimiser and data position but not the RNG states."""
    import trainers.loop

    trainers.loop.restore_rng = lambda tensors, scalars: None


@dataclass(frozen=True)
class Mutation:
    name: str
    plant: callable
    tests: tuple[str, ...]  # pytest arguments, the likeliest catcher first (-x stops at the first failure)


MUTATIONS = (
    Mutation("evict-keys-only", evict_keys_only, ("tests/test_cache.py", "tests/test_model.py", "tests/test_world.py")),
    Mutation("absolute-query-positions", absolute_query_positions, ("tests/test_cache.py", "tests/test_model.py")),
    Mutation("set-prompt-ignored", set_prompt_ignored, ("tests/test_bridge_server.py", "tests/test_bridge_env.py")),
    Mutation("noop-actions", noop_actions, ("tests/test_bridge_fuzz.py", "tests/test_bridge_concurrency.py",
                                            "tests/test_bridge_env.py", "tests/test_bridge_c_client.py")),
    Mutation("rank0-shard", rank0_shard, ("tests/test_trainer_torchrun.py", "tests/test_trainer_loop.py")),
    Mutation("replay-ignores-reset-prompt", replay_ignores_reset_prompt, ("tests/test_viewer_recording.py",)),
    Mutation("resume-skips-rng", resume_skips_rng, ("tests/test_trainer_app.py", "tests/test_trainer_loop.py")),
)
BY_NAME = {m.name: m for m in MUTATIONS}


def plant(name: str) -> None:
    """Apply mutation `name` in this process (called from the planted `sitecustomize`)."""
    BY_NAME[name].plant()


SITECUSTOMIZE = f"""
import os
if os.environ.get({ENV_VAR!r}):
    import importlib.util
    spec = importlib.util.spec_from_file_location("worldsdk_mutations", {str(Path(__file__).resolve())!r})
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.plant(os.environ[{ENV_VAR!r}])
"""


# -- the run ------------------------------------------------------------------------------------------------


def run(mutation: Mutation, site_dir: str, timeout: float) -> dict:
    env = {**os.environ, ENV_VAR: mutation.name, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (site_dir, str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    started = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutation.tests],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, text = out.returncode, out.stdout + out.stderr
    except subprocess.TimeoutExpired:
        code, text = None, ""
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in text.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"mutation": mutation.name, "doc": mutation.plant.__doc__, "caught": code == 1 and bool(failed),
            "by": failed[0] if failed else ("timed out" if code is None else f"pytest exit {code}"),
            "seconds": time.perf_counter() - started}


def table(results: list[dict]) -> str:
    lines = ["| planted bug | caught | first failing test | s |", "|---|---|---|---|"]
    lines += [f"| {r['mutation']}: {r['doc']} | {'yes' if r['caught'] else '**no**'} | {r['by']} | {r['seconds']:.0f} |"
              for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="run these mutations only")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as site_dir:
        (Path(site_dir) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for mutation in (BY_NAME[n] for n in args.only) if args.only else MUTATIONS:
            results.append(run(mutation, site_dir, args.timeout))
            print(f"{mutation.name}: {'caught by ' + results[-1]['by'] if results[-1]['caught'] else 'NOT caught (' + results[-1]['by'] + ')'}",
                  flush=True)
    print(table(results))
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
