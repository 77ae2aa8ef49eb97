# Two commands for a fresh machine (Debian, Python 3.11, root, no GPU, no Hub access):
#   make demo   - creates .venv, installs relzoo, trains CrossTransformers with SimCLR episodes on Fashion-MNIST and
#                 evaluates 5-way 1/5-shot on unseen classes and on digits, with 95% CIs (< 10 min on 2 cores)
#   make test   - creates .venv, installs relzoo[dev], runs ruff and the whole test suite (slow tests included)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo demo-san demo-hsnet app browser compiler test test-fast lint bench bench-ctx bench-hsnet bench-plugins \
	fewshot-table plugin-table fashion-mnist clean

# setup.py builds relzoo._san_cpu (SAN's CPU kernels) from relzoo/csrc: editing them reinstalls (rebuilds)
$(VENV)/.installed: pyproject.toml setup.py $(wildcard relzoo/csrc/*)
	$(MAKE) --no-print-directory browser compiler
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tests/conformance/fetch_upstream.py   # timm's and transformers' own test suites (sdists, from PyPI)
	touch $@

install: $(VENV)/.installed

# headless Chromium + its WebDriver (Debian packages) for the app's browser tests
browser:
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium / chromedriver missing: run 'apt-get install -y chromium chromium-driver' as root" >&2; \
	  exit 1; fi; \
	fi

# a C++ compiler and Python's headers build SAN's CPU kernels (Debian packages g++, python3-dev); without them
# relzoo installs and runs its PyTorch operators, and tests/test_san_native.py says the kernels are missing
compiler:
	@missing=""; command -v c++ >/dev/null 2>&1 || missing="g++"; \
	$(PYTHON) -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing to build SAN's CPU kernels: $$missing (apt-get install -y $$missing as root)" >&2; fi; \
	fi

# Fashion-MNIST comes from Debian's package `dataset-fashion-mnist` (idx files in /usr/share/datasets/fashion-mnist)
fashion-mnist:
	@if [ ! -f $(FASHION) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST missing: run 'apt-get install -y dataset-fashion-mnist' as root" >&2; exit 1; fi; \
	fi

demo: install fashion-mnist
	$(PY) scripts/train_fewshot.py --output_dir outputs/demo --attention_maps 3 --overwrite   # a rerun replaces it

demo-san: install fashion-mnist
	$(PY) scripts/train_classifier.py --dataset fashion_mnist --output_dir outputs/demo-san --overwrite

# HSNet on the built-in composites: resnet18 pretrained on the training classes' canvases (stage 0), then frozen
demo-hsnet: install fashion-mnist
	$(PY) scripts/finetune_hsnet.py --backbone resnet18 --pretrain_backbone_steps 1500 --max_steps 1000 \
	  --checkpoint_every 500 --pictures 4 --output_dir outputs/demo-hsnet --overwrite

# the browser app on 127.0.0.1 with the demo models (trained first when absent: about 10 + 15 minutes on 2 cores)
app: install
	@if [ ! -f outputs/demo/model/config.json ]; then echo "training the few-shot classification demo (make demo)"; \
	  $(MAKE) --no-print-directory demo; fi
	@if [ ! -f outputs/demo-hsnet/model/config.json ]; then echo "training the segmentation demo (make demo-hsnet)"; \
	  $(MAKE) --no-print-directory demo-hsnet; fi
	$(VENV)/bin/relzoo app --segmentation-model outputs/demo-hsnet/model --classification-model outputs/demo/model \
	  --port $${PORT:-7860}

fewshot-table: install fashion-mnist
	$(PY) scripts/fewshot_table.py --output_dir outputs/fewshot_table

# baseline vs BatchFormer V1 / V2 on Fashion-MNIST-LT, baseline vs API-Net on Fashion-MNIST (same budget and seed)
plugin-table: install fashion-mnist
	$(PY) scripts/plugin_table.py --output_dir outputs/plugin_table

lint: install
	$(PY) -m ruff check relzoo scripts tests

test: install lint
	$(PY) -m pytest -q --durations=15

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) scripts/benchmark.py san

bench-ctx: install
	$(PY) scripts/benchmark.py ctx

bench-hsnet: install
	$(PY) scripts/benchmark.py hsnet

bench-plugins: install
	$(PY) scripts/benchmark.py plugins

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
