"""benchmarks/ball_from_history.py: its convolutional predictor starts by repeating the last frame and
learns a small object's motion from two frames."""

import torch
import torch.nn.functional as F

from tests.conftest import ROOT, load_script


def _benchmark():
    return load_script(ROOT / "benchmarks" / "ball_from_history.py", "ball_from_history")


def dots(batch: int, frames: int, size: int = 8, channels: int = 4, seed: int = 0):
    """Latents (B, F, C, size, size) of one bright pixel moving one pixel a frame, each item its own start
    and direction along x; what comes next follows from the last two frames and nothing else."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(2, size - 2, (batch,), generator=g)
    y = torch.randint(0, size, (batch,), generator=g)
    step = torch.randint(0, 2, (batch,), generator=g) * 2 - 1
    out = torch.zeros(batch, frames, channels, size, size)
    for f in range(frames):
        x = (x0 + step * (f - frames // 2)).clamp(0, size - 1)
        out[torch.arange(batch), f, :, y, x] = 1.0
    return out


def test_the_predictor_repeats_the_last_frame_untrained_and_learns_the_motion():
    bench = _benchmark()
    torch.manual_seed(0)
    net = bench.ConvPredictor(channels=4, history=2, chunk=1, action_features=3, width=32, blocks=1)
    clips = dots(8, 3)
    actions = torch.zeros(8, 3, 3)
    with torch.no_grad():
        assert torch.equal(net(clips[:, :2], actions), clips[:, 1:2])  # untrained: nothing moved
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(300):
        batch = dots(32, 3, seed=step + 1)
        loss = F.mse_loss(net(batch[:, :2], torch.zeros(32, 3, 3)), batch[:, 2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = dots(64, 3, seed=10_000)
    with torch.no_grad():
        pred = net(test[:, :2], torch.zeros(64, 3, 3))[:, 0, 0]  # (B, size, size)
    hits = (pred.flatten(1).argmax(1) == test[:, 2, 0].flatten(1).argmax(1)).float().mean()
    repeat = (test[:, 1, 0].flatten(1).argmax(1) == test[:, 2, 0].flatten(1).argmax(1)).float().mean()
    assert repeat < 0.2 and hits > 0.9  # the dot is where it moved, not where it was
