"""Package discovery, the one thing pyproject.toml cannot express here.

kernels/ lives at the top of the repository but installs as ``fastddpm.kernels`` (``package-dir``
in pyproject.toml); setuptools' ``packages.find`` cannot rename what it finds, so the packages are
discovered here — every package under fastddpm/, and kernels/ and every package under it with the
``fastddpm.kernels`` prefix — and never listed by hand. No top-level ``kernels`` package is
installed. Metadata, dependencies, extras and package-dir stay in pyproject.toml
(tests/test_packaging.py builds the sdist and the wheel and installs the wheel).
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_PACKAGES = ["fastddpm.kernels"] + [f"fastddpm.kernels.{p}" for p in find_packages(os.path.join(HERE, "kernels"))]

setup(packages=find_packages(HERE, include=["fastddpm", "fastddpm.*"]) + KERNEL_PACKAGES)
