"""CUDA-only checks: no host sync inside a step, CUDA-graph capture, auto dispatch, a tensor
large enough for many programs. Skip cleanly without a CUDA device."""
import torch

import fastddpm
from fastddpm.kernels import reference as R

from _triton_helpers import assert_close32, needs_cuda, to_numpy

pytestmark = needs_cuda
S = fastddpm.Schedule.cosine(1000)


def test_auto_sends_cuda_tensors_to_triton():
    x = torch.randn(8, 3, 4, device="cuda")
    y = fastddpm.ddpm_step(S, x, x, 500, seed=1)
    assert y.is_cuda
    assert_close32(y, R.ddpm_step(S.alphas_cumprod, to_numpy(x), to_numpy(x), 500, 499, seed=1))


def test_step_does_not_synchronise():
    """Tensor t/prev_t, seeds as ints: the step must not sync the host (CUDA-graph ready)."""
    x = torch.randn(16, 3, 8, 8, device="cuda")
    t = torch.full((16,), 700, device="cuda")
    p = torch.full((16,), 650, device="cuda")
    # Warm-up outside: compilation and the one-time table uploads (float64 ᾱ, float32 √ᾱ).
    fastddpm.ddpm_step(S, x, x, t, prev_t=p, seed=3, stream=4)
    fastddpm.q_sample(S, x, t, seed=3, stream=6)
    fastddpm.ddpm_step(S, x, x, 5, seed=3, stream=7)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fastddpm.ddpm_step(S, x, x, t, prev_t=p, seed=3, stream=4)
        fastddpm.ddim_step(S, x, x, t, prev_t=p, eta=0.5, seed=3, stream=5)
        fastddpm.q_sample(S, x, t, seed=3, stream=6)
        fastddpm.ddpm_step(S, x, x, 5, seed=3, stream=7)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_step_captures_in_a_cuda_graph():
    x = torch.randn(4, 2, 16, device="cuda")
    m = torch.randn_like(x)
    t = torch.full((4,), 300, device="cuda")
    seed = torch.tensor(11, device="cuda")
    out = torch.empty_like(x)
    fastddpm.ddpm_step(S, x, m, t, seed=seed, stream=2, out=out)  # warm-up: compile, tables
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fastddpm.ddpm_step(S, x, m, t, seed=seed, stream=2, out=out)
    t.fill_(100)
    seed.fill_(2**32 - 7)
    graph.replay()
    torch.cuda.synchronize()
    ref = R.ddpm_step(S.alphas_cumprod, to_numpy(x), to_numpy(m), 100, 99, seed=2**32 - 7, stream=2)
    assert_close32(out, ref)


def test_many_programs_with_tail():
    """3·2²⁰ + 5 elements: many BLOCK-sized programs, a ragged tail, an unaligned offset."""
    n = 3 * 2**20 + 5
    x = torch.randn(n, 1, device="cuda")
    # A model output independent of x_t (the same tensor for both makes x̂0 cancel exactly in
    # the reference but not under the FMA contraction Triton applies at t = 999 cosine).
    m = torch.randn(n, 1, device="cuda")
    y = fastddpm.ddpm_step(S, x, m, 999, seed=2, stream=3, offset=2**32 + 1)
    ref = R.ddpm_step(S.alphas_cumprod, to_numpy(x), to_numpy(m), 999, 998, seed=2, stream=3,
                      offset=2**32 + 1)
    assert_close32(y, ref)
