#!/usr/bin/env bash
# Headless Chromium and its WebDriver (Debian packages) plus Selenium in the venv, for
# tests/test_webpage.py. Idempotent: installs only what is missing. Run as root, after the venv exists.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
"$PY" -c "import selenium" 2>/dev/null || "$PY" -m pip install --quiet "selenium>=4.10"
