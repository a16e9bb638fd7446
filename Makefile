# The two commands of the README, and the steps they share.
#   make demo   profile a bundled model, plan 2 stages, generate them, train them (2 processes)
#   make test   install vpipe (a normal, non-editable install), lint it (ruff, mypy), run the tests
#   make gpu-check  on a machine with a GPU: tests/gpu and a profile -> train -> report on it
#               (scripts/gpu_check.sh; installs nothing, downloads nothing; exit 2 without a GPU)
# Both build .venv on first use. PyTorch is installed first, pinned, so that the project's
# `torch>=...` requirement installs nothing more: on a machine without a GPU that must be a
# CPU build. Where `pip install torch==2.13.0` would fetch a CUDA build, pass PyTorch's CPU
# wheel index: make test TORCH_PIP_FLAGS="--index-url <PyTorch CPU index>".

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_PIP_FLAGS ?=
BIN := $(VENV)/bin
DEMO := demo
# mypy finds a module by its import name under a search folder, and vpipe's parts are top-level
# folders mapped into `vpipe.*` (pyproject's package-dir): lint links each part, every folder
# with an __init__.py but tests/, as $(MYPY_TREE)/vpipe/<part> (pyproject's mypy_path)
MYPY_TREE := build/mypy
PARTS := $(filter-out tests,$(patsubst %/__init__.py,%,$(wildcard */__init__.py)))

.PHONY: demo test install dev lint clean gpu-check

$(BIN)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PIP_FLAGS) "$(TORCH)"
	$(BIN)/pip install --quiet ".[test]"
	touch $@

install: $(BIN)/.deps
	$(BIN)/pip install --quiet --no-deps --force-reinstall .

dev: $(BIN)/.deps
	$(BIN)/pip install --quiet --no-deps -e . --config-settings editable_mode=strict

lint: $(BIN)/.deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	mkdir -p $(MYPY_TREE)/vpipe
	for part in $(PARTS); do ln -sfn ../../../$$part $(MYPY_TREE)/vpipe/$$part; done
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q

demo: install
	mkdir -p $(DEMO)
	$(BIN)/vpipe-profile vpipe.models.gpt --device cpu --batch-size 8 --threads 1 --beside 1 \
		-o $(DEMO)/profile.yaml --plot $(DEMO)/profile.png
	$(BIN)/vpipe-plan $(DEMO)/profile.yaml --gpus 2 --memory 12MiB \
		-o $(DEMO)/plan.yaml --plot $(DEMO)/plan.png
	$(BIN)/vpipe-gen $(DEMO)/plan.yaml -o $(DEMO)/out
	$(BIN)/vpipe-train $(DEMO)/out/pipeline.yaml --steps 300 --lr 0.05 --optimizer momentum \
		--print-every 50

# no dependency on $(BIN)/.deps: that would pip install, and the GPU machine has no network
gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
