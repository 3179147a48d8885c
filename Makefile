# directdownload.kvm: the two commands of the README are `make demo` and `make test`.
# `make test` starts with `make setup` (idempotent: system packages from bindep.txt, .venv, collections in .build/);
# `make demo` with the demo's lighter set-up (scripts/setup.sh --demo: qemu-img, ansible-core in .venv).

SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help setup demo test sanity unit units integration molecule lint bench clean

help:
	@echo "make demo         set up what the demo needs, then run it (scripts/demo.sh; DEMO_VERBOSE=1 for every task)"
	@echo "make test         set up, then run every test stage: sanity, unit, integration, molecule, lint"
	@echo "make setup        system packages (bindep.txt), .venv, collections under .build/ (idempotent)"
	@echo "make sanity | unit | integration | molecule | lint    one stage (after setup)"
	@echo "make bench        download benchmark (benchmarks/bench_download.py)"
	@echo "make clean        remove .build/ and tests/output/ (keeps .venv)"

setup:
	@bash scripts/setup.sh

demo:
	@bash scripts/setup.sh --demo
	@bash scripts/demo.sh

test: setup
	@bash scripts/test.sh all

sanity unit integration molecule lint: setup
	@bash scripts/test.sh $@

units: unit

bench: setup
	@if [ -f benchmarks/bench_download.py ]; then \
		PYTHONPATH=.build/collections .venv/bin/python benchmarks/bench_download.py $(BENCH_ARGS); \
	else \
		echo "benchmarks/bench_download.py does not exist yet (coming)"; \
	fi

clean:
	rm -rf .build tests/output
