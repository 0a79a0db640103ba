# Fresh machine:  make demo  (set up + run the main job on the synthetic dataset)
#                 make test  (set up + run the tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build by default. On a CUDA machine install PyTorch's CUDA build into the venv first
# (README: "GPU machines") and call `make TORCH_SPEC= ...` so that it is kept.
TORCH_SPEC ?= torch==2.13.0
DATA ?= data

.PHONY: setup demo test test-all lint docs clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate setup.cfg pyproject.toml
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/iic demo --data-root $(DATA)

test: setup lint
	$(BIN)/python -m pytest -m "not slow" -q

lint: setup
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --no-cache --check .

test-all: setup
	$(BIN)/python -m pytest -q

docs: setup
	$(BIN)/python docs/generate_cli.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
