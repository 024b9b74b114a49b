# The two commands of the README. Each sets up .venv on its own from a fresh clone.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test demo venv bench

venv:
	VENV=$(VENV) ./scripts/bootstrap.sh

# Everything but the Triton tests, then the Triton tests in their own process with the
# interpreter switched on before triton is imported (a no-op for them on a CUDA machine).
test: venv
	$(BIN)/python -m pytest -m "not triton" tests
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -m triton tests

demo: venv
	$(BIN)/fastddpm demo

bench: venv
	$(BIN)/python -m pytest bench --benchmark-enable --benchmark-only
