# One command each: setup, test, demo, bench. Everything runs with the project's own Node (>= 22)
# and virtual environment first on PATH (scripts/env.sh).
SHELL := /bin/bash
ENV := source scripts/env.sh &&

.PHONY: setup test test-contracts test-python lint abi audit demo bench model llama deploy clean

setup:
	@bash scripts/setup.sh

test: setup llama
	@$(ENV) $(MAKE) --no-print-directory lint
	@$(ENV) $(MAKE) --no-print-directory test-contracts
	@$(ENV) $(MAKE) --no-print-directory test-python

test-contracts:
	@$(ENV) npx hardhat test solidity

test-python: model
	@$(ENV) python -m pytest -q

lint:
	@$(ENV) ruff check . && ruff format --check . && mypy protocol client node devnet

abi:
	@$(ENV) node scripts/export-abi.mjs

# Static analysis (slither, in its own venv under .tools); not part of `make test`.
audit:
	@$(ENV) bash scripts/audit.sh

model:
	@bash scripts/fetch-model.sh

# llama.cpp (CPU) built once into ~/.cache/tallystick/llama.cpp/<version>/ from the llama.cpp
# vendored in llama-cpp-python's PyPI sdist: llama-server and its shared libraries in bin/, and
# llama-cpp-python's llama_cpp.server in venv/ on those libraries; skipped when already built.
llama:
	@$(ENV) bash scripts/build-llama.sh >/dev/null

demo: setup model
	@$(ENV) tallystick demo $(DEMO_ARGS)

# Hardhat Ignition to the network in TALLY_RPC_URL / TALLY_DEPLOYER_KEY (docs/deploy.md);
# DEPLOY_ARGS=--dev adds MockUSDC.
deploy:
	@bash scripts/deploy.sh $(DEPLOY_ARGS)

# BENCH_ARGS=--quick: every section in a minimal configuration; --only a,b: some sections.
bench: setup model llama
	@$(ENV) python -m bench $(BENCH_ARGS)

clean:
	rm -rf artifacts cache .venv .tools node_modules .models
