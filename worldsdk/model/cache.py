"""The KV cache of a streaming world: clean history per layer plus the prompt's cross-attention K/V.

Keys are stored *before* RoPE, one slot per latent frame in window order, so positions are slot
indices: a rolling window (sink frames + most recent frames) shifts old frames out and the model
never sees a frame position beyond the trained clip length. Memory is preallocated once, so an
episode of any length runs in constant memory.

Every batch item has its own committed length (items may have been reset at different times);
attention reads the union of slots and masks each item's empty ones.

The buffers hold the window plus one chunk (`latent_frames_max` frames in all): a chunk being generated
writes its K/V into the slots right after each item's window (`extend`) and attends over a view of the
buffer, so no pass copies the history; a pass that does not commit leaves the lengths, hence the window,
as they were. A commit then only moves the lengths on (and evicts once the window is full).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsdk.config import ModelConfig


@dataclass
class KVCache:
    """Per-layer self-attention K/V of committed clean frames, and per-layer text K/V.

    keys[l], values[l]: (B, (capacity_frames + frames_per_chunk) * tokens_per_frame, heads, head_dim),
    pre-RoPE: the window, then room for the chunk being generated.
    lengths: committed frames held per item (<= capacity_frames).
    total: frames committed per item since its reset (including evicted ones).
    text_keys[l], text_values[l]: (B, text_len, heads, head_dim).
    recent: the last `context_frames` committed clean latents (B, C, K, h, w), oldest first, and
    recent_valid (B, K) 1 where a frame was committed; None for a model without context frames
    (ModelConfig.context_frames). Eviction never touches them: they are always the latest frames.
    recent_clean: the same frames as they were before the noise of a noised commit
    (`WorldSpec.context_noise`), which the history predictor reads (ModelConfig.predictor_channels);
    None for a model without one.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    text_keys: list[torch.Tensor]
    text_values: list[torch.Tensor]
    lengths: list[int]
    total: list[int]
    tokens_per_frame: int
    capacity_frames: int
    sink_frames: int
    recent: torch.Tensor | None = None
    recent_valid: torch.Tensor | None = None
    recent_clean: torch.Tensor | None = None

    @staticmethod
    def empty(config: ModelConfig, batch_size: int, sink_frames: int = 1, device=None, dtype=torch.float32) -> "KVCache":
        """A preallocated cache whose window holds latent_frames_max - frames_per_chunk frames, with room
        after it for one chunk."""
        capacity = config.latent_frames_max - config.frames_per_chunk
        if not 0 <= sink_frames < capacity:
            raise ValueError(f"sink_frames must be in [0, {capacity}), got {sink_frames}")
        shape = (batch_size, config.latent_frames_max * config.tokens_per_frame, config.num_heads, config.head_dim)
        text_shape = (batch_size, config.text_len, config.num_heads, config.head_dim)
        n = config.num_layers
        k = config.context_frames
        recent_shape = (batch_size, config.latent_channels, k, config.latent_height, config.latent_width)
        return KVCache(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)],
            text_keys=[torch.zeros(text_shape, device=device, dtype=dtype) for _ in range(n)],
            text_values=[torch.zeros(text_shape, device=device, dtype=dtype) for _ in range(n)],
            lengths=[0] * batch_size,
            total=[0] * batch_size,
            tokens_per_frame=config.tokens_per_frame,
            capacity_frames=capacity,
            sink_frames=sink_frames,
            recent=torch.zeros(recent_shape, device=device, dtype=torch.float32) if k else None,
            recent_valid=torch.zeros(batch_size, k, device=device, dtype=torch.float32) if k else None,
            recent_clean=torch.zeros(recent_shape, device=device, dtype=torch.float32) if config.predictor_channels else None,
        )

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    # -- reading -------------------------------------------------------------------------------------
    def positions(self, chunk_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame positions of the chunk's queries (B, C) and of the keys `extend` returns (B, max_len + C):
        the slot indices, since every item's chunk sits right after its window."""
        device = self.keys[0].device
        lengths = torch.tensor(self.lengths, device=device)
        query = lengths[:, None] + torch.arange(chunk_frames, device=device)[None, :]
        keys = torch.arange(max(self.lengths) + chunk_frames, device=device)[None, :].expand(self.batch_size, -1)
        return query, keys

    def key_mask(self, chunk_frames: int) -> torch.Tensor | None:
        """(B, 1, 1, keys) bool mask of the keys `extend` returns that an item's chunk sees (its window and
        itself), or None when every item has the same length."""
        if len(set(self.lengths)) == 1:
            return None
        device = self.keys[0].device
        slot = torch.arange(max(self.lengths) + chunk_frames, device=device)
        valid = slot[None, :] < torch.tensor(self.lengths, device=device)[:, None] + chunk_frames  # (B, max_len + C)
        return valid.repeat_interleave(self.tokens_per_frame, dim=1)[:, None, None, :]

    @torch.compiler.disable  # called inside compiled blocks: tracing its bookkeeping would recompile at every length
    def extend(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What a chunk's keys and values (B, C * T, H, D) attend over in `layer`: each item's window with the
        chunk written right after it, (B, (max_len + C) * T, H, D) each (slots past an item's chunk are
        masked by `key_mask`). The lengths do not change: only `commit` moves them on.

        The chunk is written into the buffer's free slots and a view of the buffer returned, so the window
        is not copied. Into a copy of the window instead where the buffer must not take it: when gradients
        flow through the chunk's K/V (they would pull the buffer into the autograd graph, and the next
        write into it would break the backward pass), for an inference-mode buffer used outside inference
        mode, and for a chunk longer than the free slots."""
        t = self.tokens_per_frame
        n = max(self.lengths) * t + keys.shape[1]
        buffer_k, buffer_v = self.keys[layer], self.values[layer]
        in_place = (n <= buffer_k.shape[1] and not torch.is_grad_enabled()
                    and (torch.is_inference_mode_enabled() or not buffer_k.is_inference()))
        if in_place:
            window_k, window_v = buffer_k[:, :n], buffer_v[:, :n]
        else:
            room = lambda x: x.detach().new_zeros(x.shape)  # noqa: E731
            window_k = torch.cat([buffer_k[:, : n - keys.shape[1]], room(keys)], dim=1)
            window_v = torch.cat([buffer_v[:, : n - values.shape[1]], room(values)], dim=1)
        self._put_chunk(window_k, window_v, keys, values)
        return window_k, window_v

    # -- writing -------------------------------------------------------------------------------------
    def _put_chunk(self, window_k: torch.Tensor, window_v: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a chunk's K/V (B, C * T, H, D) into the slots right after each item's window."""
        t, c = self.tokens_per_frame, keys.shape[1]
        if len(set(self.lengths)) == 1:
            start = self.lengths[0] * t
            window_k[:, start : start + c] = keys
            window_v[:, start : start + c] = values
            return
        for b, n in enumerate(self.lengths):
            window_k[b, n * t : n * t + c] = keys[b]
            window_v[b, n * t : n * t + c] = values[b]

    def commit(self, new_keys: list[torch.Tensor], new_values: list[torch.Tensor]) -> None:
        """Append a chunk's clean K/V (per layer (B, C * T, H, D)), evicting old non-sink frames if full.

        The chunk goes into the slots after the window (where the pass that computed it already wrote
        it, unless it ran on a copy), then the oldest non-sink frames beyond the window are evicted."""
        chunk_frames = new_keys[0].shape[1] // self.tokens_per_frame
        if chunk_frames > self.capacity_frames - self.sink_frames:
            raise ValueError(f"a chunk of {chunk_frames} frames does not fit a window of {self.capacity_frames}")
        t, slots = self.tokens_per_frame, self.keys[0].shape[1] // self.tokens_per_frame
        for b in range(self.batch_size):
            if self.lengths[b] + chunk_frames > slots:  # a chunk longer than the free slots: make room first
                self._evict(b, self.lengths[b] + chunk_frames - self.capacity_frames)
            start = self.lengths[b] * t
            for layer in range(self.num_layers):
                self.keys[layer][b, start : start + chunk_frames * t] = new_keys[layer][b]
                self.values[layer][b, start : start + chunk_frames * t] = new_values[layer][b]
            self.lengths[b] += chunk_frames
            self.total[b] += chunk_frames
            if self.lengths[b] > self.capacity_frames:
                self._evict(b, self.lengths[b] - self.capacity_frames)

    def push_recent(self, latents: torch.Tensor, clean: torch.Tensor | None = None) -> None:
        """Remember a committed chunk's latents (B, C, F, h, w) as the newest context frames, and `clean`
        (default: the latents) as the history predictor's, when they were committed noised."""
        if self.recent is None:
            return
        k = self.recent.shape[2]
        ones = torch.ones(self.batch_size, latents.shape[2], device=self.recent_valid.device, dtype=self.recent_valid.dtype)
        # in place, like commit: a split() view of this cache keeps seeing its item's frames
        push = lambda buffer, x: buffer.copy_(torch.cat([buffer, x.detach().to(buffer)], dim=2)[:, :, -k:])  # noqa: E731
        push(self.recent, latents)
        if self.recent_clean is not None:
            push(self.recent_clean, latents if clean is None else clean)
        self.recent_valid.copy_(torch.cat([self.recent_valid, ones], dim=1)[:, -k:])

    def _evict(self, b: int, frames: int) -> None:
        """Drop the `frames` oldest frames after the sink frames of item b, shifting the rest left."""
        t, s, n = self.tokens_per_frame, self.sink_frames, self.lengths[b]
        keep_from = (s + frames) * t
        end = n * t
        for cache in (self.keys, self.values):
            for layer in range(self.num_layers):
                cache[layer][b, s * t : end - frames * t] = cache[layer][b, keep_from:end].clone()
        self.lengths[b] = n - frames

    def set_text(self, index: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Store the prompt's cross-attention K/V (per layer (text_len, H, D)) for item `index`."""
        for layer in range(self.num_layers):
            self.text_keys[layer][index] = keys[layer]
            self.text_values[layer][index] = values[layer]

    def clear(self, index: int) -> None:
        """Forget item `index`'s history (its text K/V stay until replaced)."""
        self.lengths[index] = 0
        self.total[index] = 0
        if self.recent is not None:
            self.recent[index] = 0
            self.recent_valid[index] = 0
        if self.recent_clean is not None:
            self.recent_clean[index] = 0

    # -- batching --------------------------------------------------------------------------------------
    @staticmethod
    def stack(caches: list["KVCache"]) -> "KVCache":
        """Concatenate caches along the batch (same model and window); copies the buffers."""
        first = caches[0]
        if any(c.capacity_frames != first.capacity_frames or c.num_layers != first.num_layers for c in caches):
            raise ValueError("caches of different models or windows cannot be stacked")
        cat = lambda attr: [torch.cat([getattr(c, attr)[l] for c in caches]) for l in range(first.num_layers)]  # noqa: E731
        with_recent = first.recent is not None
        return KVCache(
            keys=cat("keys"), values=cat("values"), text_keys=cat("text_keys"), text_values=cat("text_values"),
            lengths=[n for c in caches for n in c.lengths], total=[n for c in caches for n in c.total],
            tokens_per_frame=first.tokens_per_frame, capacity_frames=first.capacity_frames,
            sink_frames=first.sink_frames,
            recent=torch.cat([c.recent for c in caches]) if with_recent else None,
            recent_valid=torch.cat([c.recent_valid for c in caches]) if with_recent else None,
            recent_clean=torch.cat([c.recent_clean for c in caches]) if first.recent_clean is not None else None,
        )

    def split(self) -> list["KVCache"]:
        """One cache per batch item (views of this cache's buffers)."""
        return [self.item(b) for b in range(self.batch_size)]

    def view(self, start: int, stop: int) -> "KVCache":
        """Items start..stop-1 as a cache whose buffers are views of this one's: what is written through it
        lands in those slots in place; its lengths are its own until `absorb` writes them back."""
        if not 0 <= start < stop <= self.batch_size:
            raise ValueError(f"slots [{start}, {stop}) are not in a batch of {self.batch_size}")
        pick = lambda xs: [x[start:stop] for x in xs]  # noqa: E731
        return KVCache(
            keys=pick(self.keys), values=pick(self.values), text_keys=pick(self.text_keys), text_values=pick(self.text_values),
            lengths=self.lengths[start:stop], total=self.total[start:stop], tokens_per_frame=self.tokens_per_frame,
            capacity_frames=self.capacity_frames, sink_frames=self.sink_frames,
            recent=None if self.recent is None else self.recent[start:stop],
            recent_valid=None if self.recent is None else self.recent_valid[start:stop],
            recent_clean=None if self.recent_clean is None else self.recent_clean[start:stop],
        )

    def item(self, b: int) -> "KVCache":
        """Item b as a cache of batch 1 viewing slot b (`view(b, b + 1)`)."""
        return self.view(b, b + 1)

    def absorb(self, start: int, view: "KVCache") -> None:
        """Take the lengths of `view(start, ...)` back after writing through it (the buffers are already shared)."""
        if view.keys[0].data_ptr() != self.keys[0][start:].data_ptr() or start + view.batch_size > self.batch_size:
            raise ValueError(f"absorb takes back a view made by view({start}, ...) of this cache")
        stop = start + view.batch_size
        self.lengths[start:stop], self.total[start:stop] = view.lengths, view.total

    def nbytes(self) -> int:
        extra = [x for x in (self.recent, self.recent_valid, self.recent_clean) if x is not None]
        return sum(x.numel() * x.element_size() for xs in (self.keys, self.values, self.text_keys, self.text_values, extra) for x in xs)
