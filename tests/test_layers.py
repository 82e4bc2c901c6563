"""The layers of DESIGN.md, read statically: every import of every module under flows/, serving/
and pipelines/ (module-level, function-local and `if TYPE_CHECKING:` ones), parsed with `ast`.

    flows/      ──▶ serving/, pipelines/
    serving/    ──▶ pipelines/          (never flows/)
    pipelines/  ──▶ nothing of ours; no Prefect, FastAPI, Starlette, Ray, MLflow, uvicorn, SSE
    serving/engine imports nothing of serving.http, serving.services, serving.ray
    serving/http imports no mlx, mlx_lm

The layer rules count every import, TYPE_CHECKING ones included: a type-only import still ties a
module to the layer it names. The cycle check counts every import that runs (module-level and
function-local, but not TYPE_CHECKING ones, which never execute): a cycle closed through a lazy
import is still two modules that each need the other, it only fails later (at the call, under a
different import order); annotations naming each other across modules are no such dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("flows", "serving", "pipelines")
PIPELINES_MAY_NOT = (
    "flows",
    "serving",
    "prefect",
    "fastapi",
    "starlette",
    "ray",
    "mlflow",
    "uvicorn",
    "sse_starlette",
)
ENGINE_MAY_NOT = ("serving.http", "serving.services", "serving.ray", "fastapi", "starlette")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (a submodule where `from pkg import sub` names one)
    line: int
    local: bool  # inside a function
    type_only: bool  # under `if TYPE_CHECKING:`

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}"


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_name(p): p for top in OURS for p in sorted((ROOT / top).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return any(
        isinstance(n, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(n)
        for n in ast.walk(test)
    )


def _imports_of(module: str, path: Path) -> Iterator[Import]:
    known = modules()
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]

    def walk(node: ast.AST, local: bool, type_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, local, True)
                for stmt in child.orelse:
                    yield from walk_one(stmt, local, type_only)
            else:
                yield from walk_one(child, local, type_only)

    def walk_one(node: ast.AST, local: bool, type_only: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno, local, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield Import(module, sub if sub in known else source, node.lineno, local, type_only)
        else:
            inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from walk(node, inner, type_only)

    yield from walk(ast.parse(path.read_text(), str(path)), False, False)


@cache
def imports() -> tuple[Import, ...]:
    return tuple(i for m, p in modules().items() for i in _imports_of(m, p))


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_reader_sees_every_kind_of_import() -> None:
    """The walk finds module-level, function-local, TYPE_CHECKING and relative imports."""
    found = {(i.module, i.target): i for i in imports()}
    # module-level
    assert not found[("serving.http.app", "serving.services.rag")].local
    # function-local (serving/services/rag.py imports the retriever lazily)
    assert found[("serving.services.rag", "pipelines.retrieve")].local
    # TYPE_CHECKING
    assert found[("serving.http.deps", "serving.engine.manager")].type_only
    assert len(modules()) > 50


def test_serving_never_imports_flows() -> None:
    bad = [
        str(i) for i in imports() if _under(i.module, ("serving",)) and _under(i.target, ("flows",))
    ]
    assert bad == [], "serving/ may import pipelines/ only; hand it what it needs (a protocol)"


def test_pipelines_imports_nothing_of_ours_but_itself_and_no_orchestration_or_web() -> None:
    bad = [
        str(i)
        for i in imports()
        if _under(i.module, ("pipelines",)) and _under(i.target, PIPELINES_MAY_NOT)
    ]
    assert bad == [], "pipelines/ is the library: no flows/serving, Prefect, FastAPI, Ray, MLflow"


def test_the_engine_knows_nothing_of_http_services_or_ray() -> None:
    bad = [
        str(i)
        for i in imports()
        if _under(i.module, ("serving.engine",)) and _under(i.target, ENGINE_MAY_NOT)
    ]
    assert bad == []


def test_http_knows_nothing_of_mlx() -> None:
    bad = [
        str(i)
        for i in imports()
        if _under(i.module, ("serving.http",)) and _under(i.target, ("mlx", "mlx_lm"))
    ]
    assert bad == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
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
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_our_modules() -> None:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    for i in imports():
        if not i.type_only and i.target in known and i.target != i.module:
            edges[i.module].add(i.target)
    assert _cycles(edges) == []
