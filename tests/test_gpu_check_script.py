"""The GPU check script parses (it only runs on a GPU machine), and OnnxSampler's CUDA matching."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


def test_onnx_sampler_device_matching():
    torch = pytest.importorskip("torch")
    from fastddpm.pipelines.engines import wants_cuda as _wants_cuda

    for dev in (None, "cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 1)):
        assert _wants_cuda(dev), dev
    for dev in ("cpu", torch.device("cpu")):
        assert not _wants_cuda(dev), dev
