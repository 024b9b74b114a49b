"""Models for the sampling tests: an exact ε-model of a Gaussian target and a tiny torch MLP."""
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
