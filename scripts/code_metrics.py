"""Functions over 60 lines, modules over 400 lines, project-internal imports inside functions."""
import ast, sys
from pathlib import Path
roots = sys.argv[1:] or ["edge", "convert", "calibration"]
long_funcs, long_mods, inner = [], [], 0
for root in roots:
    for p in sorted(Path(root).rglob("*.py")):
        src = p.read_text(); n = len(src.splitlines())
        if n > 400: long_mods.append((n, str(p)))
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60: long_funcs.append((length, f"{p}:{node.lineno} {node.name}"))
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.split(".")[0] in ("edge", "convert", "calibration") and sub.level == 0:
                        inner += 1
                    elif isinstance(sub, ast.Import) and any(a.name.split(".")[0] in ("edge","convert","calibration") for a in sub.names):
                        inner += 1
print(f"functions over 60 lines: {len(long_funcs)}")
for l, n in sorted(long_funcs, reverse=True): print(f"  {l:4d} {n}")
print(f"modules over 400 lines: {len(long_mods)}")
for l, n in sorted(long_mods, reverse=True): print(f"  {l:4d} {n}")
print(f"project-internal imports inside functions: {inner}")
