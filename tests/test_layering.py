"""Imports run one way: kernels/ imports nothing from the rest of fastddpm, and the oracle
(kernels/reference.py) imports nothing from the code it checks (docs/sampling.md, "Step math")."""
import ast
import pathlib

KERNELS = pathlib.Path(__file__).resolve().parents[1] / "kernels"


def _imports(path: pathlib.Path):
    """(absolute module, level) of every import in a file; relative ones resolved inside kernels/."""
    package = ["kernels", *path.relative_to(KERNELS).parent.parts]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, path
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module, path
            else:
                base = package[:len(package) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else [])) if base else "..", path


def test_kernels_import_nothing_from_fastddpm():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) > 10
    bad = [(str(p.relative_to(KERNELS)), m) for f in files for m, p in _imports(f)
           if m == ".." or m.split(".")[0] == "fastddpm"]
    assert bad == []


def test_reference_is_independent():
    mods = {m for m, _ in _imports(KERNELS / "reference.py")}
    assert mods <= {"__future__", "numpy"}, mods
