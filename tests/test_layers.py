"""The package's shape, read from the source with ``ast`` (nothing of gradfit is imported).

- The graph of gradfit-internal imports (top level, inside functions and classes, under
  ``if``/``try``; absolute and relative) has no cycle.
- ``gradfit._types`` (the shared nouns) imports nothing of gradfit.
- No file is over 600 lines; no function (methods and nested ones included) has more than 80
  lines of code (def to end, less its docstring, blank lines and comment-only lines).

Edges: ``import gradfit.a.b`` and ``from gradfit.a import b`` (b a module) point at the module
named; ``from gradfit import x`` points at ``gradfit.x`` when x is a submodule, else at the
package ``gradfit`` itself (an upward edge: the package's ``__init__`` must run first), and so
does ``import gradfit``. The package's own ``from gradfit import sweeps as sweeps`` is an edge
``gradfit -> gradfit.sweeps``. The implicit "a submodule's parent package runs first" is not an
edge, so a submodule importing a sibling does not make a cycle through ``__init__``.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gradfit"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


# --------------------------------------------------------------------------- reading the package
def modules(src: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every .py file of ``package`` under ``src``."""
    root = src / package
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def _known(name: str, mods: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is a module of the package (None: not ours)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in mods:
            return candidate
        parts.pop()
    return None


def imports_of(name: str, mods: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in its source."""
    path = mods[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    here = name if _is_package(name, mods) else name.rpartition(".")[0]  # the package relative imports start from
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name, mods)
                if target is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            target = _known(origin, mods)
            if target is None:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if target == origin and submodule in mods:
                    found.add(submodule)  # from pkg import submodule
                else:
                    found.add(target)  # from module import attribute (or *)
    found.discard(name)  # a module naming itself (or the package its own names) is no dependency
    return found


def graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    mods = modules(src, package)
    return {name: imports_of(name, mods) for name in mods}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle (first node repeated at the end) per strongly connected component
    with more than one module, or with a module importing itself (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in edges.get(node, ()):
                        components.append(component)
    return [_a_cycle(sorted(c), edges) for c in components]


def _a_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest import path from the component's first module back to itself (BFS)."""
    inside = set(component)
    start = component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node] & inside):
                if child == start:
                    path = [start]
                    while node != start:
                        path.append(node)
                        node = parent[node]
                    return [start, *reversed(path[1:]), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")


# --------------------------------------------------------------------------- counting lines
def code_lines(source: str) -> set[int]:
    """Line numbers holding code: any token but comments and line ends (a multi-line string
    covers each of its lines)."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(node) -> set[int]:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return set(range(body[0].lineno, body[0].end_lineno + 1))
    return set()


def function_sizes(path: Path) -> list[tuple[str, int, int]]:
    """``(qualified name, def line, lines of code)`` for every function of the file."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    code = code_lines(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            docstrings |= _docstring_lines(node)  # a nested def's or class's docstring is not code either
    out = []

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualname = f"{prefix}{child.name}"
                span = set(range(child.lineno, child.end_lineno + 1))
                out.append((qualname, child.lineno, len((span & code) - docstrings)))
                visit(child, f"{qualname}.<locals>.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


# --------------------------------------------------------------------------- the checks
def test_the_package_is_found_and_read():
    edges = graph()
    assert {"gradfit", "gradfit._types", "gradfit.stream", "gradfit._runner", "gradfit._engine"} <= set(edges)
    # the edges are read (sanity: a known one of each kind)
    assert "gradfit.sweeps" in edges["gradfit"]  # from gradfit import sweeps as sweeps
    assert "gradfit.solver" in edges["gradfit"]  # from gradfit.solver import fit as fit
    assert "gradfit._runner" in edges["gradfit.stream"]  # from gradfit import _runner
    assert "gradfit._driver" in edges["gradfit.stream"]  # from gradfit._driver import CompiledStepper
    assert "gradfit" not in edges["gradfit.stream"]  # submodules only: no upward edge


def test_internal_imports_have_no_cycle():
    edges = graph()
    found = cycles(edges)
    shown = "\n".join("  " + " -> ".join(c) for c in found)
    assert not found, f"import cycles among gradfit's modules:\n{shown}"


def test_types_imports_nothing_of_gradfit():
    edges = graph()
    assert edges["gradfit._types"] == set(), f"gradfit._types imports {sorted(edges['gradfit._types'])}"


def test_no_file_is_over_600_lines():
    too_long = {str(path.relative_to(SRC)): n for path in modules(SRC, PACKAGE).values()
                if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert not too_long, f"files over {MAX_FILE_LINES} lines: {too_long}"


def test_no_function_has_over_80_lines_of_code():
    too_long = [f"{path.relative_to(SRC)}:{line} {name} ({n} lines)"
                for path in modules(SRC, PACKAGE).values()
                for name, line, n in function_sizes(path) if n > MAX_FUNCTION_LINES]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines of code:\n  " + "\n  ".join(too_long)


# --------------------------------------------------------------------------- the checker itself
def _fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return graph(tmp_path, "pkg")


def test_the_reader_sees_every_kind_of_import(tmp_path):
    edges = _fake_package(tmp_path, {
        "__init__.py": "from pkg import a as a\nfrom pkg.b import thing as thing\n",
        "a.py": "import numpy\nimport pkg.b\n",
        "b.py": "def f():\n    from pkg import c\n    return c\nthing = 1\n",
        "c.py": "from . import d\nfrom .sub import e\n",
        "d.py": "if True:\n    from pkg import thing\n",  # a name of the package: upward edge
        "e.py": "class K:\n    def m(self):\n        import pkg\n",
        "sub/__init__.py": "from .. import a\nfrom .e import x\n",
        "sub/e.py": "from ..b import thing\nx = 1\n",
    })
    assert edges == {
        "pkg": {"pkg.a", "pkg.b"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.d", "pkg.sub.e"},
        "pkg.d": {"pkg"},
        "pkg.e": {"pkg"},
        "pkg.sub": {"pkg.a", "pkg.sub.e"},
        "pkg.sub.e": {"pkg.b"},
    }
    assert cycles(edges) == [["pkg", "pkg.b", "pkg.c", "pkg.d", "pkg"]]


def test_submodules_importing_siblings_make_no_cycle_through_the_package(tmp_path):
    edges = _fake_package(tmp_path, {
        "__init__.py": "from pkg import a as a\nfrom pkg import b as b\nfrom pkg.a import f as f\n",
        "a.py": "from pkg import b\nfrom pkg.b import g\n",
        "b.py": "import pkg._types\n",
        "_types.py": "import jax\n",
    })
    assert cycles(edges) == []
    edges = _fake_package(tmp_path, {"b.py": "def late():\n    from pkg import a\n"})  # a function-level cycle
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_function_sizes_skip_docstrings_blanks_and_comments(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "def f(x):\n"
        '    """Doc\n\n    string."""\n'
        "    # a comment\n"
        "\n"
        "    y = '''a\n#not a comment\n'''\n"
        "    def g():\n"
        '        "doc"\n'
        "        return 1  # trailing\n"
        "    return y\n"
        "class C:\n"
        "    async def h(self):\n"
        "        pass\n"
    )
    # f: def, the three lines of y, def g, return 1, return y; g: def, return 1
    assert function_sizes(path) == [("f", 1, 7), ("f.<locals>.g", 10, 2), ("C.h", 15, 2)]


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_the_size_check_would_name_an_offender(tmp_path, limit):
    path = tmp_path / "big.py"
    path.write_text("class A:\n    def big(self):\n" + "".join(f"        x{i} = {i}\n" for i in range(limit)))
    assert function_sizes(path) == [("A.big", 2, limit + 1)]
