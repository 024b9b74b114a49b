# The two commands of the README. Each sets up .venv on its own from a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo venv bench

venv:
	VENV=$(VENV) ./scripts/bootstrap.sh

# Everything but the Triton tests, then the Triton tests in their own process: compiled on a
# machine with an NVIDIA GPU, else under the interpreter (TRITON_INTERPRET=1 set before
# triton is imported; with it set, Triton would interpret CUDA tensors too, so not on a GPU).
test: venv
	$(BIN)/python -m pytest -m "not triton" tests
	if nvidia-smi -L >/dev/null 2>&1; then $(BIN)/python -m pytest -m triton tests; \
	else TRITON_INTERPRET=1 $(BIN)/python -m pytest -m triton tests; fi

demo: venv
	$(BIN)/fastddpm demo

bench: venv
	$(BIN)/python -m pytest bench --benchmark-enable --benchmark-only
