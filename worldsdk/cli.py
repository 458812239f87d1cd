"""The `worldsdk` command.

Each subcommand lives in the module that implements it; that module exposes
`configure(parser: argparse.ArgumentParser) -> None` and `main(args: argparse.Namespace) -> int`.
Modules are imported only when their subcommand runs, so `worldsdk --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("worldsdk.demo", "play the default world headless with random actions and save a video"),
    "play": ("worldsdk.viewer.cli", "play a world in a pygame window (keyboard, mouse, prompts)"),
    "eval": ("worldsdk.evaluation", "replay held-out real episodes in a world and measure fidelity, actions, ball, drift"),
    "export": ("worldsdk.export", "write a trained world compactly (int8) with its training summary, to ship in the package"),
    "bench": ("worldsdk.bench", "measure World.step speed, cache vs recompute, and memory"),
    "record": ("worldsdk.data.cli", "record episodes of a Gymnasium game into a dataset"),
    "minari": ("worldsdk.data.minari_io", "export a dataset to Minari, or import a Minari dataset to train worlds on"),
    "serve": ("worldsdk.bridge.cli", "serve a world to engines and remote agents over ZeroMQ"),
}


def _configure(module_name: str, parser: argparse.ArgumentParser) -> None:
    module = importlib.import_module(module_name)
    module.configure(parser)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="worldsdk", description="Interactive world models: play, serve, record, evaluate.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (else one line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:  # only the chosen subcommand's module is imported
            _configure(module_name, sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    from worldsdk.errors import run_reporting_errors

    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    return run_reporting_errors(lambda: int(module.main(args) or 0), f"worldsdk {args.command}", args.debug)


if __name__ == "__main__":
    sys.exit(main())
