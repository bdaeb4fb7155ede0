"""The documentation site builds with `mkdocs build --strict` (no broken links, anchors or references),
its spec reference is generated from the spec's schema, and the API reference renders the runtime."""
from __future__ import annotations

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


def _text(page: Path) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _missing()
    if missing:
        pytest.skip(f"the docs toolchain is not installed (missing: {', '.join(missing)}); "
                    "pip install 'mkdocs>=1.6' 'mkdocs-material>=9.5' 'mkdocstrings>=1.0' 'mkdocstrings-python>=2.0'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out),
                           "--config-file", str(REPO / "mkdocs.yml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_spec_reference_is_generated_from_the_schema(site: Path) -> None:
    from polyfuse.spec.schema import json_schema

    schema = json_schema()
    page = _text(site / "spec" / "index.html")
    defs = schema["$defs"]
    for section in ("DataSpec", "FusionSpec", "TextInput", "TimeseriesInput", "TrainSpec"):
        for field in defs[section]["properties"]:
            assert re.search(rf"\b{re.escape(field)}\b", page), f"{section}.{field} is not on the spec page"
    assert "polyfuse schema" in page
    assert not (REPO / "docs" / "spec.md").exists(), "docs/spec.md is generated at build time; do not commit it"


def test_api_reference_renders_the_runtime(site: Path) -> None:
    page = _text(site / "api" / "index.html")
    assert "Runtime" in page
    assert "polyfuse.runtime" in page and "predict_proba" in page
    assert ":class:" not in page and ":mod:" not in page
