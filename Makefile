# make quickstart: the Multi30k quickstart (recipes/multi30k); make test: the whole test suite.
# Each first creates .venv with the pinned dependencies (scripts/setup_venv.sh, constraints.txt)
# when it is missing or older than setup.py or constraints.txt, and reuses it otherwise.
# PYTHON=python3.11 picks the interpreter (3.10 to 3.12); ARGS="--data DIR WORKDIR" is passed to
# recipes/multi30k/run.sh.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: quickstart test

quickstart: $(STAMP)
	@PYTHON=$(CURDIR)/$(VENV)/bin/python bash recipes/multi30k/run.sh $(ARGS)

test: $(STAMP)
	@$(VENV)/bin/python -m pytest -q -n auto --dist loadfile --durations=15 tests

$(STAMP): setup.py constraints.txt scripts/setup_venv.sh
	@bash scripts/setup_venv.sh $(PYTHON) $(VENV)
	@touch $@
