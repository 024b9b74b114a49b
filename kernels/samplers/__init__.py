"""Every sampler, one module per family, each compiling a run to the generic coefficient table.

A sampler module (``ddpm.py``, ``dpmsolver.py``, …) defines

- ``NAMES``: the sampler names it compiles;
- ``CONVENTION``: how its string spacings place timesteps ("ddim", "dpmsolver" or "euler": the
  conventions of the diffusers schedulers it is anchored to; fastddpm.sampling.timesteps);
- ``DEFAULTS[name]``: its default ``steps`` (None: all T), ``spacing`` and, optionally,
  ``final`` ("zero": end at σ = 0, the default; "sigma_min": end at the noise level of t = 0);
- ``DESCRIPTION[name]``: one line for ``--help``;
- ``table(name, grid, prediction, **options) -> Table`` (kernels.samplers._table), whose
  keyword arguments are the sampler's options.

This package finds the modules itself, so adding a sampler is adding one module (and its
tests): the sampling loop, the kernels and the CLI ask :func:`compile` and the Table for
everything (ring depth, calls, noise, buffers) and never test a sampler's name.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

from .. import coefficients as KC
from .._checks import check_choice
from ._table import Grid, Table

FINALS = ("zero", "sigma_min")


def _discover() -> dict:
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for name in mod.NAMES:
            if name in found:
                raise RuntimeError(f"sampler {name!r} is defined by both {found[name].__name__} and {mod.__name__}")
            found[name] = mod
    return found


_MODULES = _discover()
# Listed in a stable order: the classic ones first, then by name.
_FIRST = ("ddpm", "ddim", "dpmpp2m")
NAMES = tuple(sorted(_MODULES, key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n)))


def module(name: str):
    if name not in _MODULES:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, NAMES))}; got {name!r}")
    return _MODULES[name]


def defaults(name: str) -> dict:
    """{"steps": int | None, "spacing": str, "final": "zero" | "sigma_min"} of sampler ``name``."""
    return {"final": "zero", **module(name).DEFAULTS[name]}


def convention(name: str) -> str:
    return module(name).CONVENTION


def description(name: str) -> str:
    return module(name).DESCRIPTION[name]


def options(name: str) -> tuple[str, ...]:
    """The option keywords sampler ``name`` takes (its table()'s keyword-only arguments)."""
    params = inspect.signature(module(name).table).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def compile(name: str, grid: Grid, prediction: str, **opts) -> Table:  # noqa: A001 - the verb of the module
    """Sampler ``name``'s table on ``grid`` for a network predicting ``prediction``."""
    mod = module(name)
    check_choice(prediction, "prediction", KC.PREDICTIONS)
    allowed = options(name)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise TypeError(f"sampler {name!r} takes no option {', '.join(unknown)}; its options are "
                        f"{', '.join(allowed) or 'none'}")
    return mod.table(name, grid, prediction, **opts)


__all__ = ["NAMES", "FINALS", "Grid", "Table", "compile", "convention", "defaults", "description", "module",
           "options"]
