"""The bridge server: one World served to many clients over a ZeroMQ ROUTER socket.

The server is a thin client of the World's batched-session API (`empty_state`, `reset_sessions`,
`step_state`, `prompt_state`, `WorldState.view/absorb`); it never touches the model or the cache. One
thread runs a poll loop: it drains every request waiting on the socket, answers the cheap ones at once,
and runs the step requests of all sessions that are waiting as ONE batched forward (resets likewise as
one `reset_sessions`). Requests of one session are answered in the order they came.

Sessions live in the slots of one batch state per batching mode (`SlotBatch`): a session joins by taking
the lowest free slot and resetting it in place, leaves by freeing it, and steps through a view of the
run of neighbouring slots it shares with the other sessions of its round, so the step path copies no KV
cache (before, every batched step stacked the sessions' caches into a new batch and split it again).

When the world carries a reward model, every step reply also carries the rewards it predicts for
the session's chunk (read from the batched step's `StepResult`); when it carries a bank of real
starts, a reset may continue from one of them instead of generating its first chunk.

Sessions belong to the client (ZeroMQ routing id) that created them and are named by an unguessable
id; a request naming another client's session is answered exactly like one naming no session. Each
client holds a lease renewed by every message it sends; when it lapses, the client's sessions (and
their caches) are freed.

Retries are exactly-once within a reply window: per client incarnation (a `hello` starts a new one),
the replies to the last `reply_window` requests of each of its sessions, and to its last
`reply_window` requests that name none of its sessions, are kept with a digest of the request they
answer, so a repeated request (same id, same bytes) is answered again without running twice, and
pings or other sessions' steps in between evict nothing.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import logging
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from worldsdk.world import contiguous_runs

from . import protocol as P
from . import shm

log = logging.getLogger(__name__)

SERVER_NAME = "worldsdk-bridge"


@dataclass(frozen=True)
class StepRewards:
    """What the world's reward model predicts for one session's chunk (all zero without one)."""

    reward: float = 0.0  # sum over the chunk's frames
    terminated: bool = False  # some frame of the chunk ends the episode
    frame_rewards: list[float] | None = None  # per latent frame; None: the world predicts no rewards

    def to_wire(self) -> dict:
        fields = {"reward": self.reward, "terminated": self.terminated, "reward_predicted": self.frame_rewards is not None}
        if self.frame_rewards is not None:
            fields["frame_rewards"] = self.frame_rewards
        return fields


NO_REWARDS = StepRewards()


class SlotBatch:
    """The sessions of one batching mode, in the slots of one batch state of the world (`World.empty_state`).

    A session joins by taking the lowest free slot (which keeps the sessions that play together in one
    run of neighbouring slots, one view, one forward) and leaves by freeing it; its history is cleared
    when the next session resets the slot (`World.reset_sessions`). When no slot is free the batch doubles
    (up to `limit` slots): the one place its caches are copied, on a join, never on a step. Slots stay
    allocated once made, so a server holds the memory of the most sessions it has held at once.
    """

    def __init__(self, world, limit: int):
        self.world = world
        self.limit = limit
        self.state = None  # no slot until the first join
        self._free: list[int] = []  # a heap: the lowest free slot first

    @property
    def capacity(self) -> int:
        return 0 if self.state is None else self.state.batch_size

    def take(self) -> int:
        if not self._free:
            self._grow()
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def _grow(self) -> None:
        old = self.capacity
        new = min(max(1, 2 * old), self.limit)
        if new <= old:
            raise RuntimeError(f"all {self.limit} slots are taken")  # the session quotas are checked before
        extra = self.world.empty_state(new - old)
        self.state = extra if self.state is None else type(extra).stack([self.state, extra])
        for slot in range(old, new):
            heapq.heappush(self._free, slot)
        log.debug("slot batch grown from %d to %d slots", old, new)


@dataclass
class Session:
    """One client's world: its slot in the batch of its batching mode, and how it wants its frames."""

    id: str
    owner: bytes  # routing id of the client that created it
    slot: int  # in self.slots[batching]
    codec: str = "raw"
    quality: int = 90
    chunks: int = 0  # chunks returned since the last reset (the reset chunk is 0)
    last_played: float = 0.0  # monotonic time of its last step or reset
    batching: str = "shared"  # "exact": stepped in a forward of its own, so batching cannot change its frames
    ring: shm.FrameRing | None = None  # codec "shm" only: where its frames go


