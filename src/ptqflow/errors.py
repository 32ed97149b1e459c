"""One error type for problems a user can fix, the wrapper that turns it into one line, and the one-line warning."""

from __future__ import annotations

import sys
from typing import Callable


class PtqflowError(Exception):
    """A problem with the user's input, parameters or environment: printed as one line, exit code 2."""


class VariantSkipped(PtqflowError):
    """The variant cannot run here (the message says why: a device it needs, an architecture its runtime cannot
    take); it is reported as skipped, not failed, and the rest of the run goes on."""


def warn(message: str) -> None:
    """`warning: <message>` on stderr: something a user should know while the stage goes on."""
    print(f"warning: {message}", file=sys.stderr)


def run_cli(main: Callable[[], object]) -> None:
    """Run an entry point with the quiet console (console.py); a PtqflowError becomes `error: <message>` on
    stderr and exit status 2."""
    from .console import quiet

    quiet()
    try:
        main()
    except PtqflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
