"""What the scenario examples' CI-scale tests share: where the examples and their data live, the spec at CI
scale, and a command that must succeed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCENARIOS = ROOT.parent / "shared" / "data" / "scenarios"
WHEELS = ROOT / ".cache" / "wheels"  # `make examples-data` puts the medical example's source wheel here
XRAY_WHEEL = WHEELS / "torchxrayvision-1.5.7-py3-none-any.whl"


def ci_spec(example: Path, out: Path, drop: tuple[str, ...] = (), name: str = "spec.yaml", **train) -> Path:
    """The example's spec at CI scale: two epochs, the frozen e5 inputs dropped (they embed in the full run)."""
    spec = yaml.safe_load((example / name).read_text())
    for item in drop:
        spec["inputs"].pop(item)
    spec["train"].update({"epochs": 2, **train})
    (out / name).write_text(yaml.safe_dump(spec))
    return out / name


def run(*args, cwd=None):
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
