"""The Python bridge client: one remote world session over a ZeroMQ DEALER socket.

    client = Client("tcp://127.0.0.1:5555")
    info = client.hello()                 # the world's spec, checked protocol version
    frames = client.reset(prompt="pong", seed=0)   # uint8 (chunk, H, W, 3)
    frames = client.step(2)
    client.last_step.reward               # what the world's reward model predicts for that chunk
    client.close()

Every request waits at most `timeout_ms`; on a timeout the socket is closed and reopened under the
same routing id (so the server still knows the client) and the request is sent again with the same
id, which the server answers from its reply window if it had already served it (Lazy Pirate, zguide
ch. 4). A session the server no longer knows raises `SessionLostError`; `reset()` starts a new one.
Every error reply raises `ProtocolError`, also one with a nil id: this client has one request in flight,
so such a reply answers it. With `codec="shm"` (a server on this machine) frames come through a
shared-memory ring instead of the socket, and are copied out of it.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
from zmq.utils.monitor import parse_monitor_message

from worldsdk.spec import WorldSpec

from . import protocol as P
from .shm import RingReader

log = logging.getLogger(__name__)

# A stranger's key is refused with _AUTH; a wrong server key gives _NO_DETAIL; a plaintext client of a CURVE
# server gives _PROTOCOL or _NO_DETAIL (which comes first depends on timing), so the last two share a message.
_NOT_CURVE = "the ZeroMQ handshake failed: wrong server key, or CURVE on one side only"
_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused this client's CURVE key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: _NOT_CURVE,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: _NOT_CURVE,
}


@dataclass(frozen=True)
class WorldInfo:
    """What the server said at hello: protocol version, world spec, frame layout and limits."""

    protocol: tuple[int, int]
    server: str
    spec: WorldSpec
    chunk_frames: int
    observation_shape: tuple[int, ...]
    codecs: tuple[str, ...]
    lease_s: float
    max_request_bytes: int
    predicts_rewards: bool = False  # since 1.1; a 1.0 server predicts none
    num_starts: int = 0  # entries of the world's bank of real starts (since 1.1)
    limits: dict | None = None  # since 1.2: max_sessions, max_sessions_per_client, max_clients, max_batch,
    # reply_window, ring_slots, max_header_bytes, max_prompt_chars, max_context_frames (None from older servers)
    batching: str = "shared"  # since 1.2: the server's default batching mode for new sessions

    @property
    def action_space(self):
        return self.spec.action.to_space()

    @staticmethod
    def from_reply(header: dict) -> "WorldInfo":
        return WorldInfo(
            protocol=tuple(header["v"]),
            server=str(header["server"]),
            spec=WorldSpec.from_dict(header["world"]),
            chunk_frames=int(header["chunk_frames"]),
            observation_shape=tuple(int(s) for s in header["observation"]["shape"]),
            codecs=tuple(header["codecs"]),
            lease_s=float(header["lease_s"]),
            max_request_bytes=int(header["max_request_bytes"]),
            predicts_rewards=bool(header.get("predicts_rewards", False)),
            num_starts=int(header.get("num_starts", 0)),
            limits={k: int(header[k]) for k in _LIMITS if k in header} if "reply_window" in header else None,
            batching=str(header.get("batching", "shared")),
        )


_LIMITS = ("max_sessions", "max_sessions_per_client", "max_clients", "max_batch", "reply_window", "ring_slots",
           "max_header_bytes", "max_prompt_chars", "max_context_frames", "max_request_bytes")


@dataclass(frozen=True)
class StepInfo:
    """What a step reply says besides its frames: the rewards the world's reward model predicts."""

    chunk: int  # chunks since the reset
    reward: float  # sum over the chunk's frames; 0 when not predicted
    terminated: bool  # the reward model predicts that the episode ends within the chunk
    reward_predicted: bool  # False: the world has no reward model (or the server speaks 1.0)
    frame_rewards: np.ndarray | None  # float32 (F,), one per latent frame; None when not predicted

    @staticmethod
    def from_reply(header: dict) -> "StepInfo":
        predicted = bool(header.get("reward_predicted", False))
        return StepInfo(
            chunk=int(header.get("chunk", 0)),
            reward=float(header.get("reward", 0.0)),
            terminated=bool(header.get("terminated", False)),
            reward_predicted=predicted,
            frame_rewards=np.asarray(header["frame_rewards"], dtype=np.float32) if predicted else None,
        )


