"""De-identification under attack: for every rule (each compiled pattern, the Chinese address scanner as
find_addresses applies it, each finder of pii.find, the full redact), the throughput on its worst
adversarial input (polyfuse.privacy.attacks: the rule's own repeated parts, and the inputs reported
against the old rules). Target: >= 1 MB/s on every rule's worst input (the old rules: ~8 KB/s on
"a."*50000, and 2^n time on "Calle " + "della"*n). Sizes are in characters, so a Chinese input is
counted at a third of its UTF-8 bytes. Each input is screened at 10k characters; the five slowest
are timed at 100k (best of two).

    .venv/bin/python benchmarks/attack_deid.py [--size 100000] [--target 1.0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

sys.path.insert(0, str(REPO))
from polyfuse.privacy import attacks  # noqa: E402


def worst_input(rule, rx, size: int) -> tuple[str, float]:
    """The label and MB/s (10^6 characters a second) of the rule's slowest input at ``size``."""
    screen = attacks.inputs(rx, size // 10)
    slow = sorted(screen, key=lambda label: attacks.best_seconds(rule, screen[label], 1))[-5:]
    full = attacks.inputs(rx, size)
    label, seconds = max(((label, attacks.best_seconds(rule, full[label], 2)) for label in slow), key=lambda x: x[1])
    return label, len(full[label]) / 1e6 / max(seconds, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="characters of each timed input")
    parser.add_argument("--target", type=float, default=1.0, help="MB/s every rule must reach")
    args = parser.parse_args()
    print(f"{'rule':<28} {'MB/s':>8}  verdict  worst input")
    failed = 0
    for name, (rule, rx) in attacks.rules().items():
        label, rate = worst_input(rule, rx, args.size)
        verdict = "PASS" if rate >= args.target else "FAIL"
        failed += verdict == "FAIL"
        print(f"{name:<28} {rate:8.2f}  {verdict:<7}  {label[:60]}", flush=True)
    print(f"{failed} of {len(attacks.rules())} rules below {args.target} MB/s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
