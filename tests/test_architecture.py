"""The house's rules from ARCHITECTURE.md, checked by import-linter over the real import graph:
layers import only downwards, no import cycles anywhere, and the torch-free runtime reaches no torch."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path = ROOT) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (the test extra installs it)")
    env = {**os.environ, "PYTHONPATH": str(root)}  # the polyfuse under `root` is the one analysed
    return subprocess.run([exe, "--no-cache", "--config", str(root / "pyproject.toml")], capture_output=True,
                          text=True, cwd=root, env=env, timeout=300)


def test_import_contracts_hold():
    done = _lint_imports()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("edit, broken", [
    # a module importing back into its importer
    (("nn/fusion.py", "from polyfuse.nn import model"), "No import cycles"),
    # a lower layer reaching up
    (("preprocess/text.py", "from polyfuse.training import recipe"), "Layers"),
    # the runtime's preprocessing reaching torch
    (("preprocess/image.py", "import torch"), "Torch-free runtime"),
])
def test_the_contracts_catch_what_they_forbid(tmp_path, edit, broken):
    """Each contract is live: a copy of the package with one offending import breaks it (the
    checkout itself is never edited)."""
    shutil.copytree(ROOT / "polyfuse", tmp_path / "polyfuse", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "polyfuse" / edit[0]
    path.write_text(path.read_text(encoding="utf-8") + f"\n{edit[1]}  # noqa\n", encoding="utf-8")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-2000:]
    broken_section = done.stdout.split("Broken contracts")[-1]
    assert broken in broken_section, done.stdout[-3000:]


def test_no_module_over_400_lines_and_no_reexports():
    for path in sorted((ROOT / "polyfuse").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 400, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines; split it by stage"
        assert "re-exported" not in text, f"{path.relative_to(ROOT)} re-exports names: import them where they are defined"


def test_every_package_says_what_it_may_import():
    for init in sorted((ROOT / "polyfuse").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "May import" in doc, f"{init.relative_to(ROOT)}: the docstring must say what lives there and what it may import"
