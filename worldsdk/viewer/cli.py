"""`worldsdk play`: play a world in a pygame window with keyboard, mouse and prompts.

    worldsdk play [--world NAME_OR_PATH | --connect tcp://HOST:PORT] [--scale N] [--record DIR]
    worldsdk play --replay recordings/small-20260101-120000.json [--headless --fast]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger(__name__)

HEADLESS_DEFAULT_STEPS = 30  # a headless run with no replay and no --max-steps stops after this many steps

NO_DISPLAY = (
    "no display available ({why}). Run `worldsdk play --headless` to play without a window "
    "(SDL's dummy video driver: recordings and screenshots still work), or run where a display is "
    "available (a desktop session, `ssh -X`, or `xvfb-run worldsdk play`)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--world", metavar="NAME_OR_PATH",
                        help="a preset, a shipped world's name or a .safetensors world file "
                             "(default: the default world, as for `worldsdk demo`)")
    source.add_argument("--connect", metavar="tcp://HOST:PORT", help="play a world served by `worldsdk serve`")
    parser.add_argument("--replay", metavar="FILE",
                        help="replay a recording's JSON exactly (on its own world unless --world/--connect)")
    parser.add_argument("--scale", type=int, default=0, metavar="N",
                        help="integer upscale of the frames (default: a ~512 px window)")
    parser.add_argument("--record", metavar="DIR",
                        help="record from the start into DIR (F9 toggles recording; default DIR: recordings)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the first reset, and of a preset's random weights (default: 0)")
    parser.add_argument("--prompt", help="first prompt (default: the world's)")
    parser.add_argument("--headless", action="store_true", help="no window: SDL's dummy video driver")
    parser.add_argument("--max-steps", type=int, metavar="N",
                        help=f"stop after N steps (default: none; {HEADLESS_DEFAULT_STEPS} when --headless without --replay)")
    parser.add_argument("--fast", action="store_true",
                        help="show frames as fast as they are generated, not at the world's fps")
    parser.add_argument("--mouse-range", type=float, default=100.0, metavar="PX",
                        help="mouse motion per step, in pixels, that gives a full mouse action (default: 100)")
    parser.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (F2 toggles it)")
    parser.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the last frame when the run ends")
    parser.add_argument("--threads", type=int, default=0, metavar="N",
                        help="torch threads for a local world (default: all cores but one, left to the display)")


def generation_threads(requested: int = 0) -> int:
    """Torch intra-op threads for a local world: all cores but one, which the display thread needs.

    Measured on a shared 2-core machine: the tiny preset steps in 14 ms with one thread and in
    over 200 ms with two, which spin against the display thread.
    """
    return requested if requested > 0 else max(1, (os.cpu_count() or 2) - 1)


def display_problem() -> str | None:
    """Why no window can open here, or None. Only detects the common case: Linux without X11 or Wayland."""
    if os.environ.get("SDL_VIDEODRIVER"):
        return None  # the user chose a driver; let SDL report on it
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "DISPLAY and WAYLAND_DISPLAY are unset"
    return None


def main(args: argparse.Namespace) -> int:
    if args.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    else:
        why = display_problem()
        if why:
            log.error(NO_DISPLAY.format(why=why))
            return 2
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    from worldsdk.viewer.game import Game, GameConfig
    from worldsdk.viewer.recording import Recording
    from worldsdk.viewer.session import LocalSession, open_session

    replay = Recording.load(args.replay) if args.replay else None
    if replay is not None and not (args.world or args.connect):
        source = replay.source
        session = open_session(source.get("world"), source.get("connect"), seed=int(source.get("weights_seed", 0)))
    else:
        session = open_session(args.world, args.connect, seed=args.seed)
    if isinstance(session, LocalSession):
        import torch

        torch.set_num_threads(generation_threads(args.threads))
    try:
        if replay is not None and session.spec.action != replay.spec.action:
            log.error("the recording's action space %s is not this world's %s", replay.spec.action.to_space(),
                      session.spec.action.to_space())
            return 2
        max_steps = args.max_steps
        if max_steps is None and args.headless and replay is None:
            max_steps = HEADLESS_DEFAULT_STEPS
            log.info("headless: stopping after %d steps (--max-steps to change)", max_steps)
        config = GameConfig(
            scale=args.scale, seed=args.seed, prompt=args.prompt, record_dir=args.record or "recordings",
            record=bool(args.record), realtime=not args.fast, max_steps=max_steps, show_hud=not args.no_hud,
            mouse_range=args.mouse_range, final_screenshot=args.screenshot,
        )
        try:
            game = Game(session, config, replay=replay)
        except ValueError as exc:  # a key map or action space the viewer cannot play
            log.error("cannot play world %r: %s", session.spec.name, exc)
            return 2
        try:
            stats = game.run()
        except pygame.error as exc:
            log.error("pygame could not open a window: %s\n%s", exc, NO_DISPLAY.format(why=str(exc)))
            return 2
    finally:
        session.close()
    summary = stats.summary()
    log.info("display %.1f fps, generation %.1f fps, step %.0f ms, input->frame %.0f ms (p95 %.0f ms, %d events), %d stalls",
             summary["display_fps"], summary["generation_fps"], summary["step_latency_ms_mean"],
             summary["input_latency_ms_mean"], summary["input_latency_ms_p95"], summary["input_events_measured"],
             summary["stalls"])
    if replay is not None and game.replay_mismatches:
        log.error("replay diverged from %s at event %d", args.replay, game.replay_mismatches[0])
        return 1
    return 0
