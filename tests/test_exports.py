"""Every lazily exported public name resolves, and importing the package loads nothing heavy."""
import importlib
import subprocess
import sys

import pytest

PACKAGES = ["diffblocks", "diffblocks.models", "diffblocks.schedulers", "diffblocks.modular_pipelines",
            "diffblocks.pipelines", "diffblocks.utils"]


def _names(package):
    module = importlib.import_module(package)
    return [(package, name) for name in module.__all__]


@pytest.mark.parametrize("package,name", [pair for pkg in PACKAGES for pair in _names(pkg)])
def test_export_resolves(package, name):
    module = importlib.import_module(package)
    value = getattr(module, name)
    assert value is not None


def test_import_is_lazy():
    code = ("import sys, diffblocks; heavy = [m for m in ('torch', 'transformers', 'diffblocks.models.unet_2d_condition') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
