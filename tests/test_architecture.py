"""The rules of the house (ARCHITECTURE.md), checked on the source so that breaking one fails a test.

- ``pipeline/`` never imports torch at module level, except its torch backend ``pipeline/tvl1_torch.py``
  (``--method tvl1-torch``), which no other module imports at module level: it is imported only when that
  method is chosen, so extracting frames or OpenCV flow never loads torch;
- nothing but ``cli.py`` imports click; the config (model/config/) imports no torch, so the CLI builds
  every option without it;
- ``model/`` reads the data only through the reader (``VideoStore``): it imports nothing else of
  ``pipeline/`` (not the writers) and never opens HDF5 or manifest files itself;
- ``model/``'s folders name its parts, and their imports go one way (`ARROWS`): the config below
  everything; the networks and the data path; the methods on those; evaluation; and the runs on top;
- each method module has the same layout, in order: config, state, loss, step, build; the paper's IIC does
  not need the variants module;
- what drives both wings (the demo) sits above them, beside ``cli.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = sorted(ROOT.glob("model/**/*.py"))
SOURCES = (
    sorted(p for p in ROOT.glob("*.py") if p.name != "setup.py") + sorted(ROOT.glob("pipeline/*.py")) + MODEL
)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import in ``path``; relative modules keep their leading dots."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
    return out


def package_of(path: Path) -> str:
    """``iic.model.run`` for model/run/train.py (the repository root is the ``iic`` package)."""
    return ".".join(["iic", *path.relative_to(ROOT).parent.parts])


def absolute_imports(path: Path, top_level_only: bool = False) -> list[str]:
    """Every module ``path`` imports, as an absolute name; ``from . import x`` counts as importing
    ``pkg.x``."""
    out = []
    for module, names in imports(path, top_level_only):
        if not module.startswith("."):
            out.append(module)
            continue
        level = len(module) - len(module.lstrip("."))
        base = package_of(path).split(".")
        base = base[: len(base) - level + 1]
        target = ".".join(base + ([module.lstrip(".")] if module.lstrip(".") else []))
        folder = ROOT.joinpath(*target.split(".")[1:])
        out += [
            f"{target}.{n}" if (folder / f"{n}.py").exists() or (folder / n).is_dir() else target
            for n in names
        ]
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


TORCH_BACKENDS = {"tvl1_torch"}  # pipeline modules that are torch code, imported only when chosen


@pytest.mark.parametrize(
    "path", [p for p in sorted(ROOT.glob("pipeline/*.py")) if p.stem not in TORCH_BACKENDS], ids=rel
)
def test_pipeline_does_not_import_torch_at_module_level(path):
    assert not [m for m, _ in imports(path, top_level_only=True) if m.split(".")[0] == "torch"], rel(path)
    backends = [
        (m, names)
        for m, names in imports(path, top_level_only=True)
        if m.lstrip(".").split(".")[-1] in TORCH_BACKENDS or (m == "." and set(names) & TORCH_BACKENDS)
    ]
    assert not backends, f"{rel(path)} imports a torch backend at module level: {backends}"


def test_the_torch_backend_is_torch_code():
    for stem in TORCH_BACKENDS:
        assert "torch" in {
            m.split(".")[0] for m, _ in imports(ROOT / "pipeline" / f"{stem}.py", top_level_only=True)
        }


def test_the_offline_stage_runs_without_loading_torch():
    """Importing every pipeline module but the backends, and the CLI, leaves torch unloaded."""
    modules = [
        f"iic.pipeline.{p.stem}"
        for p in sorted(ROOT.glob("pipeline/*.py"))
        if p.stem not in TORCH_BACKENDS | {"__init__"}
    ] + ["iic.cli"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name != "cli.py"], ids=rel)
def test_only_the_cli_imports_click(path):
    assert not [m for m, _ in imports(path) if m.split(".")[0] == "click"], rel(path)


@pytest.mark.parametrize("path", MODEL, ids=rel)
def test_model_reads_data_only_through_the_reader(path):
    allowed = {
        "iic.pipeline.reader",  # VideoStore, ManifestRow, FormatError
        "iic.pipeline.storage",  # not data: what a full disk or an unwritable folder says
        "iic.pipeline.orphans",  # not data: worker processes that end with their run (model/run/sweep.py)
    }
    for module in absolute_imports(path):
        if module.startswith("iic.pipeline"):
            assert module in allowed, f"{rel(path)} imports {module}"
        assert module.split(".")[0] != "h5py", f"{rel(path)} opens HDF5 itself"
    assert "manifest.csv" not in path.read_text(), f"{rel(path)} reads the manifest by path"


def test_the_demo_sits_above_both_wings():
    assert not (ROOT / "model" / "demo.py").exists()
    demo = {m for m, _ in imports(ROOT / "demo.py")}
    assert any(m.startswith(".pipeline") for m in demo) and any(m.startswith(".model") for m in demo)
    for path in ROOT.glob("pipeline/*.py"):
        assert not [m for m, _ in imports(path) if "model" in m.split(".")], rel(path)


# The parts of model/ (a folder, or one of the modules at its top) and which parts each may import.
ARROWS: dict[str, set[str]] = {
    "config": set(),
    "checkpoint": set(),
    "distributed": set(),
    "nets": {"config"},
    "data": {"config"},
    "methods": {"config", "nets", "data", "distributed"},
    "evaluation": {"config", "nets", "data", "methods", "checkpoint", "distributed"},
    "run": {"config", "nets", "data", "methods", "evaluation", "checkpoint", "distributed"},
}


def part_of(module: str) -> str | None:
    """``iic.model.run.train`` -> ``run``; None outside model/."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["iic", "model"] and len(parts) > 2 else None


