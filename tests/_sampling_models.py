"""Models for the sampling tests: an exact ε-model of a Gaussian target and a tiny torch MLP."""
import json
import os
import signal
import textwrap
import time

import numpy as np


class GaussianEps:
    """The exact ε-prediction for data ~ N(mu, s²) elementwise (no network, no torch).

    x_t ~ N(√ᾱ·mu, ᾱ·s² + 1 − ᾱ), so E[ε | x_t] = √(1−ᾱ)·(x_t − √ᾱ·mu)/(ᾱ·s² + 1 − ᾱ).
    """

    array_api = "numpy"

    def __init__(self, schedule, mu, s):
        self.ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        self.mu = np.asarray(mu, dtype=np.float64)
        self.s = np.asarray(s, dtype=np.float64)
        self.sample_shape = self.mu.shape
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        ab = self.ac[t].reshape((-1,) + (1,) * (x.ndim - 1))
        eps = np.sqrt(1 - ab) * (x - np.sqrt(ab) * self.mu) / (ab * self.s**2 + 1 - ab)
        return eps.astype(x.dtype)


class GaussianClassEps:
    """The exact ε-prediction of a class-conditional Gaussian mixture (no network, no torch):
    class k ~ N(mu_k, s²) elementwise, the "no label" class (index K) the equal-weight mixture's
    moment-matched Gaussian (its mean and variance), so guidance pushes towards mu_k.
    ``num_classes`` K, ``null_label`` K; called ``model(x, t, labels)``."""

    array_api = "numpy"

    def __init__(self, schedule, mus, s):
        self.ac = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
        mus = np.asarray(mus, dtype=np.float64)  # [K, D]
        self.num_classes, self.null_label = mus.shape[0], mus.shape[0]
        null_mu = mus.mean(0)
        null_s = np.sqrt(s**2 + ((mus - null_mu) ** 2).mean(0))
        self.mu = np.concatenate([mus, null_mu[None]])
        self.s = np.concatenate([np.full_like(mus, s), null_s[None]])
        self.sample_shape = (mus.shape[1],)
        self.calls, self.rows = 0, []

    def __call__(self, x, t, labels):
        self.calls += 1
        self.rows.append(x.shape[0])
        ab = self.ac[t].reshape(-1, 1)
        mu, s = self.mu[labels], self.s[labels]
        eps = np.sqrt(1 - ab) * (x - np.sqrt(ab) * mu) / (ab * s**2 + 1 - ab)
        return eps.astype(x.dtype)


class FailAt:
    """``inner`` that raises KeyboardInterrupt at its ``fail_call``-th call (an interrupted run)."""

    array_api = "numpy"

    def __init__(self, inner, fail_call):
        self.inner, self.fail_call, self.calls = inner, fail_call, 0
        self.sample_shape = inner.sample_shape
        self.num_classes = getattr(inner, "num_classes", 0)
        self.null_label = getattr(inner, "null_label", None)

    def __call__(self, x, t, *labels):
        self.calls += 1
        if self.calls == self.fail_call:
            raise KeyboardInterrupt
        return self.inner(x, t, *labels)


_SLOW_PRELUDE = """\
import os, sys, time
sys.path.insert(0, {tests!r})
import fastddpm
from fastddpm.sampling import sample
from _sampling_models import GaussianEps

class Slow(GaussianEps):
    # sys.argv[2]: seconds per call, or "gate:PATH": every call waits until PATH exists (at most
    # 120 s), so a test can keep a run in progress for as long as it needs on a loaded machine.
    def __call__(self, x, t):
        arg = sys.argv[2]
        if arg.startswith("gate:"):
            deadline = time.monotonic() + 120
            while not os.path.exists(arg[5:]) and time.monotonic() < deadline:
                time.sleep(0.01)
        else:
            time.sleep(float(arg))
        return super().__call__(x, t)

s = fastddpm.Schedule.linear({T})
m = Slow(s, [1.0, -1.0], [0.5, 2.0])
"""


def slow_writer_script(T: int, call: str) -> str:
    """Source of a child process that samples from a GaussianEps slowed by sys.argv[2] seconds per
    model call (a writer still running when the test looks, or one to kill part-way): ``m`` and
    ``s`` (linear(T)) are defined, ``call`` is the rest, e.g. ``sample(m, s, 200, out=sys.argv[1])``."""
    return _SLOW_PRELUDE.format(tests=os.path.dirname(os.path.abspath(__file__)), T=T) + textwrap.dedent(call)


def tiny_mlp(dim=2, hidden=32, seed=0):
    """A small time-conditioned torch MLP with fixed random weights (its output scale ~ 1)."""
    import torch

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                           torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                           torch.nn.Linear(hidden, dim))

        def forward(self, x, t):
            tt = (t.to(x.dtype) / 1000.0).reshape(-1, 1)
            return self.net(torch.cat([x, tt], dim=1))

    torch.manual_seed(seed)
    return MLP().eval()


def kill_after(proc, progress, rows, timeout=240):
    """SIGKILL ``proc`` once its progress record (``progress``, a Path) says at least ``rows`` rows
    are done; returns the ``done`` count it saw. Fails if the run ended before it could be killed."""
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = json.loads(progress.read_text())["done"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            done = 0
        if done >= rows:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return done
