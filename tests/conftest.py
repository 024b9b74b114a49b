import os
import pathlib

import pytest


# Seconds each of the longest test modules took in a serial `make test` (2-core AMD EPYC, family 25
# model 17, load average 2.6, `pytest --durations`; issue 28): the whole run was 1017 s, and these
# are 860 s of it. Under pytest-xdist (`make test`: -n auto --dist loadfile, a module per work unit)
# the longest modules start first, one per worker, so that the longest one is not queued behind
# another (see _order_for_xdist).
MODULE_SECONDS = {
    "test_quality_digits.py": 467,   # trains the default digits UNet: the critical path
    "test_quality.py": 216,          # butterfly default recipe 156 s, the two 1-D models 60 s
    "test_readme_fresh_venv.py": 115,  # make venv into a fresh venv, then the CI demo
    "test_distributed.py": 100,      # torchrun jobs (+ two guided ones, issue 25: 83 s alone at load 6)
    "test_packaging.py": 30,         # builds the sdist and wheel, runs the CLI in a fresh venv
    "test_diffusers_cli.py": 30,
    "test_refusals.py": 20,
    "test_demo.py": 15,
    # issue 25, each module alone at load average 5–7 with a cold Numba cache (the guided kernel
    # variants compile on first use; warm, the first four together take 32 s on two workers):
    "test_guidance.py": 136,         # whole guided runs against diffusers' DiT loop and the reference
    "test_onnx_conditional.py": 90,
    "test_diffusers_conditional.py": 72,
    "test_labels.py": 43,            # the kill harness over a labelled run, two subprocesses
}


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One OpenMP and one Numba thread per worker (inherited by the processes tests start; an
        # explicit setting is kept): N workers already fill N cores, and torch's spinning OpenMP
        # pool beside another busy process ran 10-14x slower than one thread (docs/training.md,
        # "Performance"). Set before torch and numba are imported (both read them at import). The
        # tests of 1 vs 2 Numba threads start their own processes with NUMBA_NUM_THREADS set.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("NUMBA_NUM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    # Everything under tests/triton/ is a Triton test: CI runs it in its own process with
    # TRITON_INTERPRET=1 set before import (see Makefile `test`).
    for item in items:
        if "triton" in pathlib.Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.triton)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        items[:] = _order_for_xdist(items, workers)


def _order_for_xdist(items, workers: int):
    """Modules in the order xdist's loadfile scheduler should hand them out.

    It gives each worker one module, then one more each, then the next module to whichever worker
    finishes one. So: the `workers` longest modules first (one per worker), then `workers` short
    ones (the second module each worker holds, run after its long one), then the remaining long
    modules, longest first, then the rest in collection order. Every worker computes the same order
    (xdist requires identical collections)."""
    modules: dict[str, list] = {}
    for item in items:
        modules.setdefault(pathlib.Path(str(item.fspath)).name, []).append(item)
    heavy = sorted((m for m in modules if m in MODULE_SECONDS), key=lambda m: -MODULE_SECONDS[m])
    light = [m for m in modules if m not in MODULE_SECONDS]
    order = heavy[:workers] + light[:workers] + heavy[workers:] + light[workers:]
    return [item for m in order for item in modules[m]]


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache_in_tmp(tmp_path_factory):
    # Pipeline.sample(engine="auto") caches ONNX exports (fastddpm.pipelines.engines.cache_dir); keep
    # the test suite's out of the user's ~/.cache (one per xdist worker: a session per worker).

    old = os.environ.get("FASTDDPM_CACHE")
    os.environ["FASTDDPM_CACHE"] = str(tmp_path_factory.mktemp("fastddpm-cache"))
    # engine="auto" picks a runtime by timing it (issue 26); the suite pins it to onnx (what auto
    # did before) so results do not depend on load. tests/test_net_runtimes.py unsets it.
    old_runtime = os.environ.get("FASTDDPM_RUNTIME")
    os.environ["FASTDDPM_RUNTIME"] = "onnx"
    yield
    if old_runtime is None:
        os.environ.pop("FASTDDPM_RUNTIME", None)
    else:
        os.environ["FASTDDPM_RUNTIME"] = old_runtime
    if old is None:
        os.environ.pop("FASTDDPM_CACHE", None)
    else:
        os.environ["FASTDDPM_CACHE"] = old
