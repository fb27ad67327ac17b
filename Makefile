# The README's two commands are `make demo` and `make test`; both set everything up first (idempotently).
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PROFILE ?= mad
export AIIDA_PATH ?= $(CURDIR)/.aiida
export PATH := $(VENV)/bin:$(PATH)
# Debian packages the test suite needs besides those of a plain setup (services the tests start themselves).
TEST_APT := slurm-wlm munge chromium
SETUP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-scale lint format

setup:
	./setup_profile.sh --profile $(PROFILE) $(SETUP_ARGS)

demo: setup
	aiida-mad -p $(PROFILE) demo

test:
	./setup_profile.sh --profile $(PROFILE) $(addprefix --apt ,$(TEST_APT)) $(SETUP_ARGS)
	pytest $(PYTEST_ARGS)

bench: setup
	python bench/run.py

# Not part of `make test` or `make bench`: a MAD-size campaign stage by stage (docs/scale.md), N = 1 000, 10 000 and
# 100 000 on SQLite and PostgreSQL (about 45 minutes on an idle 2-core machine); smaller, e.g.
# `make bench-scale SCALE_ARGS='--sizes 1000,10000 --backends sqlite'`.
SCALE_ARGS ?=
bench-scale: setup
	python bench/bench_scale.py $(SCALE_ARGS)

lint:
	ruff check .
	ruff format --check .

format:
	ruff check --fix .
	ruff format .
