"""The rules of the house (ARCHITECTURE.md), checked on the source so that breaking one fails a test.

- ``pipeline/`` never imports torch at module level, except its torch backend ``pipeline/tvl1_torch.py``
  (``--method tvl1-torch``), which no other module imports at module level: it is imported only when that
  method is chosen, so extracting frames or OpenCV flow never loads torch;
- nothing but ``cli.py`` imports click;
- ``model/`` reads the data only through the reader (``VideoStore``): it imports nothing else of
  ``pipeline/`` (not the writers) and never opens HDF5 or manifest files itself;
- what drives both wings (the demo) sits above them, beside ``cli.py``.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for p in ROOT.glob("*.py") if p.name != "setup.py") + sorted(ROOT.glob("pipeline/*.py")) + \
    sorted(ROOT.glob("model/*.py"))


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


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


TORCH_BACKENDS = {"tvl1_torch"}  # pipeline modules that are torch code, imported only when chosen


@pytest.mark.parametrize("path", [p for p in sorted(ROOT.glob("pipeline/*.py")) if p.stem not in TORCH_BACKENDS], ids=rel)
def test_pipeline_does_not_import_torch_at_module_level(path):
    assert not [m for m, _ in imports(path, top_level_only=True) if m.split(".")[0] == "torch"], rel(path)
    backends = [(m, names) for m, names in imports(path, top_level_only=True)
                if m.lstrip(".").split(".")[-1] in TORCH_BACKENDS or (m == "." and set(names) & TORCH_BACKENDS)]
    assert not backends, f"{rel(path)} imports a torch backend at module level: {backends}"


def test_the_torch_backend_is_torch_code():
    for stem in TORCH_BACKENDS:
        assert "torch" in {m.split(".")[0] for m, _ in imports(ROOT / "pipeline" / f"{stem}.py", top_level_only=True)}


def test_the_offline_stage_runs_without_loading_torch():
    """Importing every pipeline module but the backends, and the CLI, leaves torch unloaded."""
    modules = [f"iic.pipeline.{p.stem}" for p in sorted(ROOT.glob("pipeline/*.py"))
               if p.stem not in TORCH_BACKENDS | {"__init__"}] + ["iic.cli"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", out


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name != "cli.py"], ids=rel)
def test_only_the_cli_imports_click(path):
    assert not [m for m, _ in imports(path) if m.split(".")[0] == "click"], rel(path)


@pytest.mark.parametrize("path", sorted(ROOT.glob("model/*.py")), ids=rel)
def test_model_reads_data_only_through_the_reader(path):
    allowed = {("..pipeline.shards", "VideoStore"), ("..pipeline.shards", "ManifestRow"), ("..pipeline.shards", "FormatError"),
               ("..pipeline", "orphans")}  # not data: worker processes that end with their run (model/sweep.py)
    for module, names in imports(path):
        if module.startswith("..pipeline") or module.startswith("iic.pipeline"):
            assert all((module, n) in allowed for n in names), f"{rel(path)} imports {module}: {names}"
        assert module.split(".")[0] != "h5py", f"{rel(path)} opens HDF5 itself"
    assert "manifest.csv" not in path.read_text(), f"{rel(path)} reads the manifest by path"


def test_the_demo_sits_above_both_wings():
    assert not (ROOT / "model" / "demo.py").exists()
    demo = {m for m, _ in imports(ROOT / "demo.py")}
    assert any(m.startswith(".pipeline") for m in demo) and any(m.startswith(".model") for m in demo)
    for path in ROOT.glob("pipeline/*.py"):
        assert not [m for m, _ in imports(path) if "model" in m.split(".")], rel(path)


def _model_graph(top_level_only: bool) -> dict[str, set[str]]:
    """model/ module -> the model/ modules it imports (relative imports)."""
    graph = {}
    for path in ROOT.glob("model/*.py"):
        deps = set()
        for module, names in imports(path, top_level_only):
            if module == ".":
                deps |= set(names)
            elif module.startswith(".") and not module.startswith(".."):
                deps.add(module[1:].split(".")[0])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_model_has_no_import_cycle():
    """Not even through a function-level import: a cycle means two modules are one idea split in two."""
    graph = _model_graph(top_level_only=False)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(trail + [node, dep])
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_one_registry_of_methods_each_in_its_own_module():
    from iic.model import config, dualvar, iic
    from iic.model.train import METHOD_BUILDERS

    assert tuple(METHOD_BUILDERS) == config.METHODS
    assert METHOD_BUILDERS["iic"] is iic.build_iic and METHOD_BUILDERS["dualvar"] is dualvar.build_dualvar


def test_one_vocabulary_of_views():
    """Names of views and modalities are defined once (model/views.py); others import them."""
    for path in ROOT.glob("model/*.py"):
        if path.name == "views.py":
            continue
        text = path.read_text()
        for literal in ('("rgb", "res", "flow")', '"flow-u", "flow-v"'):
            assert literal not in text, f"{rel(path)} spells out the view vocabulary: {literal}"
