"""fastddpm's hot path: ``reference`` (NumPy oracle), ``numba`` (CPU), ``triton`` (GPU).

Installed as ``fastddpm.kernels``; imports nothing from the rest of the package (the step math
is ``coefficients``, the shared argument checks ``_checks``). Backends are imported lazily, so
that importing the package never compiles Numba kernels or imports triton.
"""
