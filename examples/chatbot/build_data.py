"""Build the chatbot example's tables from CLINC150 (../shared/data/scenarios/clinc150, CC BY 3.0).

    python examples/chatbot/build_data.py --out examples/chatbot/data [--intents N]

Writes train.csv, valid.csv and test.csv (in-scope utterances: `text`, `intent`, `domain`) and
oos_valid.csv and oos_test.csv (out-of-scope queries, intent `oos`), from the dataset's own splits; the
model never sees an out-of-scope query in training, as in the CLINC paper's threshold setting.
``--intents N`` keeps a seeded sample of N of the 150 intents, all their rows (a CI-sized run: every split
then holds the same intents). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "scenarios" / "clinc150"
SPLITS = {"train": "train", "valid": "val", "test": "test", "oos_valid": "oos_val", "oos_test": "oos_test"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--intents", type=int, default=None, help="keep this many intents (a seeded sample)")
    parser.add_argument("--source", type=Path, default=SOURCE, help="the clinc150 folder (data_full.json, domains.json)")
    args = parser.parse_args()
    if not (args.source / "data_full.json").is_file():
        raise SystemExit(f"{args.source / 'data_full.json'} not found: the CLINC150 copy lives in ../shared/data/scenarios")
    data = json.loads((args.source / "data_full.json").read_text())
    domain_of = {i: d for d, intents in json.loads((args.source / "domains.json").read_text()).items() for i in intents}
    args.out.mkdir(parents=True, exist_ok=True)
    kept = set(random.Random(0).sample(sorted(domain_of), args.intents)) if args.intents else set(domain_of)
    for name, key in SPLITS.items():
        rows = [r for r in data[key] if r[1] in kept or key.startswith("oos")]
        with open(args.out / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "intent", "domain"])
            writer.writerows([text, intent, domain_of.get(intent, "oos")] for text, intent in rows)
        print(f"{name}.csv: {len(rows)} rows")


if __name__ == "__main__":
    main()
