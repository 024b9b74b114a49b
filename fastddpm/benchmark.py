"""End-to-end sampling benchmark: fastddpm vs a diffusers scheduler loop vs a plain torch loop.

Everything runs side by side in one process on the same network, so the ratios are what to
read; absolute numbers depend on the machine (named in the table). Sections:

- ``throughput``: n samples with ddpm-``steps`` (default 100,000 × 1000) — fastddpm.sample,
  diffusers ``DDPMScheduler`` (``step`` with a torch generator), a plain torch loop with the
  same update written in torch ops. Same batch size for all three.
- ``tiny``: n = 1, µs per step (per-step overhead: network call + update).
- ``quality``: sliced Wasserstein distance to the data for ddpm-1000, ddpm-250, ddim-50,
  ddim-20, dpmpp2m-20, dpmpp2m-10 with wall time (needs a trained checkpoint and
  fastddpm.metrics).
- ``kernel``: one fused ddpm_step over 2^22 elements — fastddpm (numba) vs diffusers
  ``DDPMScheduler.step`` vs torch eager — and the measured copy bandwidth, with GB/s and the
  fraction of copy bandwidth (12 bytes per element: read x_t and ε̂, write x_prev).
- ``memory``: peak RSS of ``sample(out=…)`` for n = 10^5 and 10^6 (subprocesses), unguided and with
  classifier-free guidance (10 classes, balanced labels written beside the samples, w = 3).
- ``batch``: fastddpm throughput vs batch size (how the CPU default was chosen).

``run(...)`` returns rows (dicts); ``format_rows`` prints them as tables; ``write_rows`` writes
them. The command line is ``fastddpm bench`` (fastddpm/cli/bench.py; ``bench/throughput.py``
runs it).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import numpy as np

import fastddpm

from ._io import atomic_open, write_json
from .data import load_dataset
from .metrics import sliced_wasserstein
from .onnx_export import export_onnx
from .runtime import OnnxModel
from .sampling import make_plan, sample
from .sampling.guard import finite_check
from .sampling.options import DEFAULTS
from .machine import cpu_model  # noqa: F401 - also benchmark.cpu_model, as before
from .pipelines import Pipeline
from .sampling.steppers import HostStepper

SECTIONS = ("throughput", "tiny", "quality", "kernel", "memory", "batch")
QUALITY_CONFIGS = (("ddpm", 1000), ("ddpm", 250), ("ddim", 50), ("ddim", 20), ("dpmpp2m", 20), ("dpmpp2m", 10))


# -- machine ---------------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, cores available to this process, load, GPU name, library versions."""
    cpu = cpu_model()
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "numpy": np.__version__}
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def _sync() -> None:
    """Wait for queued GPU work: CUDA calls return before the device is done, so a clock read
    without this times the launches, not the work."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            torch.cuda.synchronize(i)


def _timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls, the device synchronised before each start and end."""
    best = float("inf")
    for _ in range(repeat):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


# -- models ----------------------------------------------------------------------------------

NETS = ("ResMLP", "MLP")


def default_model(checkpoint=None, device="cpu", net="ResMLP"):
    """(model, schedule, normalization, prediction) from ``checkpoint``, or random weights of the
    net ``fastddpm train`` builds by default for 2-d data (throughput does not depend on training):
    ``net="ResMLP"`` — fastddpm.training.DEFAULT_NET["vector"] with its v-prediction recipe
    (KIND_DEFAULTS["vector"]), what the demo trains; ``net="MLP"`` — the earlier default,
    fastddpm.nets.MLP() with ε-prediction (the numbers of older README rows)."""
    import torch

    if checkpoint:
        from .checkpoint import load

        ck = load(checkpoint, device=device)
        return ck.model, ck.schedule, ck.normalization, ck.prediction
    if net not in NETS:
        raise ValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")
    from .nets import build
    from .training import DEFAULT_NET, KIND_DEFAULTS

    torch.manual_seed(0)
    if net == "MLP":
        model, prediction = build("MLP"), "epsilon"
    else:
        name, kwargs = DEFAULT_NET["vector"]
        model, prediction = build(name, **kwargs), KIND_DEFAULTS["vector"]["prediction"]
    return model.eval().to(device), fastddpm.Schedule.linear(1000), None, prediction


