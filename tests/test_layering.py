"""Packages depend downward only: every import, including those inside functions, goes to a lower layer.

The layers, lowest first (a package may import its own layer and any lower one):
    whisper_export (its top-level modules: dims, hashing, graph_io, languages, tokenizer, bundle)
    reference_model                  the PyTorch model and checkpoint loading
    whisper_export.backends          the step contract and its implementations
    whisper_export.export            graph building, bundle writing, bundles exported on demand
    whisper_export.runtime           audio, options, decoding, scheduler, transcription, writers
    engines, whisper_export.checks, whisper_export.bench, whisper_export.serve, whisper_export.batch
    whisper_export.commands          the typer commands
    cli                              the typer app
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ["whisper_export"],
    ["reference_model"],
    ["whisper_export.backends"],
    ["whisper_export.export"],
    ["whisper_export.runtime"],
    ["engines", "whisper_export.checks", "whisper_export.bench", "whisper_export.serve", "whisper_export.batch"],
    ["whisper_export.commands"],
    ["cli"],
]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def package_of(module: str) -> str | None:
    """The layered package a dotted module name belongs to (the longest listed prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LEVEL:
            return ".".join(parts[:n])
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every absolute module an import statement in the file names, at any depth (function-level too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from whisper_export import graph_io" imports the submodule whisper_export.graph_io
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the imports that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    files = [ROOT / "cli.py", *ROOT.glob("whisper_export/**/*.py"), *ROOT.glob("reference_model/**/*.py"),
             *ROOT.glob("engines/**/*.py")]
    for path in files:
        source = package_of(module_name(path))
        assert source is not None, f"{path} is in no layer"
        for name in imports_of(path):
            target = package_of(name)
            if target is not None and target != source:
                edges.setdefault((source, target), []).append(f"{module_name(path)} imports {name}")
    return edges


def test_packages_import_only_lower_layers():
    upward = [why for (source, target), whys in package_edges().items() if LEVEL[target] >= LEVEL[source]
              for why in whys]
    assert not upward, "imports of a higher (or the same) layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_packages():
    edges = package_edges()
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(edges[(node, nxt)]))
            if state.get(nxt) is None:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [node])


def test_the_checker_sees_a_cycle(tmp_path):
    """The checker itself: a function-level upward import is an edge it reports."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from whisper_export.runtime.api import WhisperRuntime\n")
    assert "whisper_export.runtime.api.WhisperRuntime" in imports_of(probe)
    assert package_of("whisper_export.runtime.api.WhisperRuntime") == "whisper_export.runtime"
    assert LEVEL[package_of("whisper_export.runtime.api")] > LEVEL[package_of("whisper_export.backends.base")]