@dataclass
class CachedReply:
    digest: bytes  # of the request it answered: the same id with other bytes is a new request, not a retry
    parts: list
    scope: str | None  # the session it belongs to, or None (requests that name none of the client's sessions)


class ReplyWindow:
    """The replies a client may still ask for again: per scope (each of its sessions, and "no session"),
    those to its last `size` requests. Pings and other sessions' requests evict nothing of a session."""

    def __init__(self, size: int):
        self.size = size
        self.replies: dict[int, CachedReply] = {}
        self._order: dict[str | None, deque[int]] = {}

    def get(self, request_id: int, digest: bytes) -> list | None:
        cached = self.replies.get(request_id)
        return cached.parts if cached is not None and cached.digest == digest else None

    def put(self, scope: str | None, request_id: int, digest: bytes, parts: list) -> None:
        old = self.replies.pop(request_id, None)
        if old is not None:  # an id used again for another request: the newer reply wins
            self._order[old.scope].remove(request_id)
        self.replies[request_id] = CachedReply(digest, parts, scope)
        order = self._order.setdefault(scope, deque())
        order.append(request_id)
        while len(order) > self.size:
            self.replies.pop(order.popleft(), None)

    def forget(self, scope: str | None) -> None:
        for request_id in self._order.pop(scope, ()):
            self.replies.pop(request_id, None)

    def clear(self) -> None:
        self.replies.clear()
        self._order.clear()


@dataclass
class Peer:
    """A client as the server knows it: when it was last heard from, its sessions and its reply window."""

    routing_id: bytes
    last_seen: float
    window: ReplyWindow
    sessions: set[str] = field(default_factory=set)
    incarnation: int = 0  # bumped by every hello: a restarted process with the same routing id is a new client


@dataclass
class Request:
    envelope: list[bytes]  # routing id, plus an empty delimiter if the client is a REQ socket
    header: dict
    type: str
    id: int
    digest: bytes = b""  # of all its parts: tells a retry (same bytes) from a new request reusing an id
    incarnation: int = 0  # of its client when it came in; replies to an earlier incarnation are not sent
    context: np.ndarray | None = None  # reset only: real frames (N, H, W, 3) to continue from
    start: str = "prompt"  # reset only: "prompt", "real" (context from the world's bank) or "context" (sent frames)
    start_index: int | None = None  # reset only: the bank entry of a "real" start

    @property
    def session_id(self) -> str | None:
        return self.header.get("session")


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints bound to a loopback address."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name
        return False


