# The two commands: `make demo` (main job on sample videos) and `make test` (whole suite).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
OFFLINE ?= 0
DEMO_ROOT ?= demo_root

.PHONY: install system-deps demo test lint bench clean cluster docs

$(VENV)/.installed: pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH_PINS)
	$(PIP) install $(TORCH_PINS) -e ".[all]"
	@# scenedetect requires opencv-python, the GUI build (needs libGL); both builds install the same cv2
	@# package, so keep only the headless one, same version: nothing needs a display or libGL
	v=$$($(PY) -c "import importlib.metadata as m; print(m.version('opencv-python-headless'))") && \
	$(PIP) uninstall -y -q opencv-python && \
	$(PIP) install -q --force-reinstall --no-deps "opencv-python-headless==$$v"
	touch $@

install: $(VENV)/.installed

# ffmpeg/ffprobe (and chromium for the UI test) come from apt when missing.
system-deps:
	@bash scripts/system-deps.sh

demo: install
	$(PY) -m curate.demo --root $(DEMO_ROOT) $(if $(filter 1 yes true,$(OFFLINE)),--offline,)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# a local CeleryExecutor cluster (PostgreSQL, Redis, scheduler, API server, default + gpu workers) on 127.0.0.1
cluster: install
	PATH=$(abspath $(VENV))/bin:$$PATH bash scripts/cluster.sh --dir $(or $(CLUSTER_DIR),/tmp/curate-cluster) $(CLUSTER_ARGS)

# the generated reference pages (docs/cli.md, docs/airflow-params.md, docs/tables.md); tests/test_docs.py checks them
docs: install
	$(PY) scripts/gen_docs.py

lint: install
	$(VENV)/bin/ruff check src tests dags plugins bench

clean:
	rm -rf $(VENV) $(DEMO_ROOT) .pytest_cache
