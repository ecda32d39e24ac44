# make demo       the main job: train teacher, student and FGD-distilled student on the
#                 built-in synthetic COCO dataset, report mAP (out/report.json, out/report.png)
# make demo-loss  the loss alone on synthetic pyramids: terms per level + out/fgd_masks.png
# make test       the test suite (Triton kernels run under TRITON_INTERPRET=1 without a GPU)
# make test-isa   the C++ kernel tests (fuzz included) once under each CPU variant this machine
#                 runs (FGDKERN_CPU_ISA=avx512|avx2|baseline; docs/cpu.md, "CPU variants")
# make portability  make test with 1 thread, then with each CPU variant forced: the suite must
#                 pass on any x86-64 machine, whatever its rounding (README, Development)
# make mutations  plant known mistakes in a copy of the package; fails if the suite misses one
# make bench      time every implementation and write bench/results/<device>-<date>.{json,png}
# make sdist      dist/fgdkern-<version>.tar.gz (needs no torch)
# Each creates $(VENV) from requirements-dev.txt and builds the extension on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := setup.py pyproject.toml $(shell find csrc -type f)

.PHONY: demo demo-loss test test-isa portability mutations ext bench bench-quick sdist clean

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements-dev.txt
	touch $@

# The extension is built in place by ninja under build/, so a change recompiles only what it
# touches and `make mutations` can rebuild a copy with a planted C++ mistake from those
# objects (tests/mutated_ext.py); the editable install then builds nothing again.
$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	flock /tmp/fgdkern-build.lock sh -c '$(PY) setup.py -q build_ext --inplace && \
	  FGDKERN_NO_EXT=1 $(PIP) install -q --no-build-isolation --no-deps -e .'
	touch $@

ext: $(VENV)/.built

demo: ext
	$(PY) -m fgdkern.train --preset small --out out

demo-loss: ext
	$(PY) -m fgdkern.demo --out out

test: ext
	$(PY) -m pytest -q tests

# Every test of the C++ kernels has cpp in its module name or its backend parameter.
CPU_KERNEL_TESTS := tests/cpu tests/losses tests/ops -k cpp
CPU_ISAS = $$($(PY) -c "import fgdkern, torch; print(*torch.ops.fgdkern.cpu_isas_cpp())")

test-isa: ext
	for isa in $(CPU_ISAS); do \
	  echo "== C++ kernel tests, FGDKERN_CPU_ISA=$$isa"; \
	  FGDKERN_CPU_ISA=$$isa $(PY) -m pytest -q $(CPU_KERNEL_TESTS) || exit 1; \
	done

# Each variant with torch's own CPU kernels of the same ISA (ATEN_CPU_CAPABILITY), as on a
# machine that has no better: the suite's float32 references round differently there too.
# Inductor's cache tells neither capabilities nor thread counts apart (its C++ from another
# setting fails to compile or aborts): each run gets its own.
portability: ext
	OMP_NUM_THREADS=1 TORCHINDUCTOR_CACHE_DIR=$$(mktemp -d) $(PY) -m pytest -q tests
	for isa in $(CPU_ISAS); do \
	  aten=$$(echo $$isa | sed s/baseline/default/); \
	  echo "== FGDKERN_CPU_ISA=$$isa ATEN_CPU_CAPABILITY=$$aten"; \
	  FGDKERN_CPU_ISA=$$isa ATEN_CPU_CAPABILITY=$$aten TORCHINDUCTOR_CACHE_DIR=$$(mktemp -d) \
	    $(PY) -m pytest -q tests || exit 1; \
	done

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
