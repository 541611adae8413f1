# INFER FORGE ops: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help bootstrap test lint syntax docs sanity pytest mutation molecule collection demo demo-down bench clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

bootstrap: ## Install packages, .venv, start Docker, build the Molecule image (idempotent)
	@scripts/bootstrap.sh

test: ## Run every stage: bootstrap, lint, syntax, docs, sanity, pytest, mutation, molecule
	@scripts/test.sh

lint: ## yamllint, ansible-lint (production profile), ruff
	@scripts/test.sh bootstrap lint

syntax: ## ansible-playbook --syntax-check of every playbook
	@scripts/test.sh syntax

docs: ## ansible-doc renders every module in library/
	@scripts/test.sh docs

sanity: ## ansible-test sanity of the modules and engine, built as the infer.forge collection
	@scripts/bootstrap.sh packages venv && scripts/test.sh sanity

pytest: ## Python tests against real PostgreSQL and Redis
	@scripts/bootstrap.sh packages venv && scripts/test.sh pytest

mutation: ## Break each core promise in a scratch copy; fails when a mutant survives its tests
	@scripts/bootstrap.sh packages venv && .venv/bin/python scripts/mutation_check.py --baseline

molecule: ## Molecule scenarios in local containers (MOLECULE_SCENARIOS="a b" to pick)
	@scripts/bootstrap.sh && scripts/test.sh molecule

collection: ## Build the infer.forge collection tarball into dist/ (ansible-galaxy collection install it)
	@scripts/bootstrap.sh packages venv && .venv/bin/python scripts/build_collection.py --tarball dist

demo: ## The lab in four local containers: deploy, health, backup, drill, off-site copy, checklist
	@scripts/bootstrap.sh && scripts/demo.sh

demo-down: ## Remove the lab containers, their network and .cache/lab
	@scripts/demo.sh down

bench: ## Backup/restore benchmark on a ~2 GB generated database, targets table (BENCH_RUNS=3 for the spread)
	@scripts/bootstrap.sh packages venv docker image && .venv/bin/python bench/bench.py

clean: ## Remove the .venv
	rm -rf .venv
