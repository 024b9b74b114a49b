# The two commands of the README. Each sets up .venv on its own from a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo venv bench

venv:
	VENV=$(VENV) ./scripts/bootstrap.sh

# Everything but the Triton tests, then the Triton tests in their own process: compiled on a
# machine with an NVIDIA GPU, else under the interpreter (TRITON_INTERPRET=1 set before
# triton is imported; with it set, Triton would interpret CUDA tensors too, so not on a GPU).
# The first part runs in pytest-xdist workers, one per core (at most 4: each holds torch, ~0.5 GB),
# a test module per work unit so that module fixtures are built once; tests/conftest.py starts the
# longest modules first. The Triton part (25 s) is not worth the workers' start-up.
test: venv
	$(BIN)/python -m pytest -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder -m "not triton" tests
	if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/python -m pytest -m triton tests; \
	else TRITON_INTERPRET=1 $(BIN)/python -m pytest -m triton tests; fi

demo: venv
	$(BIN)/fastddpm demo

bench: venv
	$(BIN)/python -m pytest bench --benchmark-enable --benchmark-only

# On the bare GPU machine (its own torch/triton, no network): scripts/gpu_check.sh, results in
# $(OUT) (default gpu-results/). `make gpu-check-dry` runs its Python parts on the CPU.
.PHONY: gpu-check gpu-check-dry
gpu-check:
	./scripts/gpu_check.sh

gpu-check-dry:
	./scripts/gpu_check.sh --dry-run
