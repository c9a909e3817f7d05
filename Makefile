# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
# `make test-compat` runs the version-matrix tests on the oldest supported versions (Colab's), in
# .venv-oldest; CI runs it after `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OLDEST := .venv-oldest
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: test test-fast test-compat demo bench clean

$(STAMP): requirements.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Colab's situation: TensorFlow and friends first, then the package with its dependencies (which
# must leave them in place: tests/test_install.py checks), then the tf-keras that
# `import tfprobunet` asks for.
$(OLDEST)/.installed: requirements-oldest.txt setup.py
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -r requirements-oldest.txt
	$(OLDEST)/bin/python -m pip install --quiet -e ".[tune,dev,medical]"
	$(OLDEST)/bin/python -m pip install --quiet "tf-keras~=$$($(OLDEST)/bin/python -c \
		'import importlib.metadata as m; print(m.version("tensorflow").rsplit(".", 1)[0])').0"
	touch $@

# Two pytest-xdist workers, a test file each at a time: many tests wait on subprocesses (their
# TensorFlow imports, servers, workers), so two files at once take 11 min where one took 19.
test: $(STAMP)
	$(BIN)/python -m pytest tests -n 2 --dist loadfile

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" -n 2 --dist loadfile

# The serving extra is not in the oldest set: each tensorflow-serving-api release requires the
# TensorFlow of its own minor, so its tests (and their imports) stay with `make test`.
test-compat: $(OLDEST)/.installed
	TFPROBUNET_REQUIREMENTS=requirements-oldest.txt $(OLDEST)/bin/python -m pytest tests -m compat \
		--ignore=tests/test_export.py --ignore=tests/test_serving.py \
		--ignore=tests/test_local_server.py --ignore=tests/test_serving_padding.py \
		--ignore=tests/test_serving_limits.py

# A fresh run each time: `train` would otherwise continue the finished demo run.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/tfprobunet demo --workdir runs/demo

bench: $(STAMP)
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/sampling.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) $(OLDEST) runs build *.egg-info
