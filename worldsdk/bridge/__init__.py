"""ZeroMQ bridge: serve a World to external game engines and remote agents (see docs/protocol.md)."""

from .client import Client, WorldInfo
from .protocol import (
    PROTOCOL_VERSION,
    AuthenticationError,
    BridgeError,
    BridgeTimeoutError,
    ProtocolError,
    SessionLostError,
    VersionMismatchError,
)
from .server import Server

__all__ = [
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "BridgeError",
    "BridgeTimeoutError",
    "Client",
    "ProtocolError",
    "Server",
    "SessionLostError",
    "VersionMismatchError",
    "WorldInfo",
]
