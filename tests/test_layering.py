"""Imports run one way, bottom to top (docs/index.md, "Where things live"): kernels/ imports nothing
from the rest of fastddpm, the oracle (kernels/reference.py) imports nothing from the code it
checks (docs/sampling.md, "Step math"), and every module of fastddpm imports only its own floor
or the floors below it — lazy imports inside functions included."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
PACKAGE = ROOT / "fastddpm"

# Floors, bottom to top. A module is named by its dotted path with kernels/ as fastddpm.kernels
# (how it is installed); the longest prefix listed decides its floor.
FLOORS = [
    ("kernels", ["fastddpm.kernels"]),
    ("core", ["fastddpm", "fastddpm.schedule", "fastddpm.ops", "fastddpm.backends", "fastddpm._validate",
              "fastddpm.data", "fastddpm._io", "fastddpm.nets", "fastddpm.metrics", "fastddpm.machine",
              "fastddpm.plots"]),
    ("below sampling", ["fastddpm.runtime", "fastddpm.checkpoint"]),
    ("sampling", ["fastddpm.sampling"]),
    ("diffusers interop", ["fastddpm.diffusers"]),
    ("pipelines", ["fastddpm.pipelines", "fastddpm.onnx_export", "fastddpm.onnx_fused"]),
    ("on top", ["fastddpm.distributed", "fastddpm.training", "fastddpm.distillation", "fastddpm.benchmark",
                "fastddpm.demo"]),
    ("cli", ["fastddpm.cli", "fastddpm.__main__"]),
]


def _module_name(path: pathlib.Path) -> str:
    if path.is_relative_to(KERNELS):
        parts = ["fastddpm", "kernels", *path.relative_to(KERNELS).with_suffix("").parts]
    else:
        parts = ["fastddpm", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _floor(module: str) -> int | None:
    best = None
    for level, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    return None if best is None else best[0]


def _is_module(name: str) -> bool:
    parts = name.split(".")
    if parts[:2] == ["fastddpm", "kernels"]:
        base = KERNELS.joinpath(*parts[2:])
    else:
        base = PACKAGE.joinpath(*parts[1:])
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: pathlib.Path, text: str | None = None):
    """Every fastddpm module a file imports (anywhere in it), relative imports resolved."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                if node.level > len(package):
                    yield ".."  # above the package: always wrong
                    continue
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import submodule` imports pkg.submodule
                full = f"{base}.{alias.name}"
                yield full if base.startswith("fastddpm") and _is_module(full) else base


def _sources():
    return sorted([*KERNELS.rglob("*.py"), *PACKAGE.rglob("*.py")])


def test_every_module_has_a_floor():
    assert [str(p) for p in _sources() if _floor(_module_name(p)) is None] == []


def test_imports_run_one_way():
    bad = []
    for path in _sources():
        mine = _floor(_module_name(path))
        for module in _imports(path):
            if module == "..":
                bad.append((_module_name(path), "a relative import above the package"))
            elif module.split(".")[0] == "fastddpm" and module != "fastddpm" and _floor(module) > mine:
                bad.append((_module_name(path), f"{module} ({FLOORS[_floor(module)][0]} above "
                                                f"{FLOORS[mine][0]})"))
    assert bad == []


def test_demo_does_not_depend_on_the_benchmark():
    path = PACKAGE / "demo.py"
    assert not [m for m in _imports(path) if m.startswith("fastddpm.benchmark")]


def test_sampling_does_not_import_the_pipeline_floor():
    bad = [(_module_name(p), m) for p in (PACKAGE / "sampling").rglob("*.py") for m in _imports(p)
           if m.startswith("fastddpm.pipelines")]
    assert bad == []


def test_the_layering_check_can_fail():
    # the sampling floor importing the pipeline floor lazily, inside a function, is found
    loop = PACKAGE / "sampling" / "loop.py"
    text = loop.read_text() + "\n\ndef _upward():\n    from ..pipelines import engines\n"
    found = set(_imports(loop, text))
    assert "fastddpm.pipelines.engines" in found
    assert _floor("fastddpm.pipelines.engines") > _floor(_module_name(loop))


def test_kernels_import_nothing_from_fastddpm():
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) > 10
    bad = [(str(p.relative_to(KERNELS)), m) for p in files for m in _imports(p)
           if m == ".." or (m.split(".")[0] == "fastddpm" and not m.startswith("fastddpm.kernels"))]
    assert bad == []


def test_reference_is_independent():
    mods = set(_imports(KERNELS / "reference.py"))
    assert mods <= {"__future__", "numpy"}, mods
