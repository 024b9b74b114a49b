"""Pipeline: sampling from a saved checkpoint, in data space (diffusers-like entry point)."""
from __future__ import annotations

import hashlib
import json

from .loop import SamplingRun, run_in_memory


class Pipeline:
    """A loaded checkpoint ready to sample: ``Pipeline.from_checkpoint(path).sample(n, ...)``.

    ``sample`` takes the keywords of :func:`fastddpm.sample` (sampler, steps, spacing, eta, seed,
    batch_size, backend, out, resume, …); the prediction type and sample shape come from the
    checkpoint, and results are de-normalised with the checkpoint's normalisation (pass
    ``denormalize=False`` for model space).
    """

    def __init__(self, checkpoint):
        for attr in ("model", "schedule", "normalization", "prediction", "sample_shape"):
            if not hasattr(checkpoint, attr):
                raise TypeError(f"Pipeline needs a fastddpm.checkpoint.Checkpoint (missing {attr!r}); "
                                "use Pipeline.from_checkpoint(path)")
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.schedule = checkpoint.schedule
        self.normalization = checkpoint.normalization
        self.prediction = checkpoint.prediction
        self.sample_shape = tuple(checkpoint.sample_shape)
        config = getattr(checkpoint, "config", {}) or {}
        ident = {"files": config.get("files"), "weights": getattr(checkpoint, "weights", None)}
        self.model_id = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_checkpoint(cls, path, *, device="cpu", ema: bool = True) -> "Pipeline":
        """Load the checkpoint directory ``path`` (EMA weights by default) onto ``device``."""
        from ..checkpoint import load

        return cls(load(path, device=device, ema=ema))

    @classmethod
    def from_diffusers(cls, path, *, device="cpu") -> "Pipeline":
        """Load a local ``DDPMPipeline.save_pretrained`` directory (needs ``fastddpm[diffusers]``).

        The scheduler's variance type, clipping and timestep spacing become this pipeline's
        ``sample`` defaults (``pipeline.sampling_defaults``); the prediction type is fixed.
        """
        from ..diffusers import load_pipeline_dir

        checkpoint = load_pipeline_dir(path, device=device)
        pipeline = cls(checkpoint)
        defaults = checkpoint.schedule.sampling_defaults
        pipeline.sampling_defaults = {k: defaults[k] for k in ("variance", "clip", "spacing")}
        return pipeline

    def __repr__(self) -> str:
        return (f"Pipeline({type(self.model).__name__}, {self.schedule!r}, prediction={self.prediction!r}, "
                f"sample_shape={self.sample_shape})")

    def sample(self, n: int, *, denormalize: bool = True, out=None, resume: bool = False, overwrite: bool = False,
               return_trajectory: bool = False, trajectory_steps=None, engine: str = "auto", **kwargs):
        """``n`` samples [n, *sample_shape] in data space (a NumPy array; a path with ``out``).

        engine: "auto" (on the CPU, run the network through a cached ONNX export in onnxruntime
        when onnx and onnxruntime are installed — faster than torch eager, see docs/onnx.md),
        "torch" or "onnx". The samples agree to float32 rounding of the network either way.

        With ``return_trajectory`` also a :class:`~fastddpm.sampling.Trajectory` (de-normalised too).
        """
        for key in ("prediction", "sample_shape"):
            if key in kwargs:
                raise TypeError(f"{key} comes from the checkpoint; it cannot be passed to Pipeline.sample")
        defaults = dict(sampler="ddpm", steps=None, spacing="leading", eta=0.0, variance="fixed_small", clip=None,
                        seed=0, batch_size=None, device=None, backend="auto", dtype="float32", progress=True,
                        check_finite=True, cuda_graph=None, start=0)
        defaults.update(getattr(self, "sampling_defaults", {}))  # from_diffusers: the scheduler's settings
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
        defaults.update(kwargs)
        from ..onnx_export import engine_model

        onnx_model = engine_model(self, engine, device=defaults["device"], backend=defaults["backend"],
                                  dtype=defaults["dtype"])
        run = SamplingRun(self.model if onnx_model is None else onnx_model, self.schedule, n,
                          prediction=self.prediction, sample_shape=self.sample_shape, **defaults)
        run.model_id = self.model_id if onnx_model is None else self.model_id + ":onnx"
        post = self._to_data if denormalize else None
        if out is not None:
            if return_trajectory:
                raise ValueError("return_trajectory=True cannot be combined with out=")
            from .bulk import write_samples

            return write_samples(run, out, resume=resume, overwrite=overwrite, postprocess=post)
        if resume:
            raise ValueError("resume=True needs out= (a .npy path to continue writing)")
        result = run_in_memory(run, return_trajectory=return_trajectory, trajectory_steps=trajectory_steps)
        if return_trajectory:
            x, traj = result
            x = self._host(x)
            traj.x = self._host(traj.x)
            if post is not None:
                x, traj.x = post(x), post(traj.x)
            return x, traj
        x = self._host(result)
        return post(x) if post is not None else x

    def _to_data(self, x):
        return self.normalization.denormalize(x)

    @staticmethod
    def _host(x):
        if not hasattr(x, "detach"):
            return x
        x = x.detach()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).cpu().numpy()  # NumPy has no bfloat16
