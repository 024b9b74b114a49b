"""fastddpm as users install it: build the sdist, build the wheel from that sdist (what
``python -m build`` does), install the wheel into a fresh virtual environment that cannot see
this checkout, and run the README's command lines there.

The fresh venv gets no copies of the dependencies: after the wheel is installed (``--no-deps``,
so pip never sees another fastddpm), a .pth file appends this test venv's site-packages to its
sys.path. A path line in a .pth file is not itself processed as a site directory, so the editable
install's finder there (``__editable__.fastddpm-*.pth``) never runs; the commands run from a
temporary directory with PYTHONPATH cleared, and the test checks that ``fastddpm`` is imported
from the new venv. Cost on the 2-core EPYC: 28 s for the module at load 2.6 (sdist + wheel 1.3 s,
venv + install 1.5 s, the commands 25 s: the Numba kernels compile afresh in the new install);
62 s at load 5.2.
"""
from __future__ import annotations

import email
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("triton", "onnx", "onnx-gpu", "plots", "metrics", "digits", "diffusers", "test", "all")
BUILD = ("import sys\nfrom setuptools import build_meta as backend\n"
         "print(getattr(backend, 'build_' + sys.argv[1])(sys.argv[2]))\n")


def _source_files() -> list[str]:
    """The files a clean clone holds: git's tracked and untracked-but-not-ignored files (so a new
    module counts before it is committed), else everything but build outputs and environments."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                             capture_output=True, check=True, timeout=60).stdout
        return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", ".worktrees", "__pycache__", "build", "dist", "runs", ".pytest_cache"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts) and ".egg-info" not in str(p)]


def _run(cmd, *, cwd, env=None, timeout=600):
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel): the sdist built from a copy of the source tree, the wheel built from the sdist."""
    tmp = tmp_path_factory.mktemp("packaging")
    src, dist = tmp / "src", tmp / "dist"
    for name in _source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    dist.mkdir()
    sdist = dist / _run([sys.executable, "-c", BUILD, "sdist", dist], cwd=src).stdout.split()[-1]
    with tarfile.open(sdist) as tar:  # the "data" filter where this Python has it (3.10.12+, 3.11.4+)
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = dist / _run([sys.executable, "-c", BUILD, "wheel", dist], cwd=unpacked).stdout.split()[-1]
    return sdist, wheel


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A fresh venv with the wheel installed and this venv's dependencies visible (not its fastddpm)."""
    _, wheel = built
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=root)
    py = env_dir / "bin" / "python"
    # pip of this venv installs into the new one; --no-deps --no-index: nothing is downloaded, and
    # the .pth below is written afterwards so that pip never sees (or touches) the editable install
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--quiet", wheel],
         cwd=root)
    purelib = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    (Path(purelib) / "_fastddpm_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "FASTDDPM_PROGRESS")}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}", FASTDDPM_CACHE=str(root / "cache"))
    work = root / "work"
    work.mkdir()
    return env_dir, env, work


def test_wheel_holds_the_package_and_nothing_else(built):
    _, wheel = built
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fastddpm", "fastddpm-0.1.0.dist-info"}, tops  # no tests/, bench/, scripts/, kernels/
    for module in ("fastddpm/distributed/__init__.py", "fastddpm/distributed/sharded.py", "fastddpm/cli/info.py",
                   "fastddpm/pipelines/loader.py", "fastddpm/kernels/reference.py",
                   "fastddpm/kernels/numba/step.py", "fastddpm/kernels/triton/update.py"):
        assert module in names, module
    # every package of the source tree is in the wheel (kernels/ as fastddpm/kernels/)
    packages = {str(p.parent.relative_to(ROOT)).replace("kernels", "fastddpm/kernels", 1)
                if p.is_relative_to(ROOT / "kernels") else str(p.parent.relative_to(ROOT))
                for base in ("fastddpm", "kernels") for p in (ROOT / base).rglob("__init__.py")}
    assert packages <= {n.rsplit("/", 1)[0] for n in names}, packages - {n.rsplit("/", 1)[0] for n in names}
    meta = email.message_from_bytes(zipfile.ZipFile(wheel).read("fastddpm-0.1.0.dist-info/METADATA"))
    assert set(meta.get_all("Provides-Extra")) == set(EXTRAS)
    requires = meta.get_all("Requires-Dist")
    assert any(r.startswith("onnxruntime") and 'extra == "onnx"' in r for r in requires), requires
    assert any(r.startswith("triton") and 'extra == "triton"' in r for r in requires), requires


def test_sdist_builds_the_wheel(built):
    sdist, _ = built
    names = tarfile.open(sdist).getnames()
    for name in ("pyproject.toml", "setup.py", "README.md", "kernels/numba/step.py", "fastddpm/distributed/sharded.py"):
        assert f"fastddpm-0.1.0/{name}" in names, name


def test_installed_wheel_runs_the_readme_commands(venv):
    env_dir, env, work = venv
    py, cli = env_dir / "bin" / "python", env_dir / "bin" / "fastddpm"
    probe = _run([py, "-c", (
        "import importlib.util, json, sys, fastddpm, fastddpm.kernels.triton, fastddpm.distributed\n"
        "print(json.dumps({'file': fastddpm.__file__, 'kernels': importlib.util.find_spec('kernels') is not None,\n"
        "                  'editable': [m for m in sys.modules if 'editable' in m], 'path': sys.path}))\n")],
        cwd=work, env=env)
    seen = json.loads(probe.stdout)
    assert Path(seen["file"]).is_relative_to(env_dir), seen["file"]  # not the checkout
    assert not seen["kernels"] and not seen["editable"], seen
    assert not [p for p in seen["path"] if p and Path(p).resolve() == ROOT], seen["path"]

    help_ = _run([cli, "--help"], cwd=work, env=env).stdout
    for name in ("train", "sample", "export", "info"):
        assert f"    {name} " in help_, help_
    _run([cli, "train", "--dataset", "butterfly", "--out", "ckpt", "--iters", "50", "--quiet"], cwd=work, env=env)
    assert json.loads((work / "ckpt" / "config.json").read_text())["model"]["class"] == "ResMLP"
    _run([cli, "sample", "ckpt", "--n", "100", "--sampler", "dpmpp2m", "--out", "s.npy", "--quiet"], cwd=work, env=env)
    x = np.load(work / "s.npy")
    assert x.shape == (100, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    info = json.loads(_run([cli, "info", "--json"], cwd=work, env=env).stdout)
    assert Path(info["fastddpm"]["path"]).is_relative_to(env_dir)


def test_extras_resolve_from_the_wheel(built, venv):
    _, wheel = built
    env_dir, env, work = venv
    # pip resolves fastddpm[all] from the wheel's metadata against what is installed, offline:
    # every extra names only distributions that exist here, and nothing would be downloaded
    report = work / "report.json"
    _run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "--dry-run", "--no-index",
          "--quiet", "--report", report, f"{wheel}[all]"], cwd=work)
    assert json.loads(report.read_text())["install"] == []