class Server:
    """Serve `world` on `bind` (a ZeroMQ endpoint; "tcp://127.0.0.1:*" picks a free port).

    Arguments:
        lease_s: a client silent for this long loses its sessions (and its slot among `max_clients`).
        max_sessions: sessions held at once, over all clients.
        max_sessions_per_client: sessions one client (routing id) may hold (default a quarter of max_sessions).
        max_clients: clients known at once (default max(1024, 4 * max_sessions)); a client is known
            from its first request until its lease lapses, also one that only pings.
        reply_window: replies kept per session (and per client for requests naming no session) to
            answer retries without running them twice; also the depth a client may pipeline per session.
        batching: "shared" (sessions waiting together share one forward) or "exact" (a forward per
            session: frames equal to the session played alone, bit for bit) for sessions that do not
            choose at reset.
        batch_window_ms: how long a step may wait for the steps of the other sessions that are
            playing (stepped in the last second) to join its batch; 0 steps whatever is waiting.
        max_context_frames: most context frames a reset may carry (default 4 chunks).
        max_request_bytes: a request larger than this is answered with `too_large` (default: a
            64 KiB header plus the largest context); a single part larger than twice this is cut
            by ZeroMQ itself (the peer is disconnected, no reply).
        curve_secret_key: path of the server's secret key file (zmq.auth format); turns on CURVE.
        curve_clients_dir: folder of the public key files of the clients allowed in (CURVE only).
    """

    def __init__(
        self,
        world,
        bind: str = "tcp://127.0.0.1:5555",
        *,
        lease_s: float = 60.0,
        max_sessions: int = 64,
        max_batch: int = 32,
        batch_window_ms: float = 5.0,
        max_sessions_per_client: int | None = None,
        max_clients: int | None = None,
        reply_window: int = 8,
        batching: str = "shared",
        max_request_bytes: int | None = None,
        max_context_frames: int | None = None,
        curve_secret_key: str | Path | None = None,
        curve_clients_dir: str | Path | None = None,
        context: zmq.Context | None = None,
    ):
        self.world = world
        self.spec = world.spec
        self.lease_s = float(lease_s)
        self.max_sessions = int(max_sessions)
        self.max_batch = int(max_batch)
        self.batch_window_s = float(batch_window_ms) / 1000
        frame_bytes = self.spec.height * self.spec.width * 3
        self.max_context_frames = int(max_context_frames or 4 * world.chunk_frames)
        self.max_request_bytes = int(max_request_bytes or P.MAX_HEADER_BYTES + self.max_context_frames * frame_bytes)
        self.max_sessions_per_client = int(max_sessions_per_client or max(1, self.max_sessions // 4))
        self.max_peers = int(max_clients or max(1024, 4 * self.max_sessions))
        self.reply_window = int(reply_window)
        if batching not in P.BATCHING_MODES:
            raise ValueError(f"batching must be one of {list(P.BATCHING_MODES)}, got {batching!r}")
        if min(self.max_sessions, self.max_sessions_per_client, self.max_peers, self.reply_window, self.max_batch) < 1:
            raise ValueError("max_sessions, max_sessions_per_client, max_clients, reply_window and max_batch must be >= 1")
        self.batching = batching
        self.sessions: dict[str, Session] = {}
        # exact sessions have a batch of their own: each steps alone through a view of its slot (a batch of
        # one, as in-process), and they leave no gaps between the shared sessions that step together
        self.slots = {mode: SlotBatch(world, self.max_sessions) for mode in P.BATCHING_MODES}
        self.peers: dict[bytes, Peer] = {}
        self.batch_sizes: Counter[int] = Counter()  # batch size -> forwards made (steps and resets), for tests and benchmarks
        self._pending: deque[Request] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self._own_context = context is None
        self.context = context or zmq.Context()
        self._auth = None
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.linger = 0
        self.socket.router_handover = 1  # a client that reconnects with its routing id takes it over
        self.socket.maxmsgsize = 2 * self.max_request_bytes  # beyond this ZeroMQ drops the peer without a reply
        if curve_secret_key is not None:
            self._setup_curve(Path(curve_secret_key), curve_clients_dir)
        elif curve_clients_dir is not None:
            raise ValueError("curve_clients_dir needs curve_secret_key")
        self.socket.bind(bind)
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.curve = curve_secret_key is not None
        # a ring is only useful to a client on this machine, and only a loopback or ipc endpoint guarantees one
        self.ring_slots = self.reply_window + 1 if shm.available() and is_loopback(self.address) else 0
        self._hello = self._hello_fields()
        if not is_loopback(self.address) and not self.curve:
            log.warning("serving %s beyond localhost without CURVE: anyone who can reach it can use it", self.address)
        log.info("serving world %r on %s (lease %.0f s, CURVE %s)", self.spec.name, self.address, self.lease_s,
                 "on" if self.curve else "off")

    def _setup_curve(self, secret_path: Path, clients_dir) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = zmq.auth.load_certificate(secret_path)
        if secret is None:
            raise ValueError(f"{secret_path} holds no secret key (pass the *.key_secret file)")
        if clients_dir is None:
            raise ValueError("CURVE needs curve_clients_dir: the folder of the allowed clients' public keys")
        self._auth = ThreadAuthenticator(self.context, log=logging.getLogger(__name__ + ".auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(clients_dir))
        self.socket.curve_secretkey = secret
        self.socket.curve_publickey = public
        self.socket.curve_server = True

    def _hello_fields(self) -> dict:
        spec = self.spec
        return {
            "v": list(P.PROTOCOL_VERSION),
            "server": SERVER_NAME,
            "world": spec.to_dict(),
            "chunk_frames": int(self.world.chunk_frames),
            "observation": {"dtype": "uint8", "shape": [int(s) for s in self.world.observation_shape]},
            "fps": float(spec.fps),
            "codecs": [c for c in P.CODECS if c != "shm" or self.ring_slots],
            "lease_s": self.lease_s,
            "max_request_bytes": self.max_request_bytes,
            "max_context_frames": self.max_context_frames,
            "max_sessions": self.max_sessions,
            # since 1.2: every limit the server enforces
            "max_sessions_per_client": self.max_sessions_per_client,
            "max_clients": self.max_peers,
            "max_batch": self.max_batch,
            "reply_window": self.reply_window,
            "ring_slots": self.ring_slots,
            "max_header_bytes": P.MAX_HEADER_BYTES,
            "max_prompt_chars": P.MAX_PROMPT_CHARS,
            "batching": self.batching,
        }

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> "Server":
        """Serve in a background thread (tests, notebooks); `stop()` ends it."""
        self._thread = threading.Thread(target=self.serve_forever, name="worldsdk-bridge", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, poll_ms: int = 100) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self._stop.is_set():
            self.run_once(poller, poll_ms)

    def run_once(self, poller: zmq.Poller, poll_ms: int) -> None:
        """Wait up to `poll_ms` for requests, answer everything that is waiting, free lapsed leases."""
        if poller.poll(poll_ms):
            self._drain()
            while self._pending and not self._stop.is_set():
                self._gather()
                try:
                    self._serve_round()
                except Exception:  # a bug must not take the server down; the round's clients time out
                    log.exception("a serving round failed")
                self._drain()  # what came in during the forward joins the next batch
                self._expire()  # leases lapse under load too
        self._expire()

    def _gather(self) -> None:
        """Wait (at most the batch window) until every session that is playing has its step in."""
        deadline = time.monotonic() + self.batch_window_s
        while True:
            now = time.monotonic()
            waiting = {r.session_id for r in self._pending if r.type == "step"}
            if not waiting or now >= deadline:
                return
            playing = sum(1 for s in self.sessions.values() if s.last_played > now - 1.0)
            if len(waiting) >= min(playing, self.max_batch) or not self.socket.poll(max(1, int(1000 * (deadline - now)))):
                return
            self._drain()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.close()

    def close(self) -> None:
        if self.socket.closed:
            return
        self.socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self.context.term()
        for session in self.sessions.values():
            if session.ring is not None:
                session.ring.close()
        self.sessions.clear()
        self.peers.clear()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- receiving -------------------------------------------------------------------------------
    def _drain(self, limit: int = 4096) -> None:
        """Take every message waiting on the socket without blocking; queue valid requests."""
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._accept(frames)
            except Exception:  # a bug here must not take the server down
                log.exception("failed to handle a message")

    def _accept(self, frames: list[bytes]) -> None:
        routing_id, body = frames[0], frames[1:]
        envelope = [routing_id]
        if body and body[0] == b"":  # REQ clients put an empty delimiter before the header
            envelope.append(b"")
            body = body[1:]
        now = time.monotonic()
        peer = self.peers.get(routing_id)
        if peer is not None:
            peer.last_seen = now  # any message shows the client is alive
        try:
            request = self._parse(envelope, body)
        except P.ProtocolError as e:
            log.debug("refused a message from %s: %s", routing_id.hex(), e)
            self._send_error(envelope, e.code, e.message, e.request_id)
            return
        if peer is None:
            if len(self.peers) >= self.max_peers:
                self._send_error(envelope, P.BUSY, f"the server knows {self.max_peers} clients already (max_clients); "
                                 "a client is forgotten when its lease lapses: retry later", request.id)
                return
            peer = self.peers[routing_id] = Peer(routing_id, now, ReplyWindow(self.reply_window))
        if request.type == "hello":
            # never answered from the window: a restarted process that kept its routing id restarts its ids
            # too, and its hello must not get (or let later requests get) the previous process's replies
            peer.incarnation += 1
            peer.window.clear()
        else:
            cached = peer.window.get(request.id, request.digest)
            if cached is not None:
                self._send(envelope, cached)  # a retry of a request already answered
                return
            if any(r.envelope[0] == routing_id and r.id == request.id and r.digest == request.digest
                   and r.incarnation == peer.incarnation for r in self._pending):
                return  # a retry of a request still waiting: its reply is sent when it is served
        request.incarnation = peer.incarnation
        self._pending.append(request)

    def _parse(self, envelope: list[bytes], body: list[bytes]) -> Request:
        if not body:
            raise P.ProtocolError(P.BAD_MESSAGE, "empty message: expected a msgpack header part")
        size = sum(len(part) for part in body)
        if size > self.max_request_bytes:
            raise P.ProtocolError(P.TOO_LARGE, f"request is {size} bytes; the limit is {self.max_request_bytes}",
                                  P.peek_request_id(body[0]))
        header = P.unpack_header(body[0])
        kind = P.validate_request(header)
        rid = header["id"]
        digest = hashlib.blake2b(digest_size=16)
        for part in body:
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        parts = 1 if "context" in header else 0
        if len(body) - 1 != parts:
            raise P.ProtocolError(P.BAD_MESSAGE, f"this {kind!r} request needs {parts} payload part(s), got {len(body) - 1}", rid)
        try:
            if kind == "hello":
                P.check_version(header["v"])
            context = self._context(header["context"], body[1]) if parts else None
            if kind == "reset":
                if header.get("codec") == "shm" and not self.ring_slots:
                    raise P.ProtocolError(P.BAD_FIELD, f"codec 'shm' needs shared memory on a server bound to a loopback or "
                                          f"ipc endpoint; this one is bound to {self.address} (see hello's codecs): use raw")
                start, index = self._start(header)
                if start == "real":
                    context = self.world.start(index)[0]
                elif context is not None:
                    start = "context"
                return Request(envelope, header, kind, rid, digest.digest(), 0, context, start, index)
        except P.ProtocolError as e:
            raise P.ProtocolError(e.code, e.message, rid) from None
        return Request(envelope, header, kind, rid, digest.digest(), 0, context)

    def _start(self, header: dict) -> tuple[str, int | None]:
        """A reset's start mode and, for a "real" start, its bank entry: the one asked for, else one drawn
        with an RNG seeded from the reset's seed (the same seed gives the same entry)."""
        start, index = header.get("start") or "prompt", header.get("start_index")
        if start != "real":
            if index is not None:
                raise P.ProtocolError(P.BAD_FIELD, f"field 'start_index' needs start 'real', got start {start!r}")
            return start, None
        if "context" in header:
            raise P.ProtocolError(P.BAD_FIELD, "a reset takes either context frames or start 'real', not both")
        n = self.world.num_starts
        if n == 0:
            raise P.ProtocolError(
                P.BAD_FIELD, f"start 'real' needs a world with a bank of real starts, and {self.spec.name!r} has none "
                "(hello's num_starts is 0); use start 'prompt' or send context frames")
        if index is None:
            index = int(np.random.default_rng(header.get("seed")).integers(n))  # seed nil: fresh entropy
        elif index >= n:
            raise P.ProtocolError(P.BAD_FIELD, f"field 'start_index' must be in [0, {n}) (hello's num_starts), got {index}")
        return start, index

    def _context(self, meta: dict, data: bytes) -> np.ndarray:
        n, h, w, c = meta["shape"]
        if (h, w, c) != (self.spec.height, self.spec.width, 3) or not self.world.chunk_frames <= n <= self.max_context_frames:
            raise P.ProtocolError(
                P.BAD_FIELD,
                f"context must be uint8 frames (N, {self.spec.height}, {self.spec.width}, 3) with "
                f"{self.world.chunk_frames} <= N <= {self.max_context_frames}, got shape {meta['shape']}",
            )
        try:
            return P.decode_frames({"codec": "raw", **meta}, [data]).copy()
        except P.ProtocolError as e:
            raise P.ProtocolError(P.BAD_FIELD, f"context: {e.message}") from None

    # -- serving ---------------------------------------------------------------------------------
    def _serve_round(self) -> None:
        """Answer the queue in order, stepping each session at most once, in one batched forward."""
        steps: list[tuple[Request, Session, Any]] = []
        resets: list[tuple[Request, Session | None]] = []
        busy: set[str] = set()  # sessions with a step or reset in this round
        opened: Counter[bytes] = Counter()  # sessions this round opens, per client
        deferred: deque[Request] = deque()
        pending, self._pending = self._pending, deque()
        for request in pending:
            sid = request.session_id
            if sid in busy or (request.type == "step" and len(steps) >= self.max_batch) or (
                request.type == "reset" and len(resets) >= self.max_batch
            ):
                deferred.append(request)
                if sid is not None:
                    busy.add(sid)  # later requests of this session wait for it
                continue
            try:
                if request.type == "step":
                    session = self._session(request)
                    action = self._action(request)
                    steps.append((request, session, action))
                    busy.add(sid)
                elif request.type == "reset":
                    session = self._session(request) if sid is not None else None
                    if session is None:
                        self._check_quota(request.envelope[0], sum(opened.values()), opened[request.envelope[0]])
                        opened[request.envelope[0]] += 1
                    resets.append((request, session))
                    if sid is not None:
                        busy.add(sid)
                else:
                    self._answer_now(request)
            except P.ProtocolError as e:
                self._refuse(request, e.code, e.message)
            except Exception as e:
                log.exception("failed to answer a %s request", request.type)
                self._refuse(request, P.INTERNAL, f"{type(e).__name__}: {str(e)[:500]}")
        self._pending = deferred
        if resets:
            self._run_resets(resets)
        if steps:
            self._run_steps(steps)

    def _check_quota(self, routing_id: bytes, opening: int, opening_here: int) -> None:
        """Refuse (busy) a session beyond max_sessions, or beyond this client's max_sessions_per_client."""
        if len(self.sessions) + opening >= self.max_sessions:
            raise P.ProtocolError(P.BUSY, f"the server holds {self.max_sessions} sessions already (max_sessions); "
                                  "close one or retry later")
        peer = self.peers.get(routing_id)
        held = (len(peer.sessions) if peer is not None else 0) + opening_here
        if held >= self.max_sessions_per_client:
            raise P.ProtocolError(P.BUSY, f"this client holds {held} sessions; one client may hold "
                                  f"{self.max_sessions_per_client} (max_sessions_per_client): close one or reset one of yours")

    def _session(self, request: Request) -> Session:
        session = self.sessions.get(request.session_id)
        if session is None or session.owner != request.envelope[0]:
            raise P.ProtocolError(
                P.UNKNOWN_SESSION,
                f"session {request.session_id} is not open on this server for this client "
                "(closed, lease expired or server restarted); reset to start a new one",
            )
        return session

    def _action(self, request: Request):
        try:
            return P.action_from_wire(self.spec.action, request.header["action"], self.spec.key_map)
        except (ValueError, TypeError) as e:
            raise P.ProtocolError(P.BAD_ACTION, str(e)[:1000]) from None

    def _answer_now(self, request: Request) -> None:
        kind, reply = request.type, {"type": P.REPLY_TYPE[request.type], "id": request.id}
        if kind == "hello":
            reply.update(self._hello, predicts_rewards=self.world.reward_model is not None, num_starts=self.world.num_starts)
        elif kind == "ping":
            peer = self.peers.get(request.envelope[0])
            reply["sessions"] = sorted(peer.sessions) if peer is not None else []
        elif kind == "set_prompt":
            session = self._session(request)
            batch = self.slots[session.batching]
            batch.state = self._call(self.world.prompt_state, batch.state, [request.header["prompt"]], [session.slot])
            reply["session"] = session.id
        elif kind == "close":
            session = self._session(request)
            self._free(session)
            reply["session"] = session.id
        self._reply(request, [P.pack_header(reply)])

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except ValueError as e:
            raise P.ProtocolError(P.BAD_FIELD, str(e)[:1000]) from None
        except Exception as e:
            log.exception("the world raised in %s", getattr(fn, "__name__", fn))
            raise P.ProtocolError(P.INTERNAL, f"the world raised {type(e).__name__}: {str(e)[:500]}") from None

    def _batching(self, request: Request, session: Session | None) -> str:
        """The batching mode a reset asks for, else the session's, else the server's default."""
        return request.header.get("batching") or (session.batching if session is not None else self.batching)

    def _run_resets(self, resets: list[tuple[Request, Session | None]]) -> None:
        """Exact sessions start in a reset of their own, the others together in one."""
        shared = [item for item in resets if self._batching(*item) == "shared"]
        for group in ([shared] if shared else []) + [[item] for item in resets if self._batching(*item) == "exact"]:
            self._start_sessions(group)

    def _start_sessions(self, resets: list[tuple[Request, Session | None]]) -> None:
        """Start episodes in slots of one batching mode's batch: a session that keeps its mode resets its own
        slot in place, a new one (or one changing mode) takes a free slot."""
        batching = self._batching(*resets[0])  # the same for the whole group
        batch = self.slots[batching]
        started = []  # (request, session, codec, ring, slot)
        for request, session in resets:
            codec = request.header.get("codec", session.codec if session is not None else "raw")
            try:
                ring = self._ring(session, codec)
            except OSError as e:
                self._refuse(request, P.BUSY, f"no room for a frame ring of {self.ring_slots} chunks in {shm.SHM_DIR} "
                             f"({e.strerror}); use codec raw")
                continue
            in_place = session is not None and session.batching == batching
            started.append((request, session, codec, ring, session.slot if in_place else batch.take()))
        if not started:
            return
        prompts = [self._prompt(request) for request, *_ in started]
        try:
            frames = self.world.reset_sessions(batch.state, [slot for *_, slot in started], prompts,
                                               [r.header.get("seed") for r, *_ in started],  # None: a fresh random seed
                                               [r.context for r, *_ in started])
            self.batch_sizes[len(started)] += 1
        except Exception as e:
            log.exception("reset_sessions failed for %d sessions", len(started))
            for request, session, _, ring, slot in started:
                if ring is not None and (session is None or ring is not session.ring):
                    ring.close()
                if session is not None and session.batching == batching:
                    self._free(session)  # reset in its slot: its history is gone, so is the session
                else:
                    batch.release(slot)
                self._refuse(request, P.INTERNAL, f"the world raised {type(e).__name__}: {str(e)[:500]}")
            return
        for i, (request, session, codec, ring, slot) in enumerate(started):
            if session is None:
                session = Session(secrets.token_hex(16), request.envelope[0], slot, batching=batching)
                self.sessions[session.id] = session
                peer = self.peers.get(request.envelope[0])
                if peer is not None:
                    peer.sessions.add(session.id)
                log.info("opened session %s for client %s (%d open)", session.id, request.envelope[0].hex(), len(self.sessions))
            elif session.batching != batching:  # it moved to the other mode's batch
                self.slots[session.batching].release(session.slot)
            if session.ring is not None and session.ring is not ring:
                session.ring.close()
            session.slot, session.batching, session.chunks, session.last_played = slot, batching, 0, time.monotonic()
            session.codec, session.ring = codec, ring
            session.quality = request.header.get("quality", session.quality)
            fields = {"start": request.start, "prompt": prompts[i], "batching": session.batching, "codec": session.codec,
                      "quality": session.quality if session.codec == "jpeg" else None}  # nil: quality does nothing here
            if request.start_index is not None:
                fields["start_index"] = request.start_index
            self._send_frames(request, session, frames[i], fields)

    def _ring(self, session: Session | None, codec: str) -> shm.FrameRing | None:
        """The frame ring a session needs for `codec`: its own when it has one, a new one, or none (its own
        is closed once the reset has succeeded)."""
        if codec != "shm":
            return None
        ring = session.ring if session is not None else None
        return ring or shm.FrameRing(self.world.observation_shape, self.ring_slots)

    def _prompt(self, request: Request) -> str:
        """The prompt a reset starts with: the one sent, else a real start's own, else the world's default."""
        prompt = request.header.get("prompt")
        if prompt is not None:
            return prompt
        if request.start == "real":
            return self.world.start(request.start_index)[1]
        return self.spec.default_prompt

    def _run_steps(self, steps: list[tuple[Request, Session, Any]]) -> None:
        """Shared sessions step together, one forward per run of neighbouring slots (one run when the
        sessions playing hold the lowest slots, which joins keep true); each exact session in a forward of
        its own."""
        shared = sorted((item for item in steps if item[1].batching == "shared"), key=lambda item: item[1].slot)
        runs = [[item for item in shared if start <= item[1].slot < stop]
                for start, stop in contiguous_runs([session.slot for _, session, _ in shared])]
        for run in runs + [[item] for item in steps if item[1].batching == "exact"]:
            self._step_sessions(run)

    def _step_sessions(self, steps: list[tuple[Request, Session, Any]]) -> None:
        """Step sessions that hold neighbouring slots of one batch, in place through a view of their slots."""
        batch = self.slots[steps[0][1].batching]
        start = steps[0][1].slot
        part = batch.state.view(start, start + len(steps))
        try:
            result = self.world.step_state(part, [action for _, _, action in steps])
            batch.state.absorb(start, result.state)
            frames, rewards = result.frames, self._rewards(result)
            self.batch_sizes[len(steps)] += 1
        except Exception:
            # A session whose step count moved had its chunk written into its slot before the world raised:
            # it cannot keep its previous state, so it is closed. The others are as they were.
            moved = [part.steps[i] != batch.state.steps[start + i] for i in range(len(steps))]
            batch.state.absorb(start, part)  # the slots' bookkeeping matches what was written into them
            for (request, session, _), written in zip(steps, moved):
                if written:
                    log.exception("step_state failed after writing session %s's chunk: closing it", session.id)
                    self._free(session)
                    self._refuse(request, P.INTERNAL, "the world raised while stepping, after writing the chunk into "
                                 "the session's cache: the session is closed; reset to start a new one")
            steps = [item for item, written in zip(steps, moved) if not written]
            if len(steps) == 1:
                request = steps[0][0]
                log.exception("step_state failed for session %s", request.session_id)
                self._refuse(request, P.INTERNAL, "the world raised while stepping; the session keeps its previous state")
            elif steps:
                log.exception("a batched step of %d sessions failed; stepping them one by one", len(steps))
                for item in steps:
                    self._step_sessions([item])
            return
        for i, (request, session, _) in enumerate(steps):
            session.chunks += 1
            session.last_played = time.monotonic()
            self._send_frames(request, session, frames[i], rewards[i].to_wire())

    @staticmethod
    def _rewards(result) -> list[StepRewards]:
        """The reward model's predictions of a batched step's result, per session."""
        if result.rewards is None:  # no model, or sessions opened before it was attached
            return [NO_REWARDS] * len(result.frames)
        return [StepRewards(float(r.sum()), bool(t.any()), r.tolist()) for r, t in zip(result.rewards, result.terminated)]

    def _expire(self) -> None:
        deadline = time.monotonic() - self.lease_s
        for routing_id in [r for r, peer in self.peers.items() if peer.last_seen < deadline]:
            peer = self.peers.pop(routing_id)
            for sid in list(peer.sessions):
                log.info("lease of client %s lapsed: freeing session %s", routing_id.hex(), sid)
                self._free(self.sessions[sid])

    def _free(self, session: Session) -> None:
        if self.sessions.pop(session.id, None) is not None:
            self.slots[session.batching].release(session.slot)
        if session.ring is not None:
            session.ring.close()
            session.ring = None
        peer = self.peers.get(session.owner)
        if peer is not None:
            peer.sessions.discard(session.id)
            peer.window.forget(session.id)  # retries of a closed session's requests are answered unknown_session

    # -- sending ---------------------------------------------------------------------------------
    def _send_frames(self, request: Request, session: Session, frames: np.ndarray, fields: dict) -> None:
        frames = np.asarray(frames)
        if session.ring is not None:
            meta, parts = session.ring.write(frames), []
        else:
            meta, parts = P.encode_frames(frames, session.codec, session.quality)
        header = {"type": "frames", "id": request.id, "session": session.id, "chunk": session.chunks, "frames": meta, **fields}
        self._reply(request, [P.pack_header(header), *parts])

    def _current(self, request: Request) -> Peer | None:
        """The request's client, or None when a hello has started a new incarnation since it came in:
        that reply would reach a process that never sent the request, which may reuse its id."""
        peer = self.peers.get(request.envelope[0])
        if peer is not None and peer.incarnation != request.incarnation:
            log.debug("dropping the reply to %s #%d of an earlier incarnation of client %s", request.type, request.id,
                      request.envelope[0].hex())
            return None
        return peer

    def _reply(self, request: Request, parts: list) -> None:
        peer = self.peers.get(request.envelope[0])
        if peer is not None:
            if self._current(request) is None:
                return
            scope = request.session_id if request.session_id in peer.sessions else None
            peer.window.put(scope, request.id, request.digest, parts)
        self._send(request.envelope, parts)

    def _refuse(self, request: Request, code: str, message: str) -> None:
        """An error reply to a parsed request. Not kept in the reply window: an error changed nothing,
        so a retry of the request is served again."""
        if self.peers.get(request.envelope[0]) is None or self._current(request) is not None:
            self._send_error(request.envelope, code, message, request.id)

    def _send_error(self, envelope: list[bytes], code: str, message: str, request_id: int | None) -> None:
        self._send(envelope, [P.pack_header({"type": "error", "id": request_id, "code": code, "message": message})])

    def _send(self, envelope: list[bytes], parts: list) -> None:
        try:
            self.socket.send_multipart(envelope + parts, copy=False)
        except zmq.ZMQError as e:  # the client is gone or its queue is full: its lease will lapse
            log.debug("could not reply to %s: %s", envelope[0].hex(), e)
