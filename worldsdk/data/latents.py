"""The latent cache: a recorded dataset encoded once by the frame autoencoder, for teacher training.

Layout of a cache directory:

    index.json               source dataset path and meta, autoencoder fingerprint and config,
                             latent shape and dtype, and per episode: shard, length, size, sha256,
                             the source shard's sha256, prompts
    latents/ep_000000.safetensors
                             latents (T, C, h, w) float16, the episode's actions (or actions.<key>),
                             rewards, terminated, truncated, prompt_ids; metadata "prompts" and
                             "styles" as JSON lists

Building again with the same autoencoder encodes only episodes that are new (or changed) in the
source; a different autoencoder (by a hash of its weights) re-encodes everything. Each shard is
written atomically and the index after every episode, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from worldsdk.data.datasets import ClipSource, EpisodeAnnotations, select_split
from worldsdk.data.actions import encode_actions
from worldsdk.data.splits import TEST_FRACTION, VAL_FRACTION
from worldsdk.data.store import (
    FORMAT_VERSION,
    INDEX_FILE,
    DatasetMeta,
    EpisodeRecord,
    EpisodeStore,
    sha256_bytes,
    write_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

LATENT_DIR = "latents"


def autoencoder_fingerprint(autoencoder: torch.nn.Module) -> str:
    """sha256 of what an autoencoder's latents depend on: every parameter and buffer (names, dtypes,
    shapes, values) but the decoder's. Two autoencoders with this fingerprint encode every frame to the
    same latents, so a latent cache, and a world or reward model trained on it, stays valid when only the
    decoder is fine-tuned (stage=autoencoder with train_encoder=false)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(autoencoder.state_dict().items()):
        if name.startswith("decoder."):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _read_index(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _episode_tensors(episode, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    tensors = {"latents": latents.contiguous()}
    if isinstance(episode.actions, dict):
        tensors.update({f"actions.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in episode.actions.items()})
    else:
        tensors["actions"] = torch.from_numpy(np.ascontiguousarray(episode.actions))
    tensors["rewards"] = torch.from_numpy(np.ascontiguousarray(episode.rewards, dtype=np.float32))
    tensors["terminated"] = torch.from_numpy(np.ascontiguousarray(episode.terminated, dtype=bool))
    tensors["truncated"] = torch.from_numpy(np.ascontiguousarray(episode.truncated, dtype=bool))
    tensors["prompt_ids"] = torch.from_numpy(np.ascontiguousarray(episode.prompt_ids, dtype=np.int16))
    return tensors


@torch.no_grad()
def build_latent_cache(
    dataset_dir: str | os.PathLike,
    autoencoder: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float16,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Encode every readable episode of `dataset_dir` with `autoencoder.encode` into `out_dir`.

    `autoencoder` maps uint8 frames (N, H, W, 3) to normalised latents (N, C, h, w) (FrameAutoencoder
    does). Returns `out_dir`. Episodes already cached with the same autoencoder are kept.
    """
    store = EpisodeStore(dataset_dir)
    meta = store.meta()
    out = Path(out_dir)
    (out / LATENT_DIR).mkdir(parents=True, exist_ok=True)
    fingerprint = autoencoder_fingerprint(autoencoder)
    device = torch.device(device) if device is not None else next(autoencoder.parameters()).device
    dtype_name = str(dtype).removeprefix("torch.")
    config = getattr(autoencoder, "config", None)
    header = {
        "format_version": FORMAT_VERSION,
        "source": str(Path(dataset_dir).resolve()),
        "dataset_meta": meta.to_dict(),
        "autoencoder": {"fingerprint": fingerprint, "config": config.to_dict() if hasattr(config, "to_dict") else None},
        "dtype": dtype_name,
    }
    previous = _read_index(out / INDEX_FILE)
    reusable: dict[int, dict] = {}
    if previous and previous.get("autoencoder", {}).get("fingerprint") == fingerprint and previous.get("dtype") == dtype_name:
        reusable = {e["id"]: e for e in previous["episodes"]}
        header["latent_shape"] = previous.get("latent_shape")
    elif previous:
        log.info("autoencoder or dtype changed since %s was built: encoding every episode again", out)

    records = store.verified_records()
    entries: list[dict] = []
    todo: list[EpisodeRecord] = []
    for record in records:
        entry = reusable.get(record.id)
        if entry and entry["source_sha256"] == record.sha256 and _shard_ok(out, entry):
            entries.append(entry)
        else:
            todo.append(record)
    was_training = autoencoder.training
    autoencoder.eval()
    try:
        with tqdm(total=sum(r.length for r in todo), unit="frame", disable=not progress, desc="encoding latents") as bar:
            for record in todo:
                episode = store.read(record)
                latents = []
                for i in range(0, len(episode), batch_size):
                    frames = torch.from_numpy(episode.frames[i : i + batch_size]).to(device)
                    latents.append(autoencoder.encode(frames).to(dtype).cpu())  # (N, C, h, w)
                    bar.update(len(frames))
                latents_t = torch.cat(latents)
                header["latent_shape"] = list(latents_t.shape[1:])
                data = save_safetensors(
                    _episode_tensors(episode, latents_t),
                    metadata={"prompts": json.dumps(list(episode.prompts)), "styles": json.dumps(list(episode.styles))},
                )
                shard = f"{LATENT_DIR}/ep_{record.id:06d}.safetensors"
                write_atomic(out / shard, data)
                entries.append(
                    {
                        "id": record.id, "shard": shard, "length": record.length, "bytes": len(data),
                        "sha256": sha256_bytes(data), "source_sha256": record.sha256, "game": record.game,
                        "prompts": list(record.prompts), "styles": list(record.styles),
                        "switch_frames": list(record.switch_frames),
                    }
                )
                entries.sort(key=lambda e: e["id"])
                write_json_atomic(out / INDEX_FILE, {**header, "episodes": entries})
    finally:
        autoencoder.train(was_training)
    write_json_atomic(out / INDEX_FILE, {**header, "episodes": entries})
    log.info("latent cache %s: %d episodes (%d encoded now, %d reused)", out, len(entries), len(todo), len(entries) - len(todo))
    return out


def _shard_ok(root: Path, entry: dict, warn: bool = False) -> bool:
    path = root / entry["shard"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if warn:
            log.warning("latent shard %s is missing; skipping episode %d", path, entry["id"])
        return False
    ok = len(data) == entry["bytes"] and sha256_bytes(data) == entry["sha256"]
    if not ok and warn:
        problem = "truncated" if len(data) < entry["bytes"] else "corrupt"
        log.warning("latent shard %s is %s (%d bytes, index expects %d); skipping episode %d",
                    path, problem, len(data), entry["bytes"], entry["id"])
    return ok


class LatentClipDataset(ClipSource):
    """Clips of `clip_len` latent frames from a latent cache; samples as ClipDataset's, with
    "latents" float32 (T, C, h, w) in place of "frames". Same splits as the source dataset."""

    key = "latents"

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        clip_len: int,
        *,
        split: str | None = "train",
        stride: int | None = None,
        val_fraction: float = VAL_FRACTION,
        test_fraction: float = TEST_FRACTION,
    ):
        self.root = Path(cache_dir)
        index = _read_index(self.root / INDEX_FILE)
        if index is None:
            raise FileNotFoundError(f"{self.root} is not a latent cache (no {INDEX_FILE}); build one with build_latent_cache")
        self.index = index
        self.meta = DatasetMeta.from_dict(index["dataset_meta"])
        self.latent_shape = tuple(index.get("latent_shape") or ())
        entries = {e["id"]: e for e in index["episodes"] if _shard_ok(self.root, e, warn=True)}
        records = [
            EpisodeRecord(id=e["id"], shard=e["shard"], length=e["length"], bytes=e["bytes"], sha256=e["sha256"],
                          game=e["game"], prompts=tuple(e["prompts"]), styles=tuple(e["styles"]),
                          switch_frames=tuple(e.get("switch_frames", ())))
            for e in entries.values()
        ]
        records = select_split(sorted(records, key=lambda r: r.id), split, val_fraction, test_fraction)
        super().__init__([self._annotations(r) for r in records], clip_len, stride)

    def _annotations(self, record: EpisodeRecord) -> EpisodeAnnotations:
        with safe_open(self.root / record.shard, framework="np") as f:
            names = set(f.keys())
            if "actions" in names:
                actions: Any = f.get_tensor("actions")
            else:
                actions = {n.split(".", 1)[1]: f.get_tensor(n) for n in sorted(names) if n.startswith("actions.")}
            prompts = tuple(json.loads(f.metadata()["prompts"]))
            return EpisodeAnnotations(
                record=record,
                actions=actions,
                action_features=encode_actions(self.meta.action_spec, actions),
                rewards=f.get_tensor("rewards"),
                terminated=f.get_tensor("terminated"),
                prompt_ids=f.get_tensor("prompt_ids").astype(np.int64),
                prompts=prompts,
            )

    def _read(self, episode: int, start: int, stop: int) -> torch.Tensor:
        with safe_open(self.root / self.episodes[episode].record.shard, framework="pt") as f:
            return f.get_slice("latents")[start:stop].float()  # (T, C, h, w)
