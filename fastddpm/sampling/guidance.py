"""Conditioning of a sampling run: its labels and classifier-free guidance, per network call.

docs/sampling.md ("Guidance") states the math; here is what a run does per call k, decided once:

- an unconditional model: ``model(x, t)`` (``PLAIN``);
- a conditional model without labels: its "no label" class for every row (``NULL``);
- with labels and w = 1, or a call outside ``guidance_interval``: the conditional output only,
  one network call over the B rows (``COND``); w = 0: the unconditional one only (``UNCOND``);
- otherwise (``GUIDED``): ONE network call over 2B rows — x twice, labels [c | no label] — whose
  output the fused update reads in both halves, m = c + (w − 1)·(c − u) (times guidance_rescale's
  per-sample factor). The 2B-row input lives in one buffer whose first half is the state x; the
  update of the call before a guided call also stores x′ into the second half (``mirror``), so the
  doubled input costs no pass of its own.

No torch here (the ONNX Runtime path uses it).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from ..labels import LabelSet, model_labels, resolve

PLAIN, NULL, COND, UNCOND, GUIDED = "plain", "null", "cond", "uncond", "guided"


def check_options(guidance, guidance_rescale, guidance_interval):
    """Model-free checks of the three guidance options; (w, φ, interval or None)."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        raise ValueError(f"guidance (--guidance, the scale w; 1 = conditional, 0 = unconditional) must be a finite number, "
                         f"got {guidance!r}")
    if (isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, numbers.Real)
            or not 0.0 <= guidance_rescale <= 1.0):
        raise ValueError(f"guidance_rescale (--guidance-rescale, φ of rescale_noise_cfg) must be a number in [0, 1], got "
                         f"{guidance_rescale!r}")
    interval = guidance_interval
    if interval is not None:
        ok = (isinstance(interval, (tuple, list)) and len(interval) == 2
              and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in interval)
              and 0 <= interval[0] <= interval[1])
        if not ok:
            raise ValueError(f"guidance_interval (--guidance-interval) must be None or (t_lo, t_hi), integer timesteps with "
                             f"0 <= t_lo <= t_hi (guidance at the calls with t_lo <= t <= t_hi), got {interval!r}")
        interval = (int(interval[0]), int(interval[1]))
    return float(guidance), float(guidance_rescale), interval


class Conditioning:
    """A run's labels and per-call guidance modes (built once per run by the loop).

    ``modes[k]``: one of PLAIN, NULL, COND, UNCOND, GUIDED for network call k; ``mirror[k]``:
    call k's update also writes the second half of the 2B-row input (call k + 1 is guided);
    ``doubled``: some call is guided (the run keeps a 2B-row input buffer).
    """

    def __init__(self, model, timesteps, n: int, start: int, seed: int, *, labels, guidance: float,
                 guidance_rescale: float, guidance_interval, label_set: LabelSet | None = None):
        label_set = label_set if label_set is not None else model_labels(model)
        self.label_set = label_set
        w, phi, interval = check_options(guidance, guidance_rescale, guidance_interval)
        self.scale, self.rescale, self.interval = w, phi, interval
        guided_asked = w != 1.0 or phi != 0.0 or interval is not None
        if label_set is None:
            if guided_asked:
                raise ValueError(f"guidance={w:g} (--guidance; also guidance_rescale, guidance_interval) needs a "
                                 "conditional model; this one is unconditional (no num_classes): leave guidance at 1")
            self.labels = resolve(labels, n, start, seed, None) if labels is not None else None
            self.modes = [PLAIN] * len(timesteps)
        else:
            self.labels = resolve(labels, n, start, seed, label_set)
            null = label_set.null_label
            if self.labels is None:
                if null is None:
                    raise ValueError(f"labels is required: this conditional model ({label_set.num_classes} classes) has "
                                     "no 'no label' class to sample it unconditionally; pass labels=… (--label / "
                                     "--labels: one label, an array, 'balanced' or 'frequencies')")
                if guided_asked:
                    raise ValueError(f"guidance={w:g} needs labels (the conditional half): pass labels=… (--label / "
                                     "--labels), or leave guidance at 1 to sample unconditionally")
                self.modes = [NULL] * len(timesteps)
            else:
                if w != 1.0 and null is None:
                    raise ValueError(f"guidance={w:g} needs the model's 'no label' class for the unconditional half, "
                                     "and this model has none (null_label is None); use guidance=1, or a model "
                                     "trained with label dropout (fastddpm train --conditional)")
                if w == 1.0:
                    self.modes = [COND] * len(timesteps)
                elif w == 0.0:
                    self.modes = [UNCOND] * len(timesteps)
                else:
                    self.modes = [GUIDED if interval is None or interval[0] <= int(t) <= interval[1] else COND
                                  for t in timesteps]
        self.null_label = None if label_set is None else label_set.null_label
        self.doubled = GUIDED in self.modes
        self.mirror = [k + 1 < len(self.modes) and self.modes[k + 1] == GUIDED for k in range(len(self.modes))]

    def guided(self, k: int) -> bool:
        return self.modes[k] == GUIDED

    def call_labels(self, cond: np.ndarray | None, B: int) -> dict:
        """The labels each mode feeds the network for one batch of B samples whose labels are
        ``cond`` (int64 [B], or None): COND the labels; NULL and UNCOND "no label" [B]; GUIDED
        [labels | no label] [2B] (rows B … 2B − 1 are the unconditional half); PLAIN None."""
        out = {PLAIN: None}
        if self.label_set is None:
            return out
        null = np.full(B, self.null_label if self.null_label is not None else 0, dtype=np.int64)
        out.update({COND: cond, NULL: null, UNCOND: null})
        if self.doubled:
            out[GUIDED] = np.concatenate([cond, null])
        return out

    def settings(self) -> dict:
        """What identifies the run's conditioning in a resume record (JSON-able)."""
        from ..labels import describe

        if self.label_set is None:
            return {}
        return {"labels": describe(None if self.labels is None else self.labels.spec),
                "guidance": self.scale, "guidance_rescale": self.rescale,
                "guidance_interval": None if self.interval is None else list(self.interval)}
