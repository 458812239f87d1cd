"""Shared-memory frame rings: the `shm` codec, for clients on the server's machine.

A session that resets with `codec: "shm"` gets a ring: a POSIX shared-memory object (on Linux the file
/dev/shm/<name>, mode 0600, so only the server's user can open it) of `slots` slots. Each reply writes its
chunk into the next slot and carries only a header (`ring`, `offset`, `seq`) over the socket; the client
reads the frames from the ring where the header points. This saves the socket the frame bytes: one copy
into the ring instead of the kernel's copies through a loopback socket.

Slot layout (all little-endian), slot k at byte k * slot_bytes:

    [0, 8)       u64 seq: the ring's running chunk number of the frames in the slot (0 while being written)
    [8, 64)      zero
    [64, ...)    the frames, uint8 C order (T, H, W, 3); a reply's `offset` points here

The server sets seq to 0, writes the frames, writes the new seq, and only then sends the reply; a reader
checks that seq equals the reply's `seq` before and after copying, so it can never use frames that a
later chunk overwrote (that takes `slots` more chunks of the session). The ring has one slot more than
the reply window (`reply_window`), so every reply the server may still resend (a retry) points to frames
that are still there.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import sys
from pathlib import Path

import numpy as np

SHM_DIR = Path("/dev/shm")
SLOT_HEADER_BYTES = 64  # keeps the frames 64-byte aligned (cache lines, and SIMD copies)
_SEQ = struct.Struct("<Q")


def available() -> bool:
    """Rings need POSIX shared memory under /dev/shm (Linux)."""
    return sys.platform.startswith("linux") and SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def slot_bytes(frame_bytes: int) -> int:
    """Bytes of one slot: the header plus one chunk, rounded up to 64."""
    return SLOT_HEADER_BYTES + -(-frame_bytes // 64) * 64


class FrameRing:
    """The server's side of a ring: created with room for `slots` chunks of `shape`, written in turn."""

    def __init__(self, shape: tuple[int, ...], slots: int):
        self.shape = tuple(int(s) for s in shape)
        self.frame_bytes = int(np.prod(self.shape))
        self.slots = int(slots)
        self.slot_bytes = slot_bytes(self.frame_bytes)
        self.size = self.slots * self.slot_bytes
        self.name = "worldsdk-" + secrets.token_hex(12)  # unguessable: names are the only thing a reply reveals
        self.path = SHM_DIR / self.name
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # reserve the pages now: a ring larger than /dev/shm's free room fails here with ENOSPC,
            # instead of killing the server with SIGBUS at its first write
            os.posix_fallocate(fd, 0, self.size)
            self._map = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)  # the mapping keeps the object alive
        self._view = np.frombuffer(self._map, dtype=np.uint8)
        self.seq = 0  # chunks written so far

    def write(self, frames: np.ndarray) -> dict:
        """Copy one chunk into the next slot; return the frame fields of its reply header."""
        if frames.shape != self.shape or frames.dtype != np.uint8:
            raise ValueError(f"ring holds uint8 chunks of shape {self.shape}, got {frames.dtype} {frames.shape}")
        self.seq += 1
        start = ((self.seq - 1) % self.slots) * self.slot_bytes
        offset = start + SLOT_HEADER_BYTES
        _SEQ.pack_into(self._map, start, 0)  # a reader that sees 0 knows the slot is being rewritten
        self._view[offset : offset + self.frame_bytes] = frames.reshape(-1)
        _SEQ.pack_into(self._map, start, self.seq)
        return {"codec": "shm", "dtype": "uint8", "shape": list(self.shape), "ring": self.name, "offset": offset,
                "seq": self.seq}

    def close(self) -> None:
        """Unmap and remove the ring; a client that still maps it keeps its pages until it unmaps."""
        if self._map.closed:
            return
        del self._view
        self._map.close()
        self.path.unlink(missing_ok=True)


class RingReader:
    """The client's side: maps the rings a server names in its replies (read-only) and copies frames out."""

    def __init__(self):
        self._maps: dict[str, mmap.mmap] = {}

    def read(self, meta: dict) -> np.ndarray:
        """The frames a `shm` reply points to, copied out of the ring (so they stay valid)."""
        from .protocol import BAD_MESSAGE, BridgeError, ProtocolError

        name, offset, seq, shape = meta.get("ring"), meta.get("offset"), meta.get("seq"), meta.get("shape")
        if not (isinstance(name, str) and name.startswith("worldsdk-") and "/" not in name and isinstance(offset, int)
                and isinstance(seq, int) and isinstance(shape, list) and len(shape) == 4):
            raise ProtocolError(BAD_MESSAGE, f"shm frames need ring, offset, seq and a 4-d shape, got {meta!r}")
        ring = self._map(name)
        nbytes = int(np.prod(shape))
        if offset < SLOT_HEADER_BYTES or offset + nbytes > len(ring):
            raise ProtocolError(BAD_MESSAGE, f"shm frames at {offset} (+{nbytes}) lie outside ring {name} of {len(ring)} bytes")
        start = offset - SLOT_HEADER_BYTES
        if _SEQ.unpack_from(ring, start)[0] != seq:
            raise BridgeError(f"ring {name}: chunk {seq} was overwritten before it was read "
                              "(read shm frames before the session's next `ring_slots` chunks)")
        frames = np.frombuffer(ring, dtype=np.uint8, count=nbytes, offset=offset).reshape(shape).copy()
        if _SEQ.unpack_from(ring, start)[0] != seq:  # overwritten while we copied
            raise BridgeError(f"ring {name}: chunk {seq} was overwritten while it was read")
        frames.flags.writeable = False  # like the raw codec's frames: what the server sent, read-only
        return frames

    def _map(self, name: str) -> mmap.mmap:
        ring = self._maps.get(name)
        if ring is None:
            from .protocol import BridgeError

            try:
                fd = os.open(SHM_DIR / name, os.O_RDONLY)
            except OSError as e:
                raise BridgeError(f"cannot open the server's frame ring {name} ({e.strerror}): the shm codec needs "
                                  "a client on the server's machine, under the server's user; use codec raw") from None
            try:
                ring = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
            finally:
                os.close(fd)
            for old in [n for n in self._maps if n != name]:  # a reset may move the session to a new ring
                self._maps.pop(old).close()
            self._maps[name] = ring
        return ring

    def close(self) -> None:
        for ring in self._maps.values():
            ring.close()
        self._maps.clear()
