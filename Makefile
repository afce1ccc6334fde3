# pacsmig — the README's commands. Everything installs into .venv at the repo root.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := .venv/bin/pip
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench lint clean

.venv/.installed: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

setup: .venv/.installed

demo: setup
	$(PY) -m testbed.demo

test: setup
	$(PY) -m pytest -p no:cacheprovider -q -ra --durations=15 tests; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

bench: setup
	$(PY) -m bench.run

lint: setup
	.venv/bin/ruff check include dags plugins testbed tests bench

clean:
	rm -rf data .venv
