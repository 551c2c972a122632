# Two commands do all the set-up on a fresh machine (both idempotent):
#   make quickstart   venv + install + Fashion-MNIST + MAE pretraining + evaluation report
#   make test         venv + install + Fashion-MNIST + the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
VISPRE := $(VENV)/bin/vispre
STAMP := $(VENV)/.vispre-installed
RUNS ?= runs
QUICKSTART_CONFIG ?= configs/mae/vit_tiny_fashion_mnist.yaml
QUICKSTART_EVAL ?= configs/eval/fashion_mnist_quickstart.yaml
PYTEST_ARGS ?=

.PHONY: quickstart test venv data bench clean

venv: $(STAMP)

# Re-installs only when a requirements file or setup.py changed (the stamp is older than them).
$(STAMP): requirements.txt requirements-dev.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# Fashion-MNIST from the Debian package (root or sudo needed once); already present -> nothing to do.
data: venv
	@$(PY) -m vispre.data.fashion_mnist --check 2>/dev/null || { \
	  echo "Fashion-MNIST not found: installing Debian package dataset-fashion-mnist"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	  $(PY) -m vispre.data.fashion_mnist --check; }

quickstart: data
	$(VISPRE) fit --config $(QUICKSTART_CONFIG) --run_name quickstart --runs_dir $(RUNS)
	$(VISPRE) eval "$$(ls -td $(RUNS)/quickstart/version_* | head -1)" --config $(QUICKSTART_EVAL)

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(RUNS) .pytest_cache
