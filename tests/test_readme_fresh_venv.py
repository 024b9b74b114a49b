"""The README's two commands, followed in a fresh virtual environment (slow; CI runs it).

`make demo` and `make test` both start with `make venv` (scripts/bootstrap.sh). This test runs
that set-up into a brand-new venv (pip's wheel cache and find-links are reused, as they would
be on the user's machine after one install), then, from that venv, the demo with the CI
budget, `fastddpm --help` and a small library call. It does not run `make test` itself (that
would run this test again).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md has no code block at the top"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_top_block_is_exactly_the_two_commands():
    assert _readme_commands() == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    # Each of the two targets does its own set-up (depends on venv = scripts/bootstrap.sh).
    assert re.search(r"^demo: venv$", makefile, re.M) and re.search(r"^test: venv$", makefile, re.M)
    assert "scripts/bootstrap.sh" in re.search(r"^venv:\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "make test"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_fresh_venv_bootstrap_demo_and_library(tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    # Make the venv from the base interpreter, not from this test's own venv.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env["PYTHON"] = str(base) if base.exists() else sys.executable
    proc = subprocess.run(["make", "-C", str(ROOT), "venv", f"VENV={venv}"], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    py = venv / "bin" / "python"
    assert py.exists()

    # On a machine without an NVIDIA GPU no CUDA wheel may have been installed.
    if shutil.which("nvidia-smi") is None:
        freeze = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                                text=True, env=env, timeout=300).stdout
        assert not [l for l in freeze.splitlines() if l.lower().startswith(("nvidia-", "cuda-"))], freeze
        torch_version = subprocess.run([str(py), "-c", "import torch; print(torch.__version__, torch.version.cuda)"],
                                       capture_output=True, text=True, env=env, timeout=300).stdout.split()
        assert torch_version[0].startswith("2.13.0") and torch_version[1] == "None", torch_version

    help_ = subprocess.run([str(venv / "bin" / "fastddpm"), "--help"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert help_.returncode == 0, help_.stderr
    for name in ("train", "sample", "eval", "export", "plot", "bench", "demo"):
        assert f"    {name} " in help_.stdout, help_.stdout

    lib = subprocess.run([str(py), "-c", (
        "import numpy as np, fastddpm\n"
        "s = fastddpm.Schedule.cosine(100)\n"
        "x0 = np.ones((64, 2), np.float32)\n"
        "t = np.full(64, 50)\n"
        "x_t, eps = fastddpm.q_sample(s, x0, t, seed=1)\n"
        "ref = np.sqrt(s.alphas_cumprod[50]) * x0 + np.sqrt(1 - s.alphas_cumprod[50]) * eps\n"
        "assert np.allclose(x_t, ref, atol=1e-6)\n"
        "print('ok')\n")], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert lib.returncode == 0 and lib.stdout.strip() == "ok", lib.stderr

    out = tmp_path / "demo"
    demo = subprocess.run([str(venv / "bin" / "fastddpm"), "demo", "--budget", "ci", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert (out / "report.md").is_file() and (out / "samples.png").is_file()
