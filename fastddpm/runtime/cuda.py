"""The CUDA path of the ONNX sampler: IO binding on torch CUDA buffers, Triton update.

Used only when the session runs on onnxruntime's CUDA execution provider *and* torch with CUDA
and Triton are importable; otherwise the sampler stays on the host path (onnxruntime copies x
to the GPU and the output back each step, and the Numba update runs on the CPU).

How it avoids per-step host copies and syncs:
- x_t, t and the prediction are torch CUDA tensors; the session reads and writes them in place
  through IO binding (``bind_input``/``bind_output`` with their data pointers);
- the session runs on torch's current CUDA stream (``user_compute_stream``), so the Triton
  update and the network are ordered by the stream itself, and the run option
  ``disable_synchronize_execution_providers`` keeps onnxruntime from syncing after each run;
- the loop, noise and update are :func:`fastddpm.sample`'s torch path with CUDA graphs off
  (an onnxruntime run cannot be captured in a torch CUDA graph).

NOT TESTED: the machine this was written on has no GPU, and no test or GPU script runs this
module yet (scripts/gpu_check.sh runs the Triton tests and bench/gpu_e2e.py, neither of which
uses onnxruntime-gpu). What is tested on the CPU is the device choice that leads here:
``fastddpm.pipelines.engines.wants_cuda`` (tests/test_gpu_check_script.py::
test_onnx_sampler_device_matching); the ONNX sampling tests on the CPU provider pass through
``cuda_iobinding_available`` (False there) to the host path.
"""
from __future__ import annotations

import importlib.util

import numpy as np

from .model import CUDA_EP, OnnxModel


def cuda_iobinding_available(model: OnnxModel) -> bool:
    """True when ``model`` runs on the CUDA EP and torch (with CUDA) and Triton can be imported.

    Checks for torch without importing it when the session is on the CPU, so the host path stays
    torch-free.
    """
    if model.device != "cuda":
        return False
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("triton") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def torch_module(model: OnnxModel, device_index: int | None = None):
    """A torch ``nn.Module`` on CUDA that runs ``model``'s graph on torch tensors via IO binding."""
    import onnxruntime as ort
    import torch

    index = torch.cuda.current_device() if device_index is None else int(device_index)
    stream = torch.cuda.current_stream(index)
    options = {"device_id": str(index), "has_user_compute_stream": "1",
               "user_compute_stream": str(stream.cuda_stream)}
    session = ort.InferenceSession(model.path, providers=[(CUDA_EP, options)])
    run_options = ort.RunOptions()
    run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
    output_name, fixed_batch = model.output_name, model.fixed_batch

    class OrtCudaModule(torch.nn.Module):
        """model(x float32 CUDA [B, …], t int64 CUDA [B]) → float32 CUDA [B, …], no host copies."""

        def __init__(self):
            super().__init__()
            # fastddpm.sample finds a module's device from its parameters or buffers.
            self.register_buffer("_device_anchor", torch.empty(0, device=torch.device("cuda", index)),
                                 persistent=False)
            self.sample_shape = model.sample_shape
            self.learn_sigma = model.learn_sigma  # the loop then knows the output carries v
            # a conditional graph (issue 25): model(x, t, labels), labels int64 CUDA [B]
            self.num_classes, self.null_label = model.num_classes, model.null_label

        def forward(self, x, t, labels=None):
            if x.dtype != torch.float32 or t.dtype != torch.int64:
                raise TypeError(f"x must be float32 and t int64 CUDA tensors, got {x.dtype} and {t.dtype}")
            if torch.cuda.current_stream(index).cuda_stream != stream.cuda_stream:
                raise RuntimeError("the ONNX CUDA session is bound to the stream it was created on; "
                                   "run sampling on that stream")
            if self.num_classes and labels is None:
                if self.null_label is None:
                    raise ValueError(f"{model.path!r} is conditional and has no 'no label' class: pass labels")
                labels = torch.full((x.shape[0],), self.null_label, dtype=torch.int64, device=x.device)
            batch = x.shape[0]
            if fixed_batch is not None and batch != fixed_batch:
                if t.shape[0] != batch:
                    t = t.expand(batch)
                parts = []
                for i in range(0, batch, fixed_batch):
                    xs, ts, ys = _pad(x[i:i + fixed_batch], t[i:i + fixed_batch],
                                      None if labels is None else labels[i:i + fixed_batch], fixed_batch)
                    parts.append(self.forward(xs, ts, ys)[: min(fixed_batch, batch - i)])
                return torch.cat(parts)
            x, t = x.contiguous(), t.contiguous()
            out = x.new_empty(model.output_shape(x))  # twice the channels for a learned-variance net
            binding = session.io_binding()
            binding.bind_input("x", "cuda", index, np.float32, list(x.shape), x.data_ptr())
            binding.bind_input("t", "cuda", index, np.int64, list(t.shape), t.data_ptr())
            if labels is not None:
                labels = labels.contiguous()
                binding.bind_input("labels", "cuda", index, np.int64, list(labels.shape), labels.data_ptr())
            binding.bind_output(output_name, "cuda", index, np.float32, list(out.shape), out.data_ptr())
            session.run_with_iobinding(binding, run_options)
            return out

    def _pad(x, t, labels, n):
        if x.shape[0] == n:
            return x, t, labels
        pad = n - x.shape[0]
        return (torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]), torch.cat([t, t.new_zeros(pad)]),
                None if labels is None else torch.cat([labels, labels.new_zeros(pad)]))

    return OrtCudaModule()
