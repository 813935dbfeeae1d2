# Entry points for people and CI. `make up` and `make test` are the two that matter; see README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: protos
protos: ## regenerate serving/proto/*_pb2*.py from protos/ (needs grpcio-tools from the dev extra)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/serving/proto/*.proto
	find serving/proto -name '*_pb2_grpc.py' ! -name 'apis_pb2_grpc.py' -delete
