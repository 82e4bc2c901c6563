"""The serving layers' import directions (DESIGN.md, Shape): the engine knows nothing of HTTP or
of the services (which speak OpenAI's wire), and HTTP knows nothing of MLX."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"


def _imports(package: str) -> dict[str, set[str]]:
    """Every module a package's files import (at any depth: lazy imports count too)."""
    out: dict[str, set[str]] = {}
    for path in sorted((SERVING / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        out[str(path.relative_to(SERVING.parent))] = names
    return out


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("engine", ("serving.http", "serving.services", "serving.ray", "fastapi")),
        ("http", ("mlx", "mlx_lm")),
    ],
)
def test_layer_imports(package: str, forbidden: tuple[str, ...]) -> None:
    bad = {
        path: sorted(n for n in names if n.split(".")[0] in forbidden or n.startswith(forbidden))
        for path, names in _imports(package).items()
    }
    assert not {p: n for p, n in bad.items() if n}, bad
