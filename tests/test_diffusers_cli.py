"""``fastddpm sample DIR`` on a saved diffusers DDPMPipeline directory: SIGKILL + --resume gives the
identical file, and two torchrun ranks (--distributed) write the single-process file.

The same kill/resume procedure as tests/test_bulk.py (poll the progress record, SIGKILL, resume
with another batch size) and the torchrun helpers of tests/test_distributed.py, here through the
CLI on a tiny UNet2DModel.
"""
import os
import subprocess
import sys
import textwrap
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler  # noqa: E402

from _diffusers_models import tiny_unet  # noqa: E402
from _sampling_models import kill_after  # noqa: E402
from test_distributed import _env, _ok, _torchrun  # noqa: E402

# Slow: six Python processes (reference, killed, resumed, torchrun's two ranks and launcher), each
# importing torch + diffusers (~11 s of diffusers import alone under load on the 2-core CI machine);
# 206 s in all measured there at load average 10, 54 s at load 4.8.
pytestmark = pytest.mark.slow

N = 48
# One batch size for every run: a UNet's float32 output for a sample may change in the last bit
# with the batch it is in (observed here: resuming with another batch size differed by 1 ulp), so
# byte identity is tested at a fixed batch size (shards and resume both cut at whole batches).
ARGS = ["--n", N, "--sampler", "ddpm", "--steps", 5, "--seed", 3, "--engine", "torch", "--quiet",
        "--batch-size", 4]

# The CLI's own main() with the UNet slowed down, so the run is still going when it is killed.
_SLOW_CLI = textwrap.dedent("""
    import sys, time
    from diffusers import UNet2DModel
    forward = UNet2DModel.forward
    def slow(self, *a, **k):
        time.sleep(float(sys.argv[1]))
        return forward(self, *a, **k)
    UNet2DModel.forward = slow
    from fastddpm.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("diffusers") / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=20)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference(pipe_dir):
    """The uninterrupted single-process file."""
    full = pipe_dir.parent / "full.npy"
    proc = _cli(0, pipe_dir, *ARGS, "--out", full)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return full.read_bytes()


def _cli(sleep, *args):
    return subprocess.Popen([sys.executable, "-c", _SLOW_CLI, str(sleep), "sample", *map(str, args)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_on_a_diffusers_dir_is_byte_identical(pipe_dir, reference, tmp_path):
    out = tmp_path / "killed.npy"
    progress = tmp_path / "killed.npy.progress.json"
    proc = _cli(0.02, pipe_dir, *ARGS, "--out", out)  # 12 batches × 5 steps × 20 ms
    done = kill_after(proc, progress, 8)
    assert 8 <= done < N
    assert not out.exists(), "a killed run left a file under the final name"
    assert (tmp_path / "killed.npy.partial").exists()

    proc = _cli(0, pipe_dir, *ARGS, "--out", out, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert out.read_bytes() == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.npy"]


def test_two_ranks_on_a_diffusers_dir_write_the_single_process_file(pipe_dir, reference, tmp_path):
    out = tmp_path / "x.npy"
    _ok(_torchrun(["sample", pipe_dir, *ARGS, "--out", out, "--distributed", "--dist-timeout", 60], timeout=300))
    assert out.read_bytes() == reference
