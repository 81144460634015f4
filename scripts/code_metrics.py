"""Functions over 60 lines, modules over 400 lines, project-internal imports inside functions.

The counts behind issue 21's goals, from the project's root:

    python scripts/code_metrics.py                 # edge, convert and calibration
    python scripts/code_metrics.py edge/daemon     # any folders

A function's length runs from its `def` line to its last line (decorators not counted, nested
functions counted in their own right and inside the function that holds them); a module's is its
number of lines. An import inside a function is one `import edge...` / `from convert... import`
statement (absolute, of edge, convert or calibration) anywhere in a function's body.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PROJECT = ("edge", "convert", "calibration")
FUNCTION_LINES = 60
MODULE_LINES = 400


def _project_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.module) and node.level == 0 and node.module.split(".")[0] in PROJECT
    if isinstance(node, ast.Import):
        return any(alias.name.split(".")[0] in PROJECT for alias in node.names)
    return False


def measure(roots: list[str]) -> tuple[list[tuple[int, str]], list[tuple[int, str]], int]:
    long_funcs, long_mods, inner = [], [], 0
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            src = path.read_text()
            lines = len(src.splitlines())
            if lines > MODULE_LINES:
                long_mods.append((lines, str(path)))
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = node.end_lineno - node.lineno + 1
                    if length > FUNCTION_LINES:
                        long_funcs.append((length, f"{path}:{node.lineno} {node.name}"))
                    inner += sum(_project_import(sub) for sub in ast.walk(node))
    return long_funcs, long_mods, inner


def main(argv: list[str]) -> None:
    long_funcs, long_mods, inner = measure(argv or list(PROJECT))
    print(f"functions over {FUNCTION_LINES} lines: {len(long_funcs)}")
    for length, name in sorted(long_funcs, reverse=True):
        print(f"  {length:4d} {name}")
    print(f"modules over {MODULE_LINES} lines: {len(long_mods)}")
    for length, name in sorted(long_mods, reverse=True):
        print(f"  {length:4d} {name}")
    print(f"project-internal imports inside functions: {inner}")


if __name__ == "__main__":
    main(sys.argv[1:])
