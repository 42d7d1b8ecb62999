"""The import graph of src/teachfit, built from the source with `ast`: no module imports a module
that imports it back (at any nesting level: imports inside functions count), and no module is
imported by a string (importlib.import_module("teachfit...")), which would hide an edge."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "teachfit"


def module_names() -> dict[str, Path]:
    """teachfit module name -> file (a package is its __init__.py)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("teachfit",) + path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(the teachfit modules `name` imports, its string imports as 'file:line')."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    edges, hidden = set(), []

    def resolve(target: str) -> str | None:  # the module itself, else its closest package
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__"):
            arg = node.args[0] if node.args else None
            literal = isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            # a computed name is allowed only in env.require (third-party modules behind extras)
            if (literal and arg.value.startswith("teachfit")) or (not literal and name != "teachfit.env"):
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
            continue
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "teachfit":
                found = resolve(target)
                if found and found != name:
                    edges.add(found)
    return edges, hidden


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = module_names()
    graph, hidden = {}, []
    for name, path in modules.items():
        graph[name], found = imports_of(name, path, modules)
        hidden += found
    return graph, hidden


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_module_imports_a_module_that_imports_it_back():
    graph, _ = import_graph()
    found = cycles(graph)
    described = ["; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(c)))}" for m in c) for c in found]
    assert not found, "import cycles:\n" + "\n".join(described)


def test_no_hidden_string_imports():
    _, hidden = import_graph()
    assert not hidden, f"importlib/__import__ of a teachfit module by string (import it explicitly): {hidden}"


def test_the_checker_sees_cycles_and_nested_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    modules = {"teachfit.x": tmp_path / "x.py", "teachfit.y": tmp_path / "y.py", "teachfit": tmp_path / "__init__.py"}
    (tmp_path / "x.py").write_text("def f():\n    from . import y\n    from teachfit.y import thing\n")
    assert imports_of("teachfit.x", modules["teachfit.x"], modules)[0] == {"teachfit.y"}


def test_importing_teachfit_loads_no_torch():
    import subprocess
    import sys

    code = ("import sys, teachfit, teachfit.models, teachfit.score.scorers, teachfit.evaluate.pairwise, "
            "teachfit.files; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