def diffusers_loop(model, schedule, n, steps, batch_size, seed=0, device="cpu", shared_t=False,
                   prediction="epsilon"):
    """The loop a diffusers user writes: DDPMScheduler.set_timesteps + step(generator=…).

    The network gets t as diffusers' own models build it (``timesteps * torch.ones(B)``: a
    contiguous per-sample [B]); ``shared_t=True`` hands it a stride-0 view instead, so that a
    net keeping fastddpm's shared-t convention computes its time path once here too.
    ``model`` may also be an ``array_api == "numpy"`` model (an OnnxModel), called on NumPy
    views of the torch tensors.
    """
    import diffusers
    import torch

    sched = diffusers.DDPMScheduler(num_train_timesteps=schedule.num_steps, trained_betas=schedule.betas.tolist(),
                                    variance_type="fixed_small", clip_sample=False, prediction_type=prediction)
    sched.set_timesteps(steps)
    gen = torch.Generator(device=device).manual_seed(seed)
    net = _torch_facing(model)
    out = []
    with torch.inference_mode():
        for s0 in range(0, n, batch_size):
            b = min(batch_size, n - s0)
            x = torch.randn((b, *_shape(model)), generator=gen, device=device)
            for t in sched.timesteps:
                tb = t.to(device).expand(b) if shared_t else t.to(device) * torch.ones(b, dtype=t.dtype, device=device)
                eps = net(x, tb)
                x = sched.step(eps, t, x, generator=gen).prev_sample
            out.append(x)
    return torch.cat(out)


def _torch_facing(model):
    """model(x tensor, t tensor) → tensor, for torch modules and NumPy-API models alike."""
    if getattr(model, "array_api", None) != "numpy":
        return model
    import torch

    def call(x, t):
        return torch.from_numpy(model(x.numpy(), t.contiguous().numpy()))
    return call


