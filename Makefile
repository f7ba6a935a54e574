# `make test` / `make xor` set up .venv (the package with its dev extra) on first use.
# On a machine whose Python already has the packages (e.g. the GPU machine), pass PYTHON=python3
# to the *-gpu and bench targets: they run with that interpreter and install nothing.
VENV := .venv
VENV_PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: test test-gpu xor explain-shot lint bench bench-cpu clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --quiet --upgrade pip
	$(VENV_PY) -m pip install --quiet -e '.[dev]'
	touch $@

test: $(VENV)/.installed
	$(VENV_PY) -m pytest -q

# Options go through XOR_ARGS, e.g. make xor XOR_ARGS="--explain --plot loss.png"
xor: $(VENV)/.installed
	$(VENV_PY) examples/xor.py $(XOR_ARGS)

# The XOR page of `xor.py --explain --html` in headless Chromium (Debian: apt-get install chromium),
# screenshot at the last recorded epoch, for the README.
explain-shot: $(VENV)/.installed
	$(VENV_PY) examples/explain_shot.py docs/xor-explain.png

# An MLP on scikit-learn's bundled 8x8 digits (no download): softmax cross-entropy, Adam, >= 95% test accuracy.
# Options go through DIGITS_ARGS, e.g. make digits DIGITS_ARGS="--device cpu --epochs 10 --plot digits.png"
.PHONY: digits
digits: $(VENV)/.installed
	$(VENV_PY) examples/digits.py $(DIGITS_ARGS)

# A small CNN on the same digits (conv, batch norm, max pool, dropout, OneCycleLR): >= 98.5% test accuracy.
# Options go through DIGITS_CNN_ARGS, e.g. make digits-cnn DIGITS_CNN_ARGS="--device cpu --plot digits_cnn.png"
.PHONY: digits-cnn
digits-cnn: $(VENV)/.installed
	$(VENV_PY) examples/digits_cnn.py $(DIGITS_CNN_ARGS)

# Newton-CG with Hessian-vector products vs SGD on XOR, and a gradient penalty trained with Adam.
# Options go through SECOND_ORDER_ARGS, e.g. make second-order SECOND_ORDER_ARGS="--device cpu"
.PHONY: second-order
second-order: $(VENV)/.installed
	$(VENV_PY) examples/second_order.py $(SECOND_ORDER_ARGS)

lint: $(VENV)/.installed
	$(VENV_PY) -m ruff check tinygrad_gpu tests examples benchmarks

# The whole suite with the GPU as default device, plus the kernel-twin test (needs CuPy and a GPU).
test-gpu:
	TINYGRAD_GPU_DEVICE=cuda $(PYTHON) -m pytest -q

# Benchmarks against PyTorch and hand-written NumPy/CuPy code (benchmarks/README.md); not tests.
# Options go through BENCH_ARGS, e.g. make bench PYTHON=python3 BENCH_ARGS="--quick --json bench.json".
bench:
	PYTHONPATH=. $(PYTHON) benchmarks/run.py $(BENCH_ARGS)

bench-cpu:
	PYTHONPATH=. $(PYTHON) benchmarks/run.py --device cpu $(BENCH_ARGS)

# Data parallelism over NCCL on every GPU of this machine (2 to 4 used; needs >= 2 GPUs).
.PHONY: test-multigpu bench-multigpu
test-multigpu:
	NCCL_NVLS_ENABLE=0 $(PYTHON) -m pytest -q -m multigpu tests/test_multigpu.py

# Weak scaling of DistributedDataParallel vs PyTorch DDP, all-reduce bandwidth vs raw cupyx.distributed;
# writes benchmarks/results/multigpu-<n>gpu.json. Options go through BENCH_ARGS (e.g. --steps 20).
bench-multigpu:
	NCCL_NVLS_ENABLE=0 PYTHONPATH=. $(PYTHON) benchmarks/multigpu.py $(BENCH_ARGS)

# compute-sanitizer over every kernel row (check_twins), the kernel, edge-size and fusion tests
# (memcheck), and the reductions, which use shared memory (racecheck); needs a GPU and the CUDA tools.
SANITIZE := TINYGRAD_GPU_DEVICE=cuda compute-sanitizer --error-exitcode 1
SANITIZED_TESTS := tests/test_kernel_twins.py tests/test_kernel_edge_sizes.py tests/test_fusion.py \
	tests/test_fusion_robust.py
.PHONY: sanitize
sanitize:
	$(SANITIZE) --tool memcheck $(PYTHON) -m tinygrad_gpu.check_twins
	$(SANITIZE) --tool memcheck $(PYTHON) -m pytest -q -p no:cacheprovider $(SANITIZED_TESTS) -k "not past_two_gigabytes"
	$(SANITIZE) --tool racecheck $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_kernel_edge_sizes.py \
		-k "not past_two_gigabytes"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
