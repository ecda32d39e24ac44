# make demo   run the main job (creates .venv and builds the extension on first use)
# make test   run the test suite (the same; Triton kernels run under TRITON_INTERPRET=1 without a GPU)
# make bench  time every implementation and write bench/results/<device>-<date>.{json,png}
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h csrc/*.h)

.PHONY: demo test ext bench bench-quick clean

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	flock /tmp/fgdkern-build.lock $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

ext: $(VENV)/.built

demo: ext
	$(PY) -m fgdkern.demo --out out

test: ext
	$(PY) -m pytest -q tests

bench: ext
	$(PY) bench/report.py

bench-quick: ext
	$(PY) bench/report.py --quick

clean:
	rm -rf build *.egg-info fgdkern/_C*.so
