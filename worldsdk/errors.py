"""The errors a user's own input causes, and how the command line reports them.

Commands print these as one line and exit 2 (`--debug` shows the traceback); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from worldsdk.checkpoint import CheckpointError


class UserError(Exception):
    """A mistake in what the user asked for (a name, a path, a setting), with the fix in its message."""


def user_error_types() -> tuple[type[BaseException], ...]:
    from worldsdk.data.store import CorruptShardError, DatasetError

    return (UserError, CheckpointError, CorruptShardError, DatasetError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError)


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (multi-line messages joined), without a traceback."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    return text


def run_reporting_errors(fn: Callable[[], int], program: str, debug: bool) -> int:
    """`fn()`, with user errors as one line on stderr (exit 2) and Ctrl-C as exit 130, unless `debug`."""
    try:
        return fn()
    except user_error_types() as err:
        if debug:
            raise
        print(f"{program}: error: {one_line(err)}", file=sys.stderr)
        logging.getLogger(__name__).debug("traceback", exc_info=True)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{program}: interrupted", file=sys.stderr)
        return 130
