"""Small helpers shared by the command-line entry points."""

from __future__ import annotations

import argparse
import sys
import traceback


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer >= 1, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {value}")
    return value


def report_user_error(prog: str, error: BaseException, debug: bool = False, where: str = "") -> int:
    """Print a user error as one line ``<prog>: error: <message>[ (<where>)]`` (``debug``: the
    traceback instead) on stderr and return the commands' exit status for it, 2."""
    if debug:
        traceback.print_exception(error)
    else:
        print(f"{prog}: error: {error}" + (f" ({where})" if where else ""), file=sys.stderr)
    return 2
