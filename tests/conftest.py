import pathlib

import pytest


def pytest_collection_modifyitems(config, items):
    # Everything under tests/triton/ is a Triton test: CI runs it in its own process with
    # TRITON_INTERPRET=1 set before import (see Makefile `test`).
    for item in items:
        if "triton" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache_in_tmp(tmp_path_factory):
    # Pipeline.sample(engine="auto") caches ONNX exports (fastddpm.pipelines.engines.cache_dir); keep
    # the test suite's out of the user's ~/.cache.
    import os

    old = os.environ.get("FASTDDPM_CACHE")
    os.environ["FASTDDPM_CACHE"] = str(tmp_path_factory.mktemp("fastddpm-cache"))
    yield
    if old is None:
        os.environ.pop("FASTDDPM_CACHE", None)
    else:
        os.environ["FASTDDPM_CACHE"] = old
