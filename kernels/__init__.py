"""fastddpm's hot path: ``reference`` (NumPy oracle), ``numba`` (CPU), ``triton`` (GPU).

Installed as ``fastddpm.kernels``. Backends are imported lazily by fastddpm.backends so that
importing fastddpm never compiles or imports triton.
"""
