"""Streaming speed of a paper-scale world: the wan-1.3b DiT (random weights) at 832x480 with the Wan VAE.

One step = 4 denoising passes over a chunk of 3 latent frames against the KV cache + 1 commit pass at
t = 0 + Wan VAE decode of the new chunk (12 frames; the first chunk 9 decoded + 3 held). Reports
frames/s in steady state and over a 21-latent (81-frame) clip, the first chunk's latency (prompt
already encoded, as a game would have it), peak memory, and each part's share of a step.

    python benchmarks/bench_wan.py                       # GPU: full shape, bf16, attention 'auto'
    python benchmarks/bench_wan.py --tiny                # CPU: tiny shapes, a smoke run of the same code
    python benchmarks/bench_wan.py --compile --attention flash --out bench_wan.json

The text encoder is a small stand-in (UMT5-XXL runs once per prompt, not per step).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from collections import defaultdict

import torch

from worldsdk.config import ModelConfig, WorldSpec, preset
from worldsdk import World
from worldsdk.wan import random_world_parts
from worldsdk.bench import write_results


def tiny_parts() -> tuple[ModelConfig, WorldSpec, dict]:
    """CPU shapes: 64x128 frames -> 8x16 latents (32 tokens per frame), 2 small blocks, a narrow Wan VAE."""
    config = ModelConfig(latent_height=8, latent_width=16, dim=128, ffn_dim=256, num_heads=2, num_layers=2,
                         text_dim=64, text_len=32)
    spec = WorldSpec(name="wan-tiny", height=64, width=128, fps=16.0, default_prompt="a mountain lake at dawn")
    return config, spec, {"base_dim": 16, "num_res_blocks": 1}


def full_parts() -> tuple[ModelConfig, WorldSpec, dict]:
    """The paper: Wan2.1-T2V-1.3B DiT, 832x480, chunks of 3 latent frames; the Wan2.1 VAE's own shape."""
    config, spec = preset("wan-1.3b")
    return config, spec, {}


class PartTimer:
    """Wraps the world's model and codec entry points to time each part of a step (CUDA-synchronised)."""

    def __init__(self, world, device: torch.device):
        self.totals: dict[str, float] = defaultdict(float)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for owner, name, label in ((world.model, "denoise_chunk", "denoise (4 passes)"),
                                   (world.model, "commit_chunk", "commit (1 pass)"),
                                   (world.codec, "decode_chunk", "VAE decode")):
            setattr(owner, name, self._timed(getattr(owner, name), label))

    def _timed(self, fn, label):
        def wrapper(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.sync()
            self.totals[label] += time.perf_counter() - start
            return out

        return wrapper

    def reset(self) -> None:
        self.totals.clear()


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    model_config, spec, vae_config = tiny_parts() if args.tiny else full_parts()
    world = World.from_parts(random_world_parts(model_config, spec, vae_config, dtype=dtype), device, dtype=dtype,
                             attention=args.attention, compile=args.compile)
    clip_chunks = model_config.latent_frames_max // model_config.frames_per_chunk  # 7: the trained 81-frame clip
    timer = PartTimer(world, device)
    sync = timer.sync
    prompt = spec.default_prompt
    for _ in range(max(args.warmup, 1)):  # kernels, autotuning, compile; caches the prompt's features
        world.reset(prompt=prompt, seed=0)
        for _ in range(2):
            world.step(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    sync()
    start = time.perf_counter()
    world.reset(prompt=prompt, seed=1)
    sync()
    first_chunk_s = time.perf_counter() - start
    timer.reset()
    steps = max(args.steps, clip_chunks - 1)
    step_times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        world.step(0)
        sync()
        step_times.append(time.perf_counter() - t0)
    steady_s = sum(step_times)
    parts = dict(timer.totals)
    parts["other (noise, sampler, copies)"] = max(steady_s - sum(parts.values()), 0.0)

    decoded_first = 1 + world.codec.config.temporal_stride * (model_config.frames_per_chunk - 1)
    clip_frames = decoded_first + (clip_chunks - 1) * world.chunk_frames  # 81
    clip_s = first_chunk_s + sum(step_times[: clip_chunks - 1])
    return {
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "shape": "tiny" if args.tiny else "wan-1.3b 832x480",
        "settings": {"dtype": args.dtype, "attention": args.attention, "compile": args.compile,
                     "frames_per_chunk": model_config.frames_per_chunk, "denoising_steps": len(spec.denoising_steps),
                     "dit_parameters_m": world.model.num_parameters() / 1e6,
                     "vae_parameters_m": sum(p.numel() for p in world.codec.vae.parameters()) / 1e6},
        "frames_per_s_steady": steps * world.chunk_frames / steady_s,
        "frames_per_s_clip": clip_frames / clip_s,
        "clip_frames": clip_frames,
        "first_chunk_latency_s": first_chunk_s,
        "step_ms": 1000 * steady_s / steps,
        "peak_memory_mib": peak_memory_mib(device),
        "kv_cache_mib": world.state.cache.nbytes() / 2**20,
        "share": {k: v / steady_s for k, v in parts.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (for a CPU)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="bf16" if cuda else "fp32")
    parser.add_argument("--attention", choices=("sdpa", "flash", "auto"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile every block")
    parser.add_argument("--steps", type=int, default=12, help="timed steps after the first chunk (at least a clip's 6)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed episodes first (at least 1)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    if not args.tiny and torch.device(args.device).type != "cuda":
        parser.error("the full 832x480 shape needs a GPU; use --tiny on a CPU")
    results = run(args)
    print(f"{results['shape']} on {results['machine']['device']} ({args.dtype}, attention {args.attention}"
          f"{', compiled' if args.compile else ''}): DiT {results['settings']['dit_parameters_m']:.1f} M, "
          f"VAE {results['settings']['vae_parameters_m']:.1f} M parameters")
    print(f"  frames/s: {results['frames_per_s_steady']:.2f} steady, {results['frames_per_s_clip']:.2f} over a "
          f"{results['clip_frames']}-frame clip; {results['step_ms']:.0f} ms per step")
    print(f"  first chunk latency: {results['first_chunk_latency_s']:.3f} s")
    print(f"  peak memory: {results['peak_memory_mib']:.0f} MiB (KV cache {results['kv_cache_mib']:.1f} MiB)")
    for part, share in results["share"].items():
        print(f"  {part:32s} {100 * share:5.1f} %")
    if args.out:
        write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
