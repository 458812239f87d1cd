"""`worldsdk serve`: serve a world to game engines and remote agents over ZeroMQ.

    worldsdk serve --world tiny --bind tcp://127.0.0.1:5555
    worldsdk serve --gen-keys keys/                     # CURVE key pairs for a server and a client
    worldsdk serve --world pong --bind tcp://0.0.0.0:5555 \\
        --curve-secret keys/server.key_secret --curve-clients keys/clients/
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


LIMITS_HELP = """\
limits (each is also in the hello reply; docs/protocol.md, "Limits"):
  --max-sessions              sessions held at once, over all clients (64)
  --max-sessions-per-client   sessions one client (routing id) may hold (max-sessions / 4 = 16)
  --max-clients               clients known at once (max(1024, 4 * max-sessions)); a client is known from
                              its first request until its lease lapses, also one that only pings
  --lease                     seconds a silent client keeps its sessions and its client slot (60)
  --max-batch                 sessions stepped in one forward (32)
  --reply-window              replies kept per session (and per client for requests naming no session)
                              to answer retries exactly once; also how deep a client may pipeline (8)
  --max-request-bytes         larger requests are refused (64 KiB header + 4 chunks of context frames)
  fixed: headers of at most 64 KiB, prompts of at most 4096 characters, contexts of at most 4 chunks
  shared-memory frames (codec shm): only on a loopback or ipc endpoint, Linux; a ring of
  reply-window + 1 chunks per session that asks for it
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LIMITS_HELP
    parser.add_argument("--world", default=None,
                        help="a shipped world name, a .safetensors path or a preset (tiny, small, wan-1.3b); default: the default world")
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind (default: localhost only)")
    parser.add_argument("--device", default="cpu", help="torch device of the world")
    parser.add_argument("--seed", type=int, default=0, help="weight seed of a preset world")
    parser.add_argument("--lease", type=float, default=60.0, help="seconds a silent client keeps its sessions")
    parser.add_argument("--max-sessions", type=int, default=64, help="sessions held at once, over all clients")
    parser.add_argument("--max-sessions-per-client", type=int, default=None,
                        help="sessions one client may hold (default: a quarter of --max-sessions)")
    parser.add_argument("--max-clients", type=int, default=None, help="clients known at once (default: max(1024, 4 x --max-sessions))")
    parser.add_argument("--reply-window", type=int, default=8,
                        help="replies kept per session to answer retries exactly once (also the pipelining depth)")
    parser.add_argument("--batching", choices=("shared", "exact"), default="shared",
                        help="default for sessions that do not choose: shared (one forward for all waiting sessions; frames "
                             "within 1 grey level of the session alone) or exact (a forward per session: bit-exact, no batching gain)")
    parser.add_argument("--max-batch", type=int, default=32, help="most sessions stepped in one forward")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="most a step waits for the other playing sessions' steps")
    parser.add_argument("--max-request-bytes", type=int, default=None,
                        help="larger requests are refused (default: header + 4 chunks of context)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--curve-secret", type=Path, default=None, help="server secret key file (*.key_secret): turns on CURVE")
    parser.add_argument("--curve-clients", type=Path, default=None, help="folder of the public key files of allowed clients")
    parser.add_argument("--insecure", action="store_true", help="allow binding beyond localhost without CURVE")
    parser.add_argument("--gen-keys", type=Path, default=None, metavar="DIR",
                        help="write server and client CURVE key pairs into DIR and exit")


def generate_keys(directory: Path) -> dict[str, Path]:
    """Write CURVE key pairs: DIR/server.key(_secret), DIR/client.key(_secret), DIR/clients/client.key."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(directory, "server")
    client_public, client_secret = zmq.auth.create_certificates(directory, "client")
    clients = directory / "clients"
    clients.mkdir(exist_ok=True)
    shutil.copy(client_public, clients / "client.key")
    for secret in (server_secret, client_secret):
        Path(secret).chmod(0o600)
    return {"server_public": Path(server_public), "server_secret": Path(server_secret), "client_public": Path(client_public),
            "client_secret": Path(client_secret), "clients_dir": clients}


def load_world(name: str | None, device: str = "cpu", seed: int = 0):
    """A preset (random weights, seeded), a shipped world or a path; None: the default world."""
    from worldsdk import World
    from worldsdk.config import MODEL_PRESETS
    from worldsdk.world import default_world

    name = name or default_world()
    if name in MODEL_PRESETS and not Path(name).is_file():
        return World.from_preset(name, seed=seed, device=device)
    return World.load(name, device=device)


def main(args: argparse.Namespace) -> int:
    if args.gen_keys is not None:
        paths = generate_keys(args.gen_keys)
        print(f"server: --curve-secret {paths['server_secret']} --curve-clients {paths['clients_dir']}")
        print(f"client: curve_server_key={paths['server_public']} curve_client_key={paths['client_secret']}")
        print(f"add more clients by copying their public *.key files into {paths['clients_dir']}")
        return 0

    from .server import Server, is_loopback

    if not is_loopback(args.bind) and args.curve_secret is None and not args.insecure:
        log.error("%s is reachable beyond localhost: turn on CURVE (--curve-secret, --curve-clients; keys from --gen-keys) "
                  "or pass --insecure", args.bind)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    world = load_world(args.world, args.device, args.seed)
    server = Server(
        world, args.bind, lease_s=args.lease, max_sessions=args.max_sessions, max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms, max_sessions_per_client=args.max_sessions_per_client,
        max_clients=args.max_clients, reply_window=args.reply_window, batching=args.batching,
        max_request_bytes=args.max_request_bytes, curve_secret_key=args.curve_secret, curve_clients_dir=args.curve_clients,
    )
    print(f"serving {world.spec.name} on {server.address} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
