"""Box and Dict action spaces over the bridge (docs/protocol.md, "hello": the action space): actions sent
as nested lists and maps give the frames the same world gives in-process, and actions outside the space
are refused with bad_action while the session goes on."""

from dataclasses import replace

import msgpack
import numpy as np
import pytest
import torch
import zmq

from tests.conftest import perturb_
from worldsdk import World
from worldsdk.autoencoder import AUTOENCODER_PRESETS, AutoencoderConfig, FrameAutoencoder
from worldsdk.bridge import Client, ProtocolError, Server
from worldsdk.bridge import protocol as P
from worldsdk.config import MODEL_PRESETS, WORLD_PRESETS, ActionSpec
from worldsdk.model import ByteTextConfig, ByteTextEncoder, CausalDiT

SPACES = {
    "box": (ActionSpec.box((2,), -1.0, 1.0), {"none": [0.0, 0.0], "left": [-1.0, 0.0], "up": [0.0, 1.0]}),
    "dict": (ActionSpec.dict(keyboard=ActionSpec.multi_binary(4), mouse=ActionSpec.box((2,))),
             {"none": {"keyboard": [0, 0, 0, 0], "mouse": [0.0, 0.0]}, "w": {"keyboard": [1, 0, 0, 0], "mouse": [0.0, 0.0]}}),
}


def world_with(kind: str) -> World:
    """The tiny world with a Box or Dict action space, its action input and head perturbed so frames react."""
    action, key_map = SPACES[kind]
    config = replace(MODEL_PRESETS["tiny"], action_dim=action.feature_dim)
    spec = replace(WORLD_PRESETS["tiny"], name=f"tiny-{kind}", action=action, key_map=key_map)
    ae = AUTOENCODER_PRESETS.get("tiny", AutoencoderConfig(latent_channels=config.latent_channels, num_down=3))
    torch.manual_seed(0)
    model = perturb_(CausalDiT(config), 0.1)
    text = ByteTextEncoder(ByteTextConfig(text_len=config.text_len, text_dim=config.text_dim, num_layers=2, num_heads=2))
    return World(model, FrameAutoencoder(ae), text, spec)


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_box_and_dict_actions_play_like_the_world_in_process(kind):
    world = world_with(kind)
    space = world.action_space
    space.seed(3)
    actions = [space.sample() for _ in range(5)] + ["none"]
    with Server(world, "tcp://127.0.0.1:*").start() as server, Client(server.address, timeout_ms=10_000) as client:
        info = client.hello()
        assert info.action_space == space and info.spec.action == world.spec.action
        got = [client.reset(seed=2)] + [client.step(a) for a in actions]
        with pytest.raises(ProtocolError) as refused:
            client.step({"keyboard": [0, 0, 0, 0]} if kind == "dict" else [2.0, 0.0])  # a key missing / out of range
        assert refused.value.code == P.BAD_ACTION
        got.append(client.step(actions[0]))  # the session goes on
        socket = zmq.Context.instance().socket(zmq.DEALER)  # a raw engine sends plain msgpack lists and maps
        socket.linger = 0
        socket.connect(server.address)
        socket.send(msgpack.packb({"type": "reset", "id": 1, "seed": 2}))
        assert socket.poll(10_000)
        sid = msgpack.unpackb(socket.recv_multipart()[0])["session"]
        socket.send(msgpack.packb({"type": "step", "id": 2, "session": sid, "action": P.action_to_wire(actions[0])}))
        assert socket.poll(10_000)
        reply = socket.recv_multipart()
        socket.close()
    reference = world_with(kind)
    want = [reference.reset(seed=2)] + [reference.step(world.spec.key_map[a] if isinstance(a, str) else a) for a in actions]
    want.append(reference.step(actions[0]))
    for i, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_array_equal(g, w, err_msg=f"chunk {i}")
    np.testing.assert_array_equal(P.decode_frames(msgpack.unpackb(reply[0])["frames"], reply[1:]), want[1])
    assert len({g.tobytes() for g in got[1:6]}) > 1  # different actions, different frames
