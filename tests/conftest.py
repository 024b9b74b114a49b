import pathlib

import pytest


def pytest_collection_modifyitems(config, items):
    # Everything under tests/triton/ is a Triton test: CI runs it in its own process with
    # TRITON_INTERPRET=1 set before import (see Makefile `test`).
    for item in items:
        if "triton" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.triton)
