"""How much does a world use its history? One denoising call, measured against real data.

    python benchmarks/context_probe.py --data data/pong --worlds runs/pong/teacher-causal/world.safetensors ...

For held-out clips of a recorded game, each world gets real context frames in its KV cache and
predicts x0 of the next chunk from pure noise (sigma = 1) and from half noise (sigma = 0.5), under
the real actions. Reported per world, in latent units (mean squared error over the chunk):

- `x0_error`: its prediction against the real next chunk;
- `swapped_context_change`: how far the prediction moves when the context comes from another
  moment of the episode (0 = the history is ignored);
- and, as yardsticks, `copy_last_error` (repeat the last context frame) and `latent_variance`.

A world that has learned the game should beat `copy_last_error` at sigma = 1; one that predicts a
typical frame whatever the history sits near `latent_variance` with `swapped_context_change` ~ 0.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from worldsdk import diffusion as D
from worldsdk.bench import write_results


@torch.inference_mode()
def probe(world, episodes, starts: int, seed: int, sigmas=(1.0, 0.5)) -> dict:
    cfg = world.model.config
    chunk = world.chunk_frames
    window = cfg.latent_frames_max - cfg.frames_per_chunk
    rng = np.random.default_rng(seed)
    sums = {s: {"x0_error": [], "swapped_context_change": []} for s in sigmas}
    copy_last, variance = [], []
    for episode in episodes:
        frames, actions = episode.frames, np.asarray(episode.actions)
        if len(frames) < 4 * window + chunk:
            continue
        for _ in range(starts):
            start = int(rng.integers(window, len(frames) - chunk)) // chunk * chunk
            other = (start + len(frames) // 2) % (len(frames) - chunk - window) + window
            prompt = episode.frame_prompts(start, start + 1)[0]
            x0 = world.codec.encode_video(torch.from_numpy(frames[start : start + chunk]).to(world.device))
            last = world.codec.encode_video(torch.from_numpy(frames[start - 1 : start]).to(world.device))
            copy_last.append(float(((x0 - last) ** 2).mean()))
            variance.append(float(x0.var()))
            features = world.frame_action_features([[int(a) for a in actions[start : start + cfg.frames_per_chunk]]])
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
            for s in sigmas:
                preds = []
                for context in (frames[start - window : start], frames[other - window : other]):
                    _, state = world.init_state(1, [prompt], [0], [context])
                    x = D.add_noise(x0, noise.to(x0.device), s)
                    preds.append(world.denoise_state(state, x, s, features))
                sums[s]["x0_error"].append(float(((preds[0] - x0) ** 2).mean()))
                sums[s]["swapped_context_change"].append(float(((preds[0] - preds[1]) ** 2).mean()))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"clips": len(copy_last), "copy_last_error": mean(copy_last), "latent_variance": mean(variance),
            "sigma": {str(s): {k: mean(v) for k, v in d.items()} for s, d in sums.items()}}


def main(argv: list[str] | None = None) -> int:
    from worldsdk import World
    from worldsdk.data.splits import split_of
    from worldsdk.data.store import EpisodeStore

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="recorded dataset of the worlds' game (its test split is used)")
    parser.add_argument("--worlds", nargs="+", required=True, help="world files or names")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--starts", type=int, default=8, help="clips per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    store = EpisodeStore(args.data)
    records = [r for r in store.records() if split_of(r.id) == "test"][: args.episodes]
    if not records:
        parser.error(f"{args.data} has no test episodes")
    episodes = [store.read(r) for r in records]
    results = {}
    print("| world | clips | x0 error, sigma 1 | change with swapped context | x0 error, sigma 0.5 | copy-last error | latent variance |")
    print("|---|---|---|---|---|---|---|")
    for name in args.worlds:
        r = probe(World.load(name), episodes, args.starts, args.seed)
        results[name] = r
        s1, s5 = r["sigma"]["1.0"], r["sigma"]["0.5"]
        print(f"| {name} | {r['clips']} | {s1['x0_error']:.3f} | {s1['swapped_context_change']:.4f} | {s5['x0_error']:.3f} "
              f"| {r['copy_last_error']:.3f} | {r['latent_variance']:.3f} |", flush=True)
    if args.out:
        write_results(args.out, {"data": args.data, "episodes": len(episodes), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
