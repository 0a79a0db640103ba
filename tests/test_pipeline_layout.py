"""The shape of ``pipeline/``, checked on the source: no import cycle between its modules, not even through an
import inside a function (a cycle means two modules are one idea split in two), and the storage format in
three modules (the format, the writer, the reader) rather than one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"


def pipeline_graph(folder: Path = PIPELINE) -> dict[str, set[str]]:
    """pipeline/ module -> the pipeline/ modules it imports anywhere in its source (module level, in a
    function, under ``if TYPE_CHECKING``), through relative or absolute (``iic.pipeline.x``) imports."""
    modules = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for path in sorted(folder.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                names = [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[:2] == ["iic", "pipeline"] and len(parts) > 2:
                        deps.add(parts[2])
                continue
            else:
                continue
            if module == ".":  # from . import x
                deps |= set(names)
            elif module.startswith(".") and not module.startswith(".."):
                deps.add(module[1:].split(".")[0])
            elif module.startswith("iic.pipeline"):
                rest = module.split(".")[2:]
                deps |= {rest[0]} if rest else set(names)
        graph[path.stem] = (deps & modules) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as the path ``[a, b, ..., a]``, or None when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return trail[trail.index(dep) :] + [node, dep] if dep in trail else [node, dep]
            if dep not in state and (cycle := visit(dep, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"x": {"a"}, "a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
    ],
)
def test_find_cycle_finds_what_it_should(graph, cycle):
    assert find_cycle(graph) == cycle


def test_the_graph_sees_function_level_and_absolute_imports(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n    return g\n")
    (tmp_path / "b.py").write_text("import iic.pipeline.a\nfrom iic.pipeline import c\n")
    (tmp_path / "c.py").write_text("from . import a, os\n")
    assert pipeline_graph(tmp_path) == {"a": {"b"}, "b": {"a", "c"}, "c": {"a"}}


def test_pipeline_has_no_import_cycle():
    graph = pipeline_graph()
    assert {"datasets", "kinetics", "flowcalc", "tvl1_torch"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_format_the_writer_and_the_reader_are_three_modules():
    graph = pipeline_graph()
    assert not (PIPELINE / "shards.py").exists()
    assert {"format", "writer", "reader"} <= set(graph)
    assert "writer" not in graph["reader"] and "reader" not in graph["writer"]  # reading needs no writer
    assert "format" in graph["reader"] and "format" in graph["writer"]


# The tests of the offline stage (tests/test_cli.py checks --version and --help of every command).
PREP_TESTS = (
    "test_camera.py",
    "test_extract.py",
    "test_flow.py",
    "test_flowcalc.py",
    "test_flow_torch.py",
    "test_reader.py",
    "test_checksums.py",
    "test_datasets.py",
    "test_kinetics.py",
    "test_synth.py",
    "test_pictures.py",
    "test_exit_codes.py",
    "test_cli.py",
)


def test_every_prep_option_is_named_in_a_test():
    """A guard for new options: each long spelling of every `iic-prep` option appears, quoted, in a test of
    the offline stage (that the test exercises it is for the reviewer)."""
    import click

    from iic.cli import prep

    text = "".join((PIPELINE.parent / "tests" / name).read_text() for name in PREP_TESTS)
    commands = [("", prep)] + sorted(prep.commands.items())
    missing = [
        f"{name} {opt}".strip()
        for name, cmd in commands
        for param in cmd.params
        if isinstance(param, click.Option)
        for opt in param.opts + param.secondary_opts
        if opt.startswith("--") and f'"{opt}"' not in text
    ]
    assert not missing, f"options no test names: {missing}"
