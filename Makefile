# make demo       the main job: train teacher, student and FGD-distilled student on the
#                 built-in synthetic COCO dataset, report mAP (out/report.json, out/report.png)
# make demo-loss  the loss alone on synthetic pyramids: terms per level + out/fgd_masks.png
# make test       the test suite (Triton kernels run under TRITON_INTERPRET=1 without a GPU)
# make mutations  plant known mistakes in a copy of the package; fails if the suite misses one
# make bench      time every implementation and write bench/results/<device>-<date>.{json,png}
# make sdist      dist/fgdkern-<version>.tar.gz (needs no torch)
# Each creates $(VENV) from requirements-dev.txt and builds the extension on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

.PHONY: demo demo-loss test mutations ext bench bench-quick sdist clean

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	flock /tmp/fgdkern-build.lock $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

ext: $(VENV)/.built

demo: ext
	$(PY) -m fgdkern.train --preset small --out out

demo-loss: ext
	$(PY) -m fgdkern.demo --out out

test: ext
	$(PY) -m pytest -q tests

mutations: ext
	$(PY) -m tests.mutations

bench: ext
	$(PY) bench/report.py

bench-quick: ext
	$(PY) bench/report.py --quick

sdist: $(VENV)/.deps
	$(PY) -m build --sdist --no-isolation --skip-dependency-check --outdir dist .

clean:
	rm -rf build dist *.egg-info fgdkern/_C*.so
