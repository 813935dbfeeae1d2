# Entry points for people and CI. `make up` and `make test` are the two that matter (README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS_DIR ?= models
RUNS_DIR ?= runs
MODELS ?= digits catdog sentiment
GRPC_PORT ?= 8500
REST_PORT ?= 8501
export DATA_DIR ?= $(abspath ../shared/data)

.PHONY: help up venv install install-dev train-missing models-config serve test lint evaluate bench fuzz reliability loadtest protos clean

help: ## this list of targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# -- setup ------------------------------------------------------------------------------------

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(VENV)/bin/python

install: venv ## the server, clients, training and export
	$(PY) -m pip install --quiet -e '.[train,load]'

install-dev: venv ## everything, plus test and lint tools
	$(PY) -m pip install --quiet -e '.[train,load,dev]'

# -- the main job -----------------------------------------------------------------------------

up: install train-missing models-config serve ## venv, install, train+export what is missing, serve

train-missing: ## train and export every model that has no published version yet
	@for model in $(MODELS); do \
	  if ls -d $(MODELS_DIR)/$$model/[0-9]* >/dev/null 2>&1; then \
	    echo "==> $$model: published version found in $(MODELS_DIR)/$$model, not training"; \
	  else \
	    echo "==> $$model: training (runs/$$model), then exporting to $(MODELS_DIR)/$$model"; \
	    $(PY) -m training $$model --out $(RUNS_DIR)/$$model || exit 1; \
	    $(PY) -m export $$model --run $(RUNS_DIR)/$$model --models-dir $(MODELS_DIR) || exit 1; \
	  fi; \
	done

models-config: ## write models/models.config (TF Serving text format) for the models present
	@mkdir -p $(MODELS_DIR)
	@{ echo "model_config_list {"; \
	  for model in $(MODELS); do \
	    if [ -d $(MODELS_DIR)/$$model ]; then \
	      echo "  config { name: '$$model' base_path: '$(abspath $(MODELS_DIR))/$$model' model_platform: 'tensorflow' }"; \
	    fi; \
	  done; echo "}"; } > $(MODELS_DIR)/models.config
	@echo "==> wrote $(MODELS_DIR)/models.config"

serve: ## serve models/ in the foreground (Ctrl-C stops)
	$(PY) -m serving --model_config_file $(MODELS_DIR)/models.config --port $(GRPC_PORT) --rest_api_port $(REST_PORT) --enable_batching

# -- checks -----------------------------------------------------------------------------------

test: install-dev lint ## the whole suite (CI runs exactly this)
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: ## ruff and mypy (part of make test)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy serving clients training export loadtests

evaluate: ## accuracy of the published models on their test sets, against the targets
	$(PY) -m export.evaluate --models-dir $(MODELS_DIR) $(MODELS)

bench: ## serving latency/throughput on the published digits model (loopback); PEERS=1: beside KServe and a minimal floor
	$(PY) -m loadtests.bench --models-dir $(MODELS_DIR) $(if $(PEERS),--peers) $(BENCH_ARGS)

reliability: ## the README's reliability figures: tiny requests declaring huge tensors, big JSON bodies vs health checks, slowloris, a connection flood (about a minute, loopback)
	$(PY) -m loadtests.reliability

FUZZ_ARGS ?= --seed 1 --grpc-cases 10000 --rest-cases 10000 --max-seconds 1200 --concurrency 2
fuzz: install-dev ## seeded fuzz campaign (gRPC + REST + OpenAPI cases) against a real server on 127.0.0.1; fails on any 5xx, INTERNAL/UNKNOWN, hang, crash or RSS growth; FUZZ_ARGS to override
	$(PY) -m loadtests.fuzz $(FUZZ_ARGS) --out reports/fuzz

loadtest: ## 60 s Locust step ramp against a local server: knee per model; fails on errors or p99 over 250 ms at the first step
	$(PY) -m loadtests.run --start-server --models-dir $(MODELS_DIR) --server-args=--enable_batching --shape step --users 40 --duration 60 --p99-ms 250 --out reports/loadtest

protos: ## regenerate serving/proto/*_pb2*.py from protos/ (needs grpcio-tools from the dev extra)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/serving/proto/*.proto
	find serving/proto -name '*_pb2_grpc.py' ! -name 'apis_pb2_grpc.py' ! -name 'inference_pb2_grpc.py' -delete

clean: ## remove caches and build folders
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info
