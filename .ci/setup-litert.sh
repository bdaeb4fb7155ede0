#!/usr/bin/env bash
# LiteRT's converter (litert-torch) pins typing-extensions < 4.13 through xdsl, which selenium, cattrs and
# FastAPI's stack in the main environment cannot share. It gets a small environment of its own, layered on
# the main one: its own site-packages first (litert-torch, jax, the pinned typing-extensions), then the main
# environment's (torch, polyfuse and the rest, read through a .pth). `polyfuse export --to litert` runs the
# converter there (POLYFUSE_LITERT_PYTHON); everything else stays in the main environment.
set -euo pipefail
main_py="$1"      # the main environment's python
overlay="$2"      # the folder to create
"$main_py" -m venv "$overlay"
base=$("$main_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$overlay/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$base')" > "$own/polyfuse-main-environment.pth"
# pip then reports selenium's and cattrs' wish for a newer typing-extensions: they are read from the main
# environment, where it stays new; only the converter's process sees 4.12
"$overlay/bin/python" -m pip install --quiet "litert-torch==0.10.0"
"$overlay/bin/python" -c "import litert_torch, polyfuse" 2>/dev/null
