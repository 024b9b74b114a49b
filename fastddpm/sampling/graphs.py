"""CUDA graphs of the sampling loop: capture a run's calls (network + fused update) once, replay per batch.

On CUDA nothing about a call is a host argument (TorchStepper keeps the call index, t, the
noise counter and the seed in device memory), so a batch's K calls replay as ⌊K/GRAPH_STEPS⌋
graphs of GRAPH_STEPS calls and one of K mod GRAPH_STEPS, with no host work between calls.
Graphs are cached per model (dropped with it) and per (device, batch, shape, plan, dtype, …)
across calls; a model that cannot be captured runs eagerly after one warning.
"""
from __future__ import annotations

import warnings
import weakref

# One replay call per 20 calls keeps the host's share per call small without capturing all K
# calls (capture time and graph size grow with the calls held). Not yet measured on a GPU
# (docs/triton.md).
GRAPH_STEPS = 20

# Captured graphs, per model (dropped with it) and per (device, batch, shape, plan, dtype, …).
_GRAPHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def clear_graph_cache() -> None:
    """Drop every cached CUDA graph (and the device buffers it holds)."""
    _GRAPHS.clear()


def _key(run, B: int, shift: int):
    p = run.plan
    weights = tuple(t.data_ptr() for t in run.model.parameters()) + tuple(t.data_ptr() for t in run.model.buffers())
    cond = run.cond  # the guidance table lives in the captured stepper; labels are refilled per batch
    guidance = (tuple(cond.modes), cond.scale, cond.rescale, cond.label_set is not None)
    return (str(run.device), B, run.shape, p.t.tobytes(), p.coef.tobytes(), p.table.push.tobytes(),
            p.table.variance, p.clip, str(run.torch_dtype), run.check_finite, shift, weights, guidance)


def graphed(run, B: int, shift: int):
    """The captured graphs of ``run`` (a SamplingRun) for batches of B samples with offset & 3 ==
    shift, or None when capture failed (then the loop runs eagerly; warned once)."""
    per_model = _GRAPHS.setdefault(run.model, {})
    key = _key(run, B, shift)
    if key in per_model:
        return per_model[key]
    try:
        per_model[key] = _capture(run, B, shift)
    except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager
        warnings.warn(f"CUDA graph capture of the sampling step failed ({type(exc).__name__}: {exc}); "
                      "sampling this model eagerly (pass cuda_graph=False to skip the attempt)",
                      RuntimeWarning, stacklevel=5)
        per_model[key] = None
    return per_model[key]


def _capture(run, B: int, shift: int) -> dict:
    """Static buffers and their own TorchStepper (every table built here, before capture);
    graphs of GRAPH_STEPS calls and of K mod GRAPH_STEPS calls."""
    import torch

    from .steppers import TorchStepper

    K = run.plan.num_steps
    st = TorchStepper(run.plan, run.device, run.torch_dtype, run.seed, "triton", run.cond)
    doubled = run.cond.doubled  # a guided run: x is the first half of the 2B-row network input
    xx = torch.zeros((2 * B if doubled else B,) + run.shape, dtype=run.torch_dtype, device=run.device)
    x, mirror = (xx[:B], xx[B:]) if doubled else (xx, None)
    xin = xx if doubled else None
    labels = run.torch_labels(0, B)  # a static buffer: replay() writes each batch's labels into it
    state = st.state(x)
    bad = torch.full((), -1, dtype=torch.int64, device=run.device)
    # Warm up on a side stream (Triton compile, cuBLAS handles, lazy init) with one checked
    # call; the buffers are reset by every batch, so it leaves nothing behind.
    st.begin(x, state, shift, mirror)
    side = torch.cuda.Stream(device=run.device)
    side.wait_stream(torch.cuda.current_stream(run.device))
    with torch.cuda.stream(side):
        run._step(st, x, state, bad, 0, xin=xin, labels=labels)
    torch.cuda.current_stream(run.device).wait_stream(side)
    torch.cuda.synchronize(run.device)
    graphs, pool = {}, None
    for steps in sorted({min(K, GRAPH_STEPS), K % GRAPH_STEPS} - {0}, reverse=True):
        st.begin(x, state, shift, mirror)  # ctl[0] in range while capturing (nothing runs)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=pool):
            for _ in range(steps):
                run._step(st, x, state, bad, xin=xin, labels=labels)
        pool = g.pool()
        graphs[steps] = g
    return {"stepper": st, "x": x, "state": state, "bad": bad, "graphs": graphs, "mirror": mirror,
            "labels": labels}


def replay(run, graphed_, s0: int, s1: int, offset: int, out, pbar):
    """Samples s0 … s1−1 of ``run`` from its captured graphs (into ``out`` when given)."""
    K, B = run.plan.num_steps, s1 - s0
    st, x, state, bad = graphed_["stepper"], graphed_["x"], graphed_["state"], graphed_["bad"]
    if graphed_["labels"] is not None:  # this batch's labels into the captured buffer (device copy)
        graphed_["labels"].copy_(run.torch_labels(s0, s1))
    st.begin(x, state, offset, graphed_["mirror"])
    bad.fill_(-1)
    done = 0
    while done < K:
        steps = min(GRAPH_STEPS, K - done)
        graphed_["graphs"][steps].replay()
        done += steps
        if pbar is not None:
            pbar.update(B * steps)
    run._raise_if_nonfinite(bad, s0, s1)
    if out is None:
        import torch

        return x.float() if run.torch_dtype == torch.bfloat16 else x.clone()
    out.copy_(x)
    return out