def torch_loop(model, schedule, n, steps, batch_size, seed=0, device="cpu", prediction="epsilon"):
    """A plain torch DDPM loop (respaced as fastddpm's leading spacing), torch.randn noise."""
    import torch

    from .kernels.coefficients import COL, apply_row
    from .sampling import make_plan

    plan = make_plan(schedule, "ddpm", steps, prediction=prediction)
    coef = torch.as_tensor(plan.coef, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    with torch.inference_mode():
        for s0 in range(0, n, batch_size):
            b = min(batch_size, n - s0)
            x = torch.randn((b, *_shape(model)), generator=gen, device=device)
            for k, t in enumerate(plan.t.tolist()):
                eps = model(x, torch.full((b,), t, dtype=torch.int64, device=device))
                z = torch.randn(x.shape, generator=gen, device=device) if plan.coef[k, COL["yz"]] != 0 else None
                x = apply_row(coef[k], x, eps, z=z, xp=torch)[0]
            out.append(x)
    return torch.cat(out)


def side_by_side(fns: dict, rounds: int) -> dict:
    """name → list of seconds, measured in alternating rounds (load on a shared machine hits all alike)."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_timed(fn))  # synchronised on a GPU
    return times


def _shape(model):
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("the benchmark model needs a sample_shape attribute")
    return tuple(shape)


# -- sections --------------------------------------------------------------------------------

THROUGHPUT_METHODS = ("fastddpm", "fastddpm+ort", "diffusers", "diffusers+ort", "diffusers shared-t",
                      "diffusers+ort shared-t", "torch")


def bench_throughput(model, schedule, n, steps, batch_size=None, device="cpu", methods=THROUGHPUT_METHODS,
                     rounds=3, prediction="epsilon"):
    """Whole DDPM loops side by side in alternating rounds; medians, ratios to diffusers on the same network.

    ``fastddpm`` / ``diffusers``: the torch network; ``+ort``: the same network exported to ONNX
    in onnxruntime. ``diffusers`` passes t per sample, as diffusers' models do; ``shared-t``
    rows pass a stride-0 t ([B] view of one t; the ORT twin then runs it as [1]), so the
    network's time path runs once there too — the ratio to those is the engine's alone.
    Every loop treats the output as ``prediction`` (diffusers: ``prediction_type``).
    """
    if batch_size is None:  # the loop's default, the same for all three
        batch_size = DEFAULTS.resolved_batch_size(int(np.prod(_shape(model))), n, str(device).split(":")[0])
    twin = _onnx_twin(model, schedule, prediction) if device == "cpu" else None
    pred = prediction
    fns = {
        "fastddpm": lambda: sample(model, schedule, n, steps=steps, batch_size=batch_size, device=device,
                                   prediction=pred, progress=False),
        "fastddpm+ort": lambda: sample(twin, schedule, n, steps=steps, batch_size=batch_size, prediction=pred,
                                       progress=False),
        "diffusers": lambda: diffusers_loop(model, schedule, n, steps, batch_size, device=device, prediction=pred),
        "diffusers+ort": lambda: diffusers_loop(twin, schedule, n, steps, batch_size, prediction=pred),
        "diffusers shared-t": lambda: diffusers_loop(model, schedule, n, steps, batch_size, device=device,
                                                     shared_t=True, prediction=pred),
        "diffusers+ort shared-t": lambda: diffusers_loop(twin, schedule, n, steps, batch_size, shared_t=True,
                                                         prediction=pred),
        "torch": lambda: torch_loop(model, schedule, n, steps, batch_size, device=device, prediction=pred),
    }
    methods = [m for m in methods if twin is not None or "ort" not in m]
    try:
        import diffusers  # noqa: F401
    except ImportError:
        methods = [m for m in methods if "diffusers" not in m]
    # warm-up: JIT compiles, lazy init, onnxruntime's first-run work
    sample(model, schedule, min(n, 64), steps=2, spacing="linspace", device=device, progress=False)
    if twin is not None:
        sample(twin, schedule, min(n, 64), steps=2, spacing="linspace", progress=False)
    times = side_by_side({name: fns[name] for name in methods}, rounds)
    rows = []
    for name in methods:
        sec = float(np.median(times[name]))
        rows.append({"section": "throughput", "name": name, "net": type(model).__name__, "prediction": prediction,
                     "n": n, "steps": steps, "batch_size": batch_size, "seconds": sec, "samples_per_s": n / sec, "us_per_step": sec / steps * 1e6,
                     "rounds": rounds})
    med = {r["name"]: r["seconds"] for r in rows}
    for r in rows:
        ort = "ort" in r["name"]
        ref = "diffusers+ort" if ort else "diffusers"
        if ref in med and r["name"].startswith("fastddpm"):
            r["x_vs_diffusers"] = med[ref] / r["seconds"]
            shared = ref + " shared-t"
            if shared in med:
                r["x_vs_diffusers_shared_t"] = med[shared] / r["seconds"]
    return rows


_ONNX_TWINS: dict = {}


def _onnx_twin(model, schedule, prediction="epsilon"):
    """The same network exported to ONNX and run in onnxruntime (the CPU default of Pipeline), or None
    when onnx/onnxruntime are not installed. Exported once per model per process."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    key = (id(model), prediction)
    if key not in _ONNX_TWINS:
        import tempfile

        path = os.path.join(tempfile.mkdtemp(prefix="fastddpm-bench-"), "model.onnx")
        export_onnx(model, path, sample_shape=_shape(model), schedule=schedule, prediction=prediction)
        _ONNX_TWINS[key] = OnnxModel(path, ["CPUExecutionProvider"])
    return _ONNX_TWINS[key]


class _NullNet:
    """A NumPy-API network that costs nothing: ``bind_batch`` hands the loop one zeros buffer
    per step (as the ONNX Runtime model hands its bound output), so ``sample`` with it times
    the engine alone — per-run set-up, the loop, the NaN guard, the update kernel."""

    array_api = "numpy"

    def __init__(self, shape):
        self.sample_shape = tuple(shape)

    def __call__(self, x, t):
        return np.zeros_like(x)

    def bind_batch(self, x, timesteps):
        out = np.zeros_like(x)
        return lambda k: out


def bench_tiny(model, schedule, steps=1000, device="cpu", rounds=7, prediction="epsilon"):
    """n = 1: µs per step of the whole loop and of its network calls alone, side by side.

    The engine's overhead per step is (loop − network calls) / steps. Network calls only are
    made the cheapest way the engine could make them: torch — the module on a fixed x with
    stride-0 t views under one inference_mode; ORT — ``bind_batch`` (IO binding, t [1]). That
    difference of two noisy times is checked by a direct one: the whole loop with a network
    that costs nothing (:class:`_NullNet`; per-run set-up included). Also timed alone (warm,
    in a tight loop): the fused update call (``HostStepper.begin``'s step) and the NaN guard.
    """
    import torch

    shape = _shape(model)
    plan = make_plan(schedule, "ddpm", steps, prediction=prediction)
    ts = plan.t.tolist()
    x = torch.zeros((1, *shape), device=device)
    tv = [torch.full((1,), t, dtype=torch.int64, device=device).expand(1) for t in ts]

    def torch_net():
        with torch.inference_mode():
            for k in range(steps):
                model(x, tv[k])
    fns = {"fastddpm": lambda: sample(model, schedule, 1, steps=steps, device=device, prediction=prediction,
                                      progress=False),
           "network calls only": torch_net}
    twin = _onnx_twin(model, schedule, prediction) if device == "cpu" else None
    if twin is not None:
        xn = np.zeros((1, *shape), np.float32)

        def ort_net():
            net = twin.bind_batch(xn, ts)
            for k in range(steps):
                net(k)
        fns["fastddpm+ort"] = lambda: sample(twin, schedule, 1, steps=steps, prediction=prediction, progress=False)
        fns["onnx network calls only"] = ort_net
    null = _NullNet(shape)
    fns["fastddpm, null network (engine alone)"] = lambda: sample(null, schedule, 1, steps=steps,
                                                                  prediction=prediction, progress=False)
    for fn in fns.values():
        fn()  # warm-up
    times = side_by_side(fns, rounds)
    med = {name: float(np.median(v)) for name, v in times.items()}

    stepper = HostStepper(plan, "numba", 0, np.float32)
    xs, ms = np.zeros((1, *shape), np.float32), np.zeros((1, *shape), np.float32)
    step = stepper.begin(xs, 0)
    finite = finite_check(ms)
    parts = {"update call (HostStepper.begin step)": lambda: [step(k, ms) for k in range(steps)],
             "NaN guard call": lambda: [finite(ms) for _ in range(steps)]}
    for fn in parts.values():
        fn()
    part_times = side_by_side(parts, rounds)
    rows = []
    for name, sec in med.items():
        row = {"section": "tiny", "name": name, "n": 1, "steps": steps, "seconds": sec, "us_per_step": sec / steps * 1e6}
        if name.startswith("fastddpm") and "null" not in name:
            net = med["onnx network calls only" if "ort" in name else "network calls only"]
            row["engine_us_per_step"] = (sec - net) / steps * 1e6
        rows.append(row)
    for name, v in part_times.items():
        rows.append({"section": "tiny", "name": name + ", alone", "n": 1, "steps": steps,
                     "seconds": float(np.median(v)), "us_per_step": float(np.median(v)) / steps * 1e6})
    return rows


def bench_quality(checkpoint, dataset="butterfly", n=20000, configs=QUALITY_CONFIGS, seed=0, device="cpu"):
    """Sliced Wasserstein distance of samples (data space) to fresh data, per sampler config."""
    pipe = Pipeline.from_checkpoint(checkpoint, device=device)
    ref = load_dataset(dataset, n, seed=seed + 1).raw()
    rows = []
    for sampler, steps in configs:
        _sync()
        start = time.perf_counter()
        x = pipe.sample(n, sampler=sampler, steps=steps, seed=seed, progress=False)
        _sync()
        sec = time.perf_counter() - start
        rows.append({"section": "quality", "name": f"{sampler}-{steps}", "n": n, "seconds": sec,
                     "sliced_wasserstein": float(sliced_wasserstein(x, ref, seed=seed))})
    floor = load_dataset(dataset, n, seed=seed + 2).raw()
    rows.append({"section": "quality", "name": "data vs data (floor)", "n": n, "seconds": 0.0,
                 "sliced_wasserstein": float(sliced_wasserstein(floor, ref, seed=seed))})
    top = rows[0]["sliced_wasserstein"]
    for r in rows:
        r["vs_ddpm1000"] = r["sliced_wasserstein"] / top
    return rows


def bench_kernel(n=2**22, repeat=5):
    """One fused ddpm_step over n float32 elements: fastddpm (numba) vs diffusers vs torch eager."""
    import torch

    schedule = fastddpm.Schedule.linear(1000)
    # [n/2, 2]: diffusers' step reads shape[1]
    x = fastddpm.randn((n // 2, 2), seed=1)
    eps = fastddpm.randn((n // 2, 2), seed=2)
    out = np.empty_like(x)
    t = 500
    rows = []
    dst = np.empty_like(x)
    copy = _timed(lambda: np.copyto(dst, x), repeat)
    copy_gbs = 2 * x.nbytes / copy / 1e9
    rows.append({"section": "kernel", "name": "copy (np.copyto)", "elements": n, "seconds": copy, "GB_per_s": copy_gbs,
                 "frac_copy_bw": 1.0})

    fastddpm.ddpm_step(schedule, x, eps, t, out=out, seed=3)
    fns = {"fastddpm.ddpm_step (numba)": lambda: fastddpm.ddpm_step(schedule, x, eps, t, out=out, seed=3)}
    try:
        import diffusers

        sched = diffusers.DDPMScheduler(num_train_timesteps=1000, trained_betas=schedule.betas.tolist(),
                                        clip_sample=False)
        xt, et = torch.from_numpy(x), torch.from_numpy(eps)
        gen = torch.Generator().manual_seed(0)
        fns["diffusers DDPMScheduler.step"] = lambda: sched.step(et, t, xt, generator=gen)
    except ImportError:
        pass
    ac = torch.as_tensor(schedule.alphas_cumprod)
    xt, et = torch.from_numpy(x), torch.from_numpy(eps)
    ab, ab_p = float(ac[t]), float(ac[t - 1])
    beta = 1 - ab / ab_p
    c_eps = beta / (1 - ab) ** 0.5
    c_x = 1 / (1 - beta) ** 0.5
    sigma = ((1 - ab_p) / (1 - ab) * beta) ** 0.5

    def torch_eager():
        with torch.inference_mode():
            return (xt - c_eps * et) * c_x + sigma * torch.randn(xt.shape)
    fns["torch eager"] = torch_eager
    for name, fn in fns.items():
        sec = _timed(fn, repeat)
        gbs = 12 * n / sec / 1e9
        rows.append({"section": "kernel", "name": name, "elements": n, "seconds": sec, "GB_per_s": gbs,
                     "frac_copy_bw": gbs / copy_gbs, "ns_per_element": sec / n * 1e9})
    return rows


_RSS_SCRIPT = """
import resource, sys, numpy as np, fastddpm
from fastddpm.sampling import sample

class Eps:  # exact ε of N(0, 0.5²) data: cheap, so the run measures the engine's memory
    array_api = "numpy"
    sample_shape = (2,)
    def __init__(self, s): self.ac = s.alphas_cumprod
    def __call__(self, x, t):
        ab = self.ac[t][:, None]
        return (np.sqrt(1 - ab) * x / (0.25 * ab + 1 - ab)).astype(x.dtype)

class ClassEps(Eps):  # exact ε of N(mu_label, 0.5²), 10 classes on a circle and a "no label" class at 0
    num_classes, null_label = 10, 10
    def __init__(self, s):
        super().__init__(s)
        a = np.arange(10) * 2 * np.pi / 10
        self.mu = np.concatenate([2 * np.stack([np.cos(a), np.sin(a)], 1), np.zeros((1, 2))])
    def __call__(self, x, t, labels):
        ab = self.ac[t][:, None]
        return (np.sqrt(1 - ab) * (x - np.sqrt(ab) * self.mu[labels]) / (0.25 * ab + 1 - ab)).astype(x.dtype)

s = fastddpm.Schedule.linear(1000)
guided = sys.argv[3] == "guided"
kw = dict(labels="balanced", guidance=3.0) if guided else {}
sample((ClassEps if guided else Eps)(s), s, int(sys.argv[1]), sampler="ddim", steps=3, out=sys.argv[2],
       progress=False, overwrite=True, **kw)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(sizes=(10**5, 10**6), workdir=None, guided=(False, True)):
    """Peak RSS (ru_maxrss) of a bulk run to disk in a fresh process, per n, unguided and guided
    (issue 25: labels drawn per batch and written to the sidecar, the 2B-row network input and output)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for n in sizes:
            for g in guided:
                out = os.path.join(tmp, f"s{n}{'g' if g else ''}.npy")
                start = time.perf_counter()
                res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(n), out, "guided" if g else "plain"],
                                     capture_output=True, text=True, timeout=1800)
                if res.returncode != 0:
                    raise RuntimeError(f"memory benchmark failed: {res.stderr[-2000:]}")
                side = out[:-len(".npy")] + ".labels.npy"
                rows.append({"section": "memory", "name": f"sample(out=...) n={n:,}" + (", guided w=3" if g else ""),
                             "n": n, "seconds": time.perf_counter() - start,
                             "peak_rss_MiB": int(res.stdout.split()[-1]) / 1024,
                             "file_MiB": (os.path.getsize(out) + (os.path.getsize(side) if g else 0)) / 2**20})
    for r in rows:
        r["rss_vs_first"] = r["peak_rss_MiB"] / rows[0]["peak_rss_MiB"]
        plain = next((p for p in rows if p["n"] == r["n"] and "guided" not in p["name"]), None)
        r["rss_vs_unguided"] = r["peak_rss_MiB"] / plain["peak_rss_MiB"] if plain else float("nan")
    return rows


def bench_batch(model, schedule, n=32768, steps=20, sizes=(256, 1024, 2048, 4096, 8192, 16384, 32768), device="cpu",
                prediction="epsilon", engines=("torch", "ort"), rounds=2):
    """fastddpm throughput per batch size, for the torch net and (on CPU) its ONNX Runtime twin;
    the sizes alternate within each round (best of ``rounds``), so load drifts hit all alike."""
    nets = {"torch": model}
    if "ort" in engines and device == "cpu":
        twin = _onnx_twin(model, schedule, prediction)
        if twin is not None:
            nets["ort"] = twin
    nets = {k: v for k, v in nets.items() if k in engines}
    fns = {}
    for engine, net in nets.items():
        kw = {} if engine == "ort" else {"device": device}
        sample(net, schedule, 64, steps=2, spacing="linspace", prediction=prediction, progress=False, **kw)
        for bs in sizes:
            fns[(engine, bs)] = (lambda net=net, bs=bs, kw=kw: sample(
                net, schedule, n, steps=steps, spacing="linspace", batch_size=bs, prediction=prediction,
                progress=False, **kw))
    times = side_by_side(fns, rounds)
    rows = []
    for (engine, bs), v in times.items():
        sec = min(v)
        rows.append({"section": "batch", "name": f"{engine} batch_size={bs}", "batch_size": bs, "elements": bs * int(
            np.prod(_shape(model))), "seconds": sec, "sample_steps_per_s": n * steps / sec})
    return rows


# -- driver ----------------------------------------------------------------------------------

def run(sections=SECTIONS, *, quick=False, checkpoint=None, n=None, steps=1000, batch_size=None, device="cpu",
        dataset="butterfly", log=None, net="ResMLP") -> list:
    """Run the chosen sections; returns rows (dicts with ``section`` and ``name``)."""
    rows = []
    model = schedule = prediction = None

    def say(msg):
        if log is not None:
            print(msg, file=log, flush=True)

    for section in sections:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; allowed: {', '.join(SECTIONS)}")
        if rows and log is not None:  # partial results survive a killed run
            say(format_rows([r for r in rows if r["section"] == rows[-1]["section"]], {}))
        if section in ("throughput", "tiny", "batch") and model is None:
            model, schedule, _, prediction = default_model(checkpoint, device, net)
        say(f"[bench] {section} ...")
        if section == "throughput":
            n_s, steps_s = (n or (4096 if quick else 100_000)), (100 if quick else steps)
            rows += bench_throughput(model, schedule, n_s, steps_s, batch_size, device, prediction=prediction)
        elif section == "tiny":
            rows += bench_tiny(model, schedule, 200 if quick else steps, device, prediction=prediction)
        elif section == "quality":
            if checkpoint is None:
                say("[bench] quality skipped: needs --checkpoint (a trained model)")
                continue
            try:
                import fastddpm.metrics  # noqa: F401
            except ImportError:
                say("[bench] quality skipped: fastddpm.metrics is not available")
                continue
            rows += bench_quality(checkpoint, dataset, 4000 if quick else 20000, device=device)
        elif section == "kernel":
            rows += bench_kernel(2**20 if quick else 2**22, 3 if quick else 5)
        elif section == "memory":
            rows += bench_memory((10**4, 10**5) if quick else (10**5, 10**6))
        elif section == "batch":
            rows += bench_batch(model, schedule, 8192 if quick else 32768, 5 if quick else 20, device=device,
                                prediction=prediction)
    return rows


_COLUMNS = {
    "throughput": ("name", "net", "prediction", "n", "steps", "batch_size", "seconds", "samples_per_s", "us_per_step", "x_vs_diffusers",
                   "x_vs_diffusers_shared_t"),
    "tiny": ("name", "steps", "seconds", "us_per_step", "engine_us_per_step"),
    "quality": ("name", "n", "seconds", "sliced_wasserstein", "vs_ddpm1000"),
    "kernel": ("name", "elements", "seconds", "ns_per_element", "GB_per_s", "frac_copy_bw"),
    "memory": ("name", "seconds", "peak_rss_MiB", "file_MiB", "rss_vs_first", "rss_vs_unguided"),
    "batch": ("name", "elements", "seconds", "sample_steps_per_s"),
}


def _fmt(v):
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e6:
            return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return f"{v:.3g}"
    return "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))


def format_rows(rows, info=None) -> str:
    """Tables per section, headed by the machine."""
    info = machine() if info is None else info
    lines = [] if not info else [f"machine: {info.get('cpu')} | {info.get('cores')} cores | load {info.get('load_avg_1m')} | "
             f"GPU: {info.get('gpu') or 'none'} | torch {info.get('torch')} ({info.get('torch_threads')} threads) | "
             f"numba {info.get('numba')} ({info.get('numba_threads')} threads)"]
    for section in SECTIONS:
        sec_rows = [r for r in rows if r["section"] == section]
        if not sec_rows:
            continue
        cols = [c for c in _COLUMNS[section] if any(c in r for r in sec_rows)]
        table = [cols] + [[_fmt(r.get(c)) for c in cols] for r in sec_rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        lines += ["", f"## {section}"]
        for j, row in enumerate(table):
            lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_rows(rows, info, path) -> None:
    """Rows to .json (with the machine) or .csv (one line per row), atomically."""
    import csv

    path = os.fspath(path)
    if path.endswith(".json"):
        write_json(path, {"machine": info, "rows": rows})
        return
    if not path.endswith(".csv"):
        raise ValueError(f"output must end in .json or .csv, got {path!r}")
    keys = ["section", "name"] + sorted({k for r in rows for k in r} - {"section", "name"})
    with atomic_open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
