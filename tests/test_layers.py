"""The package's layers, as the folders' docstrings state them, checked on every import statement
(top-level and inside functions): a newcomer can trust what a folder may touch."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rl_vlm"
PURE = ("algorithms", "rewards", "data", "models", "config", "batch", "seeds", "errors", "compose")
HEAVY = ("ray", "vllm", "deepspeed")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def test_layers_import_only_downwards() -> None:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        layer = _layer(path)
        for mod in _imports(path):
            parts = mod.split(".")
            target = parts[1] if parts[0] == "rl_vlm" and len(parts) > 1 else None
            if layer in ("distributed", "checkpoint") and target == "driver":
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
            if layer == "distributed" and target == "checkpoint":
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
            if layer in PURE and target in ("driver", "distributed", "checkpoint"):
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
            if layer in PURE and parts[0] in HEAVY:
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)
