# The verbs people type. Each one is a thin call into scripts/stack.sh or a tool in .venv;
# docs/local-stack.md explains what runs where.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY     := .venv/bin/python
STACK  := scripts/stack.sh
FILE   ?= recordings/btcusdt-trade-2020-01-01.jsonl.gz
SPEED  ?= max
PYTEST_ARGS ?=

.PHONY: help install services demo up down clean status logs replay test test-unit lint bench lock audit
.PHONY: compose-demo compose-up compose-down compose-clean compose-status

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: ## install what is missing (Debian packages, .venv, Maven jars), start nothing
	@$(STACK) install

services: ## start PostgreSQL, Redis and Kafka (what the tests need)
	@$(STACK) services

demo: ## the whole pipeline on the bundled recording: services, consumer, replay server, producer, Airflow
	@$(STACK) demo

up: ## the whole pipeline, producer on live Binance (BINANCE_WS_URL overrides)
	@$(STACK) up

down: ## stop everything, keep data
	@$(STACK) down

clean: ## stop everything and remove all data under .local/
	@$(STACK) clean

status: ## what runs, consumer lag, rows today, last price per symbol
	@$(STACK) status

logs: ## follow the logs of every process
	@$(STACK) logs

replay: ## replay FILE=<recording> at SPEED=<factor|max> into the running stack
	@$(STACK) replay "$(FILE)" "$(SPEED)"

test: ## THE test command: services up, then unit + integration + e2e + compose tests
	@$(STACK) services
	@$(STACK) test $(PYTEST_ARGS)

test-unit: ## unit tests only (no services)
	@$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: ## ruff check + ruff format --check + mypy (all run; fails if any fails)
	@rc=0; $(PY) -m ruff check . || rc=1; \
	$(PY) -m ruff format --check . || rc=1; \
	$(PY) -m mypy producer_app consumer_app dashboard airflow/dags scripts tests || rc=1; exit $$rc

bench: ## run every benchmark script in bench/, then the stack start-up timings (scripts/bench_stack.sh)
	@$(STACK) bench

audit: ## pip-audit over requirements.lock (needs PyPI's JSON API or api.osv.dev: docs/security.md)
	@$(STACK) audit

lock: ## re-resolve requirements/requirements.in into requirements/requirements.lock
	uv pip compile -q --python 3.11 requirements/requirements.in -o requirements/requirements.lock
	uv pip install -q --python $(PY) -r requirements/requirements.lock

# Docker Compose (docs/docker.md): thin wrappers over `docker compose`; scripts/compose.sh
# brings an engine and same-tag stand-in images where there are none.
compose-demo: ## the compose stack on the bundled recording (docker-compose.demo.yaml), healthy or an error
	@scripts/compose.sh demo

compose-up: ## the compose stack on live Binance, healthy or an error
	@scripts/compose.sh up

compose-down: ## stop the compose stack (and an engine started for it), keep the volumes
	@scripts/compose.sh down

compose-clean: ## stop the compose stack and remove its volumes
	@scripts/compose.sh clean

compose-status: ## the engine, each compose service's health, then make status
	@scripts/compose.sh status
