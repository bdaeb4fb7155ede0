"""`polyfuse init` (a commented spec from a table) and `polyfuse schema` (the spec's JSON Schema)."""
from __future__ import annotations

import argparse
import json

from polyfuse.autospec.infer import PRESETS
from polyfuse.autospec.target import METRICS
from polyfuse.extras import require


def cmd_init(args: argparse.Namespace) -> None:
    require("tables", "polyfuse init", modules=("pandas",))
    from polyfuse.autospec.spec_yaml import init_yaml

    print(init_yaml(args.table, target=args.target, metric=args.metric, preset=args.preset), end="")


def cmd_schema(args: argparse.Namespace) -> None:
    from polyfuse.spec.schema import json_schema

    print(json.dumps(json_schema(), indent=1))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a spec by reading a sample of the table's values and files "
                       "(prints YAML with a comment on each choice)")
    p.add_argument("table")
    p.add_argument("--target", default=None, help="column to predict (default: one named label/target/class/..., "
                   "else the last column)")
    p.add_argument("--metric", choices=METRICS, default="accuracy",
                   help="what the model should be good at: f1_macro weights imbalanced classes alike "
                        "(class_weights: balanced), accuracy does not")
    p.add_argument("--preset", choices=list(PRESETS), default="medium",
                   help="fast: the network alone; medium: the network and linear models, mixed on validation; "
                        "best: three networks (other seeds) and the linear models, within train.time_limit")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("schema", help="print the JSON Schema of the spec")
    p.set_defaults(fn=cmd_schema)
