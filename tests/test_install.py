"""The base install (`pip install polyfuse`) is the torch-free runtime: a wheel built from this tree,
installed into a clean virtual environment, runs an exported model with the answers of the full
install, has no torch anywhere, and names the extra a command lacks."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyfuse.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
# wheels pip fetched for earlier runs: the base install then takes seconds, not a download
PIP_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polyfuse-tests" / "pip"
BASE_MODULES = ["polyfuse.runtime", "polyfuse.artifact", "polyfuse.spec.schema", "polyfuse.data.io", "polyfuse.cli.main",
                "polyfuse.preprocess.pipeline", "polyfuse.preprocess.hf", "polyfuse.privacy.crypto"]
NOT_IN_BASE = {"torch", "safetensors", "pandas", "scikit-learn", "transformers", "fastapi", "cryptography", "ray"}

# run inside the clean venv: argv = model dir, records JSON, table folder
PROBE = """
import importlib, importlib.util, json, sys
assert importlib.util.find_spec("torch") is None, "torch is installed in the base venv"
import polyfuse
for name in sys.argv[4:]:
    importlib.import_module(name)
from polyfuse.runtime import Runtime
rt = Runtime(sys.argv[1])
records = json.loads(sys.argv[2])
probs = rt.predict_proba(records, folder=sys.argv[3])
print(json.dumps({"file": polyfuse.__file__, "torch_imported": "torch" in sys.modules,
                  "probs": {k: v.tolist() for k, v in probs.items()},
                  "predict": rt.predict(records, folder=sys.argv[3])}))
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus whatever would let the venv see this checkout or the full venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "PIP_CACHE_DIR": str(PIP_CACHE), "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def run(cmd: list[str], cwd: Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd[:4])}... failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def index_unreachable(tmp: Path) -> str | None:
    """Why pip cannot fetch packages (None when it can): one tiny download, no cache, 5 s timeout."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "six", "--no-deps", "--no-cache-dir",
                           "--timeout", "5", "--retries", "0", "-q", "-d", str(tmp / "probe")],
                          cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1][:200]


def build_wheel(tmp: Path) -> Path:
    """A wheel of this tree, built from a copy so that no build/ or egg-info lands in the checkout."""
    src = tmp / "src"
    shutil.copytree(REPO / "polyfuse", src / "polyfuse", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # an isolated build: pip fetches the setuptools pyproject asks for (a fresh venv's own, 65 on
    # Python 3.11, cannot read its PEP 639 license field; 3.12+ venvs have none)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("polyfuse-*.whl")
    return wheel


def test_base_install_runs_the_runtime_without_torch(toy_dir, toy_csv, tmp_path):
    why = index_unreachable(tmp_path)
    if why:
        pytest.skip(f"the package index is unreachable, so the base install cannot be built ({why})")
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "base-venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False, clear=True)
    py = env_dir / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--prefer-binary", str(wheel)], cwd=tmp_path, timeout=600)

    installed = {p["name"].lower() for p in json.loads(run([str(py), "-m", "pip", "list", "--format=json"],
                                                           cwd=tmp_path).stdout)}
    assert "polyfuse" in installed and "onnxruntime" in installed
    assert not installed & NOT_IN_BASE, f"the base install pulled {sorted(installed & NOT_IN_BASE)}"
    requires = next(line for line in run([str(py), "-m", "pip", "show", "polyfuse"], cwd=tmp_path).stdout.splitlines()
                    if line.startswith("Requires:"))
    assert "torch" not in requires and "onnxruntime" in requires, requires

    # the same raw records (file paths relative to the table, a missing value) through both installs
    frame = pd.read_csv(toy_csv).head(12)
    records = frame[["photo", "sound", "note", "weight", "color"]].to_dict("records")
    records[3]["sound"] = None
    out = json.loads(run([str(py), "-c", PROBE, str(toy_dir), json.dumps(records), str(toy_csv.parent),
                          *BASE_MODULES], cwd=tmp_path).stdout)
    assert str(env_dir) in out["file"], f"polyfuse was imported from {out['file']}, not the base venv"
    assert not out["torch_imported"]
    full = Runtime(toy_dir)
    expected = full.predict_proba(records, folder=toy_csv.parent)
    assert expected.keys() == out["probs"].keys()
    for name, probs in expected.items():
        np.testing.assert_allclose(np.asarray(out["probs"][name]), probs, atol=1e-5)
    assert [r["label"] for r in out["predict"]] == [r["label"] for r in full.predict(records, folder=toy_csv.parent)]

    # commands whose extra is absent say which one to install (exit 2, no traceback)
    cli = env_dir / "bin" / "polyfuse"
    for argv, extra in ((["train", "spec.yaml", "--out", "x"], "train"), (["serve", str(toy_dir)], "serve"),
                        (["predict", str(toy_dir), str(toy_csv), "--out", "p.csv", "--runtime", "onnx"], "tables")):
        done = run([str(cli), *argv], cwd=tmp_path, check=False)
        assert done.returncode == 2 and f"pip install 'polyfuse[{extra}]'" in done.stderr, (argv, done.stderr)
        assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- a missing extra, in process
def test_a_missing_extra_is_named_with_its_pip_line(monkeypatch, capsys, toy_dir):
    import polyfuse
    from polyfuse.cli.main import main
    from polyfuse.errors import MissingExtra, PolyfuseError
    from polyfuse.nn import hf

    for name in ("torch", "fastapi", "transformers", "cryptography"):
        monkeypatch.setitem(sys.modules, name, None)  # find_spec (and import) now see it as not installed
    with pytest.raises(MissingExtra, match=r"polyfuse\.train needs the training extra: pip install 'polyfuse\[train\]' "
                                           r"\(missing: torch\)"):
        polyfuse.train({})
    with pytest.raises(ImportError, match=r"polyfuse\.runtime\.Runtime"):  # an ImportError too, with the way out
        polyfuse.load(toy_dir)
    with pytest.raises(PolyfuseError, match=r"encoder: \{hf: \.\.\.\}` needs the pretrained-models extra: "
                                            r"pip install 'polyfuse\[hf\]'"):
        hf.build_backbone({"model_type": "bert"}, "text")
    for argv, line in ((["train", "spec.yaml", "--out", "x"], "polyfuse train needs the training extra: "
                                                             "pip install 'polyfuse[train]'"),
                       (["serve", str(toy_dir)], "polyfuse serve needs the serving extra: pip install 'polyfuse[serve]'"),
                       (["sign", str(toy_dir), "--key-file", "k.pem"], "pip install 'polyfuse[crypto]'")):
        assert main(argv) == 2
        assert line in capsys.readouterr().err
