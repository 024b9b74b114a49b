"""Fixtures of the Triton tests: the interpreter on CPU tensors (TRITON_INTERPRET=1 set before
triton is imported, as `make test` does) and CUDA when present. Without either they skip."""
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _triton_helpers import DEVICES  # noqa: E402


@pytest.fixture(params=DEVICES or [pytest.param("none", marks=pytest.mark.skip(
    reason="no CUDA device and TRITON_INTERPRET is not set (run with TRITON_INTERPRET=1)"))])
def device(request):
    return torch.device(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    # Schedule.tables hands read-only NumPy tables to torch (harmless: they are copied).
    here = pathlib.Path(__file__).parent
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"))
