# The verbs people type. Each one is a thin call into scripts/stack.sh or a tool in .venv;
# docs/local-stack.md explains what runs where.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PY     := .venv/bin/python
STACK  := scripts/stack.sh
FILE   ?= recordings/btcusdt-trade-2020-01-01.jsonl.gz
SPEED  ?= max
PYTEST_ARGS ?=

.PHONY: help install services demo up down clean status logs replay test test-unit lint bench lock

help: ## list the verbs
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

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

test: ## THE test command: services up, then unit + integration + e2e tests
	@$(STACK) services
	@$(STACK) test $(PYTEST_ARGS)

test-unit: ## unit tests only (no services)
	@$(PY) -m pytest -m unit $(PYTEST_ARGS)

lint: ## ruff check + ruff format --check + mypy (all run; fails if any fails)
	@rc=0; $(PY) -m ruff check . || rc=1; \
	$(PY) -m ruff format --check . || rc=1; \
	$(PY) -m mypy producer_app consumer_app airflow/dags scripts tests || rc=1; exit $$rc

bench: ## run every benchmark script in bench/, then the stack start-up timings (scripts/bench_stack.sh)
	@$(STACK) bench

lock: ## re-resolve requirements/requirements.in into requirements/requirements.lock
	uv pip compile -q --python 3.11 requirements/requirements.in -o requirements/requirements.lock
	uv pip install -q --python $(PY) -r requirements/requirements.lock
