"""The `polyfuse` command line: one parser, each command group's sub-commands from its own module
(spec, train, predict, deploy, serve, models, privacy, demo). Commands import their heavy parts when they
run, so `polyfuse --help` and the torch-free commands work on the base install."""
from __future__ import annotations

import argparse
import sys

from polyfuse.cli import demo, deploy, experiments, models, predict, privacy, serve, spec, train
from polyfuse.errors import PolyfuseError
from polyfuse.threads import single_threaded_blas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyfuse", description="Multimodal fusion models from raw tables.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (spec, train, experiments, predict, deploy, serve, models, demo, privacy):  # the order `polyfuse --help` lists them
        group.add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        single_threaded_blas()  # see polyfuse.threads
        args.fn(args)
    except PolyfuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
