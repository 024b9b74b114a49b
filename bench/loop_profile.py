"""Where a whole-loop step goes: network call vs fused update vs NaN guard vs the rest.

    python bench/loop_profile.py [--batch 4096] [--steps 100] [--rounds 5] [--net ResMLP]

For one batch of the default model (fastddpm.benchmark.default_model; random weights) and
its ONNX Runtime twin, times side by side (alternating rounds, medians): the whole
``sample`` of one batch; the bound network calls alone (the loop's own ``bind``, same x, same
t views); the bound update kernel alone; the NaN guard alone. The shares say what caps the
ratio to a diffusers loop whose network costs the same: ceiling = (net + diffusers' own
step) / net. ORT session variants (intra-op threads, sequential/parallel execution, graph
optimisation level) are timed the same way (``--ort-options``).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--net", default="ResMLP")
    ap.add_argument("--ort-options", action="store_true", help="also time onnxruntime session variants")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from fastddpm import benchmark as B
    from fastddpm.runtime import OnnxModel
    from fastddpm.sampling import sample
    from fastddpm.sampling.guard import finite_check
    from fastddpm.sampling.loop import SamplingRun

    model, schedule, _, pred = B.default_model(net=args.net)
    twin = B._onnx_twin(model, schedule, pred)
    n, K = args.batch, args.steps
    nets = {"torch": model, "ort": twin}
    if args.ort_options:
        for name, opts in (("ort 1 thread", dict(intra_op_num_threads=1)),
                           ("ort 2 threads", dict(intra_op_num_threads=2)),
                           ("ort parallel exec", dict(execution_mode=ort.ExecutionMode.ORT_PARALLEL)),
                           ("ort opt basic", dict(graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)),
                           ("ort no spinning", {"config": {"session.intra_op.allow_spinning": "0"}})):
            so = ort.SessionOptions()
            for k, v in opts.items():
                if k == "config":
                    for ck, cv in v.items():
                        so.add_session_config_entry(ck, cv)
                else:
                    setattr(so, k, v)
            nets[name] = OnnxModel(twin.path, ["CPUExecutionProvider"], session_options=so)

    fns = {}
    for name, net in nets.items():
        run = SamplingRun(net, schedule, n, steps=K, prediction=pred, progress=False, batch_size=n)
        x = np.zeros((n, *model.sample_shape), np.float32)
        bound = run.network.bind(x)
        run.stepper.reset(x)
        step = run.stepper.bind(x, x, 0)
        with torch.inference_mode():
            m0 = bound(0).copy()
        finite = finite_check(x)

        def calls(bound=bound, torch_net=name == "torch"):
            if torch_net:
                with torch.inference_mode():
                    for k in range(K):
                        bound(k)
            else:
                for k in range(K):
                    bound(k)
        fns[f"{name}: whole loop (sample, 1 batch)"] = (
            lambda net=net: sample(net, schedule, n, steps=K, prediction=pred, batch_size=n, progress=False))
        fns[f"{name}: network calls"] = calls
        if name == "torch":
            fns["update kernel (bound step)"] = lambda step=step, m0=m0: [step(k, m0) for k in range(K)]
            fns["NaN guard"] = lambda finite=finite, m0=m0: [finite(m0) for _ in range(K)]
    for fn in fns.values():
        fn()
    times = B.side_by_side(fns, args.rounds)
    info = B.machine()
    print(f"machine: {info['cpu']} | {info['cores']} cores | load {info['load_avg_1m']} | torch threads "
          f"{info.get('torch_threads')} | numba threads {info.get('numba_threads')} | {args.net} {pred} | "
          f"batch {n} | {K} steps | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for name, sec in med.items():
        whole = next((med[k] for k in med if k.startswith(name.split(":")[0] + ": whole")), None)
        share = "" if whole is None or "whole" in name else f"  {sec / whole:6.1%} of its whole loop"
        print(f"{name:45s} {sec * 1e3 / K:9.3f} ms/step{share}")
    upd, guard = med["update kernel (bound step)"], med["NaN guard"]
    for name in nets:
        whole, net = med[f"{name}: whole loop (sample, 1 batch)"], med[f"{name}: network calls"]
        print(f"{name}: network {net / whole:.1%}, update {upd / whole:.1%}, guard {guard / whole:.1%}, "
              f"rest {(whole - net - upd - guard) / whole:.1%}")


if __name__ == "__main__":
    main()
