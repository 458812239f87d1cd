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


def test_the_unrolled_loss_reads_the_nets_own_chunks_after_the_first():
    bench = _benchmark()
    torch.manual_seed(0)
    net = bench.ConvPredictor(channels=4, history=2, chunk=1, action_features=3, width=16, blocks=1)
    clips = dots(4, 5)
    actions = torch.zeros(4, 5, 3)
    # untrained, the net repeats its last history frame in every chunk, its own repeats included
    loss = bench.unrolled_loss(net, clips[:, :2], actions, clips[:, 2:], unroll=3)
    expected = torch.stack([F.mse_loss(clips[:, 1:2], clips[:, k : k + 1]) for k in (2, 3, 4)]).mean()
    assert torch.allclose(loss, expected)
    assert torch.allclose(bench.unrolled_loss(net, clips[:, :2], actions, clips[:, 2:], unroll=1),
                          F.mse_loss(clips[:, 1:2], clips[:, 2:3]))
    # trained a little (not a repeat), chunk 2 is predicted from [real frame 2, the net's chunk 1]
    torch.nn.init.normal_(net.out.weight, std=0.1)
    first = net(clips[:, :2], actions[:, :3])
    second = net(torch.cat([clips[:, 1:2], first], dim=1), actions[:, 1:4])
    expected = (F.mse_loss(first, clips[:, 2:3]) + F.mse_loss(second, clips[:, 3:4])) / 2
    loss = bench.unrolled_loss(net, clips[:, :2], actions, clips[:, 2:], unroll=2)
    assert torch.allclose(loss, expected)
    real_history = (F.mse_loss(first, clips[:, 2:3]) + F.mse_loss(net(clips[:, 1:3], actions[:, 1:4]), clips[:, 3:4])) / 2
    assert not torch.allclose(loss, real_history)