def test_every_part_of_model_is_named_in_the_arrows():
    parts = {
        p.stem if p.parent == ROOT / "model" else p.relative_to(ROOT / "model").parts[0]
        for p in MODEL
        if p.name != "__init__.py" or p.parent != ROOT / "model"
    }
    assert parts == set(ARROWS), parts ^ set(ARROWS)


@pytest.mark.parametrize(
    "path", [p for p in MODEL if p.name != "__init__.py" or p.parent != ROOT / "model"], ids=rel
)
def test_model_parts_import_one_way(path):
    mine = (
        part_of(package_of(path) + "." + path.stem)
        if path.parent == ROOT / "model"
        else part_of(package_of(path))
    )
    for module in absolute_imports(path):
        other = part_of(module)
        if other is not None and other != mine:
            assert other in ARROWS[mine], f"{rel(path)} ({mine}) imports {module} ({other})"


def test_the_config_needs_no_torch():
    """The CLI generates `iic train`'s options from the config: importing it must not load torch."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, iic.model.config; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "False", out


def _model_graph(top_level_only: bool) -> dict[str, set[str]]:
    """model/ module -> the model/ modules it imports."""
    graph = {}
    for path in MODEL:
        name = package_of(path) + ("" if path.name == "__init__.py" else "." + path.stem)
        deps = {m for m in absolute_imports(path, top_level_only) if m.startswith("iic.model")}
        graph[name] = {d for d in deps if d != name}
    modules = set(graph)
    return {k: {d if d in modules else d.rpartition(".")[0] for d in v} & modules for k, v in graph.items()}


def test_model_has_no_import_cycle():
    """Not even through a function-level import: a cycle means two modules are one idea split in two
    (a package's __init__ importing its own modules is not a cycle)."""
    graph = _model_graph(top_level_only=False)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + "."):  # a module importing its package's __init__
                continue
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(trail + [node, dep])
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_one_registry_of_methods_each_in_its_own_module():
    from iic.model import config, methods
    from iic.model.methods import dualvar, iic, variants

    assert tuple(methods.BUILDERS) == config.METHODS
    assert methods.BUILDERS["iic"] is variants.build and methods.BUILDERS["dualvar"] is dualvar.build
    cfg = config.build_config("r3d-res-repeat", model="r3d-tiny")
    assert variants.chosen(cfg.iic) == []  # the paper's recipe builds the paper's module, untouched
    assert type(methods.build(cfg, 4)[1]) is iic.IICMemory


def test_every_method_module_has_the_same_layout_and_the_paper_needs_no_variant():
    sections = {}
    for name in ("iic", "dualvar"):
        text = (ROOT / "model" / "methods" / f"{name}.py").read_text()
        sections[name] = [line.split()[-1] for line in text.splitlines() if line.startswith("# -----")]
    assert sections["iic"] == sections["dualvar"] == ["config", "state", "loss", "step", "build"], sections
    assert "iic.model.methods.variants" not in absolute_imports(ROOT / "model" / "methods" / "iic.py")


def test_one_vocabulary_of_views():
    """Names of views and modalities are defined once (model/config/vocab.py); others import them."""
    for path in MODEL:
        if path.parent.name == "config":
            continue
        text = path.read_text()
        for literal in ('("rgb", "res", "flow")', '"flow-u", "flow-v"'):
            assert literal not in text, f"{rel(path)} spells out the view vocabulary: {literal}"
