# The two commands of the README. Both install what they need first (apt: runsc
# from bookworm-backports and iptables; a venv in .venv with the package).
.PHONY: demo test setup setup-test bench clean

demo: setup
	.venv/bin/sandbox-magic demo

test: setup-test
	.venv/bin/python -m pytest -ra

bench: setup
	.venv/bin/python benchmarks/bench_cell.py

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh --test

clean:
	rm -rf .venv .cache build test-artifacts