@dataclass(frozen=True)
class ResetInfo:
    """How the server started a session: start mode ("prompt", "real" or "context"), bank entry, prompt,
    and (since 1.2) its batching mode and codec. A 1.0 server says none of it: then start is "prompt" or
    "context" as asked, prompt is None; a 1.1 server leaves batching None."""

    start: str
    start_index: int | None
    prompt: str | None
    batching: str | None = None
    codec: str | None = None


class Client:
    """A remote world session. Not thread-safe: use one Client per thread.

    Arguments:
        address: the server's endpoint, e.g. "tcp://127.0.0.1:5555".
        timeout_ms: how long one try of a request waits for its reply.
        retries: how many times a request is sent again after a timeout.
        codec: "raw" (exact frames), "jpeg" (smaller, lossy: for thin links) or "shm" (exact frames through
            shared memory: for a server on this machine, under the same user; needs protocol 1.2).
        curve_server_key: the server's public key file (turns on CURVE).
        curve_client_key: this client's secret key file (*.key_secret); CURVE only.
    """

    protocol_version: tuple[int, int] = P.PROTOCOL_VERSION

    def __init__(
        self,
        address: str,
        *,
        timeout_ms: int = 30_000,
        retries: int = 1,
        codec: str = "raw",
        jpeg_quality: int = 90,
        curve_server_key: str | Path | None = None,
        curve_client_key: str | Path | None = None,
        name: str = "worldsdk-python",
        context: zmq.Context | None = None,
    ):
        if codec not in P.CODECS:
            raise ValueError(f"codec must be one of {list(P.CODECS)}, got {codec!r}")
        self.address = address
        self.timeout_ms = int(timeout_ms)
        self.retries = int(retries)
        self.codec = codec
        self.jpeg_quality = int(jpeg_quality)
        self.name = name
        self.info: WorldInfo | None = None
        self.session: str | None = None
        self.chunk: int | None = None  # index of the last chunk received since the reset (0 = the reset's)
        self.last_step: StepInfo | None = None  # rewards of the last step; None until a step after a reset
        self.last_reset: ResetInfo | None = None  # how the last reset started
        self._context = context or zmq.Context.instance()
        self._curve = self._load_curve(curve_server_key, curve_client_key)
        self._routing_id = b"w" + secrets.token_bytes(15)  # kept across reconnects: the server knows us by it
        self._ids = itertools.count(1)
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._rings = RingReader()
        self._closed = False
        self._open()

    @staticmethod
    def _load_curve(server_key, client_key):
        if server_key is None and client_key is None:
            return None
        if server_key is None or client_key is None:
            raise ValueError("CURVE needs both curve_server_key (public) and curve_client_key (secret)")
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_key)
        public, secret = zmq.auth.load_certificate(client_key)
        if secret is None:
            raise ValueError(f"{client_key} holds no secret key (pass the client's *.key_secret file)")
        return server_public, public, secret

    # -- socket ----------------------------------------------------------------------------------
    def _open(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        socket.linger = 0
        socket.routing_id = self._routing_id
        if self._curve is not None:
            socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = self._curve
        self._monitor = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        socket.connect(self.address)
        self._socket = socket

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._socket.close(linger=0)
            self._socket = self._monitor = None

    def _request(self, header: dict, timeout_ms: int | None = None, retries: int | None = None, payload: list = ()) -> tuple[dict, list]:
        """Send one request and wait for its reply; raise the error it carries, if any."""
        if self._closed:
            raise P.BridgeError("this client is closed")
        if self._socket is None:  # closed after a failed handshake, so that ZeroMQ stopped reconnecting
            self._open()
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        retries = self.retries if retries is None else retries
        header = {**header, "id": next(self._ids)}
        message = P.pack_header(header)
        for attempt in range(retries + 1):
            if attempt:
                log.warning("no reply to %s #%d from %s in %d ms; reconnecting", header["type"], header["id"], self.address, timeout_ms)
                self._close_socket()
                self._open()
            deadline = time.monotonic() + timeout_ms / 1000
            if self._send([message, *payload], deadline):
                reply = self._wait(header["id"], deadline)
                if reply is not None:
                    return reply
        raise P.BridgeTimeoutError(
            f"no reply to {header['type']!r} from {self.address} after {retries + 1} tries of {timeout_ms} ms; is the server running?"
        )

    def _check_handshake(self) -> None:
        """Read one monitor event; a failed handshake raises AuthenticationError."""
        event = parse_monitor_message(self._monitor.recv_multipart())
        reason = _HANDSHAKE_FAILURES.get(event["event"])
        if reason is not None:
            # ZeroMQ would retry the handshake forever in the background: stop it (the next
            # request opens a new socket)
            self._close_socket()
            raise P.AuthenticationError(f"{self.address}: {reason}")

    def _ready(self, event: int, deadline: float):
        """Yield each time the socket is ready for `event` (zmq.POLLIN or zmq.POLLOUT) before `deadline`,
        watching the handshake monitor meanwhile (a failed handshake raises AuthenticationError)."""
        poller = zmq.Poller()
        poller.register(self._socket, event)
        poller.register(self._monitor, zmq.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(max(1, int(left * 1000))))
            if self._monitor in ready:
                self._check_handshake()
            if self._socket in ready:
                yield

    def _send(self, parts: list, deadline: float) -> bool:
        """Queue a request by `deadline`; False if the socket would not take it. A refused handshake can
        leave the socket no connection to queue on, where a blocking send would wait forever."""
        for _ in self._ready(zmq.POLLOUT, deadline):
            try:
                self._socket.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
                return True
            except zmq.Again:  # the connection went between the poll and the send
                continue
        return False

    def _wait(self, request_id: int, deadline: float) -> tuple[dict, list] | None:
        for _ in self._ready(zmq.POLLIN, deadline):
            parts = self._socket.recv_multipart(copy=False)
            header = P.unpack_header(parts[0].bytes, limit=None)  # the server is trusted more than its clients
            if header.get("type") == "error" and header.get("id") is None:
                # the server could not read the id of a request; ours is the only one in flight
                # (a late reply to an earlier try carries its id, which is this one's too)
                raise P.error_from_reply({**header, "id": request_id})
            if header.get("id") != request_id:
                continue  # a late reply to an earlier request
            if header.get("type") == "error":
                raise P.error_from_reply(header)
            return header, parts[1:]
        return None

    # -- requests --------------------------------------------------------------------------------
    def hello(self) -> WorldInfo:
        """Check the protocol version and learn the world's spec (also kept as `self.info`)."""
        header, _ = self._request({"type": "hello", "v": list(self.protocol_version), "client": self.name})
        self.info = WorldInfo.from_reply(header)
        if self.info.protocol != tuple(self.protocol_version):
            log.warning("server speaks bridge protocol %d.%d, this client %d.%d", *self.info.protocol, *self.protocol_version)
        return self.info

    def reset(self, prompt: str | None = None, seed: int | None = None, context: np.ndarray | None = None,
              start: str | None = None, start_index: int | None = None, batching: str | None = None) -> np.ndarray:
        """Start (or restart) this client's session; return the first chunk, uint8 (chunk, H, W, 3).

        `context`: real frames, uint8 (N, H, W, 3), for the world to continue from; the first chunk
        is then their last `chunk` frames. `start="real"`: continue from an entry of the world's bank
        of real starts (`info.num_starts`), entry `start_index`, or one the server draws from `seed`;
        a `start_index` alone means `start="real"`. `batching="exact"`: the server steps this session in
        forwards of its own, so its frames equal the session played alone bit for bit ("shared": batched
        with others, within the documented rounding bound; None: the server's default, `info.batching`).
        `last_reset` says how the session started.
        """
        header = {"type": "reset", "prompt": prompt, "seed": None if seed is None else int(seed), "codec": self.codec}
        if batching is not None:
            if batching not in P.BATCHING_MODES:
                raise ValueError(f"batching must be one of {list(P.BATCHING_MODES)}, got {batching!r}")
            self._require_version((1, 2), f"reset with batching={batching!r}")
            header["batching"] = batching
        if self.codec == "shm":
            self._require_version((1, 2), "codec 'shm'")
            if "shm" not in self.info.codecs:
                raise P.BridgeError(f"the server at {self.address} offers no shared-memory frames (codecs {list(self.info.codecs)}): "
                                    "it must run on this machine on a loopback or ipc endpoint; use codec 'raw'")
        if start_index is not None and start is None:
            start = "real"
        if start not in (None, "prompt"):  # "prompt" is what a reset without `start` does, also on a 1.0 server
            self._require_version((1, 1), f"reset with start={start!r}")
            header["start"] = start
        if start_index is not None:
            header["start_index"] = int(start_index)
        if self.codec == "jpeg":
            header["quality"] = self.jpeg_quality
        payload = []
        if context is not None:
            context = np.ascontiguousarray(context)
            if context.dtype != np.uint8 or context.ndim != 4:
                raise ValueError(f"context must be uint8 frames (N, H, W, 3), got {context.dtype} {context.shape}")
            header["context"] = {"dtype": "uint8", "shape": list(context.shape)}
            payload = [context]
        reply = None
        if self.session is not None:
            try:
                reply = self._request({**header, "session": self.session}, payload=payload)
            except P.SessionLostError:
                log.info("session %s was lost; starting a new one", self.session)
                self.session = None
        if reply is None:
            reply = self._request(header, payload=payload)
        requested = "context" if context is not None else start or "prompt"
        self.last_reset = ResetInfo(reply[0].get("start", requested), reply[0].get("start_index"), reply[0].get("prompt"),
                                    reply[0].get("batching"), reply[0].get("codec"))
        self.last_step = None
        return self._frames(reply)

    def step(self, action) -> np.ndarray:
        """Send one action; return the next chunk, uint8 (chunk, H, W, 3), read-only. The rewards the
        world predicts for it are in `last_step`."""
        reply = self._request({"type": "step", "session": self._session(), "action": P.action_to_wire(action)})
        self.last_step = StepInfo.from_reply(reply[0])
        return self._frames(reply)

    def set_prompt(self, text: str) -> None:
        """Change the prompt of this session from the next chunk on."""
        self._request({"type": "set_prompt", "session": self._session(), "prompt": text})

    def ping(self) -> float:
        """Renew the lease; return the round trip in seconds."""
        start = time.perf_counter()
        self._request({"type": "ping"})
        return time.perf_counter() - start

    def close(self) -> None:
        """Close the session on the server (best effort) and the socket. Safe to call twice."""
        if self._closed:
            return
        if self.session is not None:
            try:
                self._request({"type": "close", "session": self.session}, timeout_ms=min(self.timeout_ms, 1000), retries=0)
            except P.BridgeError as e:
                log.debug("closing session %s: %s", self.session, e)
            self.session = None
        self._close_socket()
        self._rings.close()
        self._closed = True

    def _require_version(self, version: tuple[int, int], what: str) -> None:
        """Refuse, before sending, a request that the server's protocol version does not know."""
        if self.info is None:
            self.hello()
        if self.info.protocol < version:
            raise P.BridgeError(f"{what} needs bridge protocol {version[0]}.{version[1]}; the server at {self.address} "
                                f"speaks {self.info.protocol[0]}.{self.info.protocol[1]}")

    def _session(self) -> str:
        if self.session is None:
            raise P.BridgeError("no session: call reset() first")
        return self.session

    def _frames(self, reply: tuple[dict, list]) -> np.ndarray:
        header, parts = reply
        self.session = header["session"]
        self.chunk = header.get("chunk")
        meta = header["frames"]
        if isinstance(meta, dict) and meta.get("codec") == "shm":
            if parts:
                raise P.ProtocolError(P.BAD_MESSAGE, f"shm frames come without payload parts, got {len(parts)}")
            return self._rings.read(meta)
        return P.decode_frames(meta, [part.buffer for part in parts])

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
