"""Where a vector training iteration spends its CPU time, and what the optimizer variants cost.

Usage: python bench/train_step_profile.py [BATCH ...]   (default 256 512 1024)
One torch thread, one Numba thread. Per batch size: CPU ms per iteration of the data draw
(fresh butterfly points), q_sample, forward + backward + gradient clipping, and Adam's step,
averaged over 100 iterations after 20 of warm-up, for ResMLP(64, 3 blocks, 16 Fourier
frequencies) with v-prediction (the default vector recipe). Then Adam's step alone, 300 steps:
per-parameter loop vs foreach vs fused.
"""
import sys
import time

import numba
import torch
import torch.nn.functional as F

import fastddpm
from fastddpm.data import load_dataset
from fastddpm.nets import build
from fastddpm.training import fresh_batch, training_target


def net():
    return build("ResMLP", dim=2, width=64, depth=3, fourier_features=16, fourier_scale=25.0)


def main(argv):
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    ds, s = load_dataset("butterfly", 1000), fastddpm.Schedule.create("linear", 1000)
    for bs in [int(a) for a in argv] or [256, 512, 1024]:
        m = net()
        opt = torch.optim.Adam(m.parameters(), 2e-3, fused=True)
        parts = dict.fromkeys(("data", "q_sample", "fwd_bwd_clip", "adam"), 0.0)
        for it in range(120):
            c0 = time.process_time()
            x0n, tn = fresh_batch(ds, 0, it, bs, 1000)
            x0, t = torch.from_numpy(x0n), torch.from_numpy(tn)
            c1 = time.process_time()
            xt, noise = fastddpm.q_sample(s, x0, t, seed=0, stream=2**30 + it)
            c2 = time.process_time()
            loss = F.mse_loss(m(xt, t), training_target(s, x0, noise, t, "v_prediction"))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0, foreach=True)
            c3 = time.process_time()
            opt.step()
            c4 = time.process_time()
            if it >= 20:
                for k, v in zip(parts, (c1 - c0, c2 - c1, c3 - c2, c4 - c3)):
                    parts[k] += v
        print(f"batch {bs}: " + ", ".join(f"{k} {v * 10:.2f}" for k, v in parts.items())
              + f" ms; total {sum(parts.values()) * 10:.2f} ms/it", flush=True)
    for kw in ({}, {"foreach": True}, {"fused": True}):
        m = net()
        opt = torch.optim.Adam(m.parameters(), 2e-3, **kw)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        for _ in range(20):
            opt.step()
        c = time.process_time()
        for _ in range(300):
            opt.step()
        print(f"Adam {kw or 'default (per-parameter loop)'}: {(time.process_time() - c) / 0.3:.3f} ms/step", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
