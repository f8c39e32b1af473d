# Set-up is part of every target: a fresh clone needs nothing but Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= all
export HF_HUB_OFFLINE := 1
export PATH := $(abspath $(BIN)):$(PATH)
export MPLBACKEND := Agg

.PHONY: install browser repro real paper test lint format bench compare

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

## the demo pipeline, offline, on the CPU
repro: install
	$(BIN)/dvc repro

## the real profile: a mini-study on real photos (UTKFace, FairFace-540) on the CPU (README: the real profile)
real: install
	$(BIN)/agegender profile real
	$(BIN)/dvc repro

## the paper profile on real data and models (README: run-book): switch, check every configured file, run
paper: install
	$(BIN)/agegender profile paper
	$(BIN)/dvc repro

## this run's metrics against the committed ones, metric by metric, within the README's tolerances?
## (REV=<git revision> to compare with another commit; exits non-zero if a metric moved outside its tolerance)
REV ?= HEAD
compare: install
	$(BIN)/agegender compare-metrics --rev $(REV)

## Debian's headless Chromium for the HTML report's rendering test, installed where apt-get can (as root);
## elsewhere it says so and the test skips: never a failure
browser:
	@if command -v chromium >/dev/null && test -x /usr/bin/chromedriver; then :; \
	elif test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; then :; \
	else echo "no chromium + chromium-driver: the HTML report's rendering test will skip"; fi

## the whole test suite, notebooks included
test: install browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_crops.py
	$(BIN)/python benchmarks/bench_faces.py
	$(BIN)/python benchmarks/bench_age_and_gender.py
