"""Argument types for the command line (counts, sizes and durations that must be positive, refused
by argparse with the flag's name before anything starts) and the progress-bar switch."""
from __future__ import annotations

import argparse
import sys
from typing import Callable


def _bounded(kind: type, allow_zero: bool) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} (got {text!r})")
        if value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'0 or more' if allow_zero else 'positive'} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


positive_int = _bounded(int, allow_zero=False)
positive_float = _bounded(float, allow_zero=False)
non_negative_float = _bounded(float, allow_zero=True)


def bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: a log file or pipe gets one line per epoch or step instead
    of thousands of carriage-return updates."""
    return not args.quiet and sys.stderr.isatty()
