"""pytest-benchmark micro benchmarks of randn, q_sample and ddpm_step at 2²² float32 elements.

    pytest bench/test_kernels_cpu.py --benchmark-enable --benchmark-only

Each result carries elements/s and the fraction of the measured copy bandwidth (np.copyto of the
same size) in ``extra_info``; `python bench/kernels_cpu.py` prints the same cases side by side.
"""
import pytest

from kernels_cpu import LOG2N, bytes_per_element, cases, copy_bandwidth, machine

N = 2**LOG2N
CASES = cases(N)
PARAMS = [(op, impl) for op, impls in CASES.items() for impl in impls]


@pytest.fixture(scope="module")
def copy_bytes_per_s():
    return copy_bandwidth(N)


@pytest.mark.parametrize("op,impl", PARAMS, ids=[f"{op}-{impl}".replace(' ', '_').replace(',', '') for op, impl in PARAMS])
def test_kernel(benchmark, copy_bytes_per_s, op, impl):
    fn = CASES[op][impl]
    fn()  # compile / warm up outside the timing
    benchmark.group = op
    benchmark(fn)
    sec = benchmark.stats.stats.min
    benchmark.extra_info.update({
        "elements": N,
        "elements_per_s": N / sec,
        "bytes_per_element": bytes_per_element(op),
        "fraction_of_copy_bandwidth": bytes_per_element(op) * N / sec / copy_bytes_per_s,
        "copy_GBps": copy_bytes_per_s / 1e9,
        "machine": machine(),
    })
