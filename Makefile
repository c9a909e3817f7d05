# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test test-fast demo bench clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow"

demo: $(STAMP)
	$(BIN)/tfprobunet demo --workdir runs/demo

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) runs build *.egg-info
