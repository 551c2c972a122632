# Two commands do all the set-up on a fresh machine (both idempotent):
#   make quickstart   venv + install + Fashion-MNIST (+ shards) + SimCLR pretraining + evaluation report
#   make test         venv + install + Fashion-MNIST + the test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
VISPRE := $(VENV)/bin/vispre
STAMP := $(VENV)/.vispre-installed
RUNS ?= runs
# The recipe with the best pooled embedding of the ablation (docs/ablation.md). MAE, one config away:
#   make quickstart QUICKSTART_CONFIG=configs/mae/vit_tiny_fashion_mnist.yaml QUICKSTART_DATA=configs/data/fashion_mnist_wds.yaml
QUICKSTART_CONFIG ?= configs/simclr/vit_p14_max_fashion_mnist.yaml
QUICKSTART_EVAL ?= configs/eval/fashion_mnist_quickstart.yaml
# The quickstart streams its training images from webdataset shards written once from the Fashion-MNIST files
# (the path configs/data/fashion_mnist_wds*.yaml read; _two_views: SimCLR's views). QUICKSTART_DATA= trains from the
# in-memory arrays instead.
QUICKSTART_DATA ?= configs/data/fashion_mnist_wds_two_views.yaml
QUICKSTART_SHARDS := data/fashion_mnist_wds
PYTEST_ARGS ?=

.PHONY: quickstart test venv data clean

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
	$(if $(QUICKSTART_DATA),$(VISPRE) shards fashion-mnist $(QUICKSTART_SHARDS))
	$(VISPRE) fit --config $(QUICKSTART_CONFIG) $(if $(QUICKSTART_DATA),--config $(QUICKSTART_DATA)) \
	  --run_name quickstart --runs_dir $(RUNS)
	$(VISPRE) eval "$$(ls -td $(RUNS)/quickstart/version_* | head -1)" --config $(QUICKSTART_EVAL)

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(RUNS) .pytest_cache
