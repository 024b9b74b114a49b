"""The package's lazy top-level API stays callable however its submodules were imported."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("first", ["import fastddpm", "from fastddpm.training import TrainResult"])
def test_fastddpm_train_stays_the_function(first):
    code = (f"{first}\n"
            "import fastddpm, sys\n"
            "assert callable(fastddpm.train) and fastddpm.train.__module__ == 'fastddpm.training'\n"
            "from fastddpm.training import DEFAULTS\n"        # importing from the submodule again
            "assert callable(fastddpm.train), type(fastddpm.train)\n"
            "assert sys.modules['fastddpm.training'].train is fastddpm.train\n"
            "from fastddpm import train\n"
            "assert train is fastddpm.train\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_import_fastddpm_does_not_import_torch():
    code = "import sys, fastddpm, fastddpm.plots, fastddpm.cli\nassert 'torch' not in sys.modules, 'torch imported'\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
