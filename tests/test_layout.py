"""The layout of docs/design.md, checked statically (Python's ast, nothing imported): dependencies run
one way, convert -> calibration -> edge; edge's modules import each other without a cycle; no two
packages import each other both ways; results.db has one owner, edge.results, the only package
that imports sqlite3 or holds SQL; and logging is set up in one place, edge/cli.py.

Every import counts for the packages, the ones inside functions too: a lazy import is still a
dependency, only a later one."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "convert", "calibration")
# Which packages each package may import (besides itself).
ALLOWED = {"convert": {"calibration", "edge"}, "calibration": {"edge"}, "edge": set()}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. edge.bench.table
    target: str  # the imported module, e.g. edge.bench.stats
    where: str  # file:line, for the message
    module_level: bool  # run when the module is imported (not inside a function)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return True
    return False


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every import in the file; `from a.b import c` names a.b.c when that is a module, else a.b."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"
        found += [Import(name, t, where, not _in_function(node, parents)) for t in targets]
    return found


def all_imports() -> list[Import]:
    modules = project_modules()
    return [i for name, path in modules.items() for i in imports_of(name, path, modules)]


def top(module: str) -> str:
    return module.partition(".")[0]


def test_packages_depend_one_way():
    wrong = sorted(
        {
            f"{i.where}: {i.source} imports {i.target}"
            for i in all_imports()
            if top(i.target) in PACKAGES
            and top(i.target) != top(i.source)
            and top(i.target) not in ALLOWED[top(i.source)]
        }
    )
    assert not wrong, "imports against convert -> calibration -> edge:\n" + "\n".join(wrong)


def test_edge_names_no_host_module_in_strings():
    """edge cannot reach the host side through importlib either: no string in edge names a module of
    convert or calibration ("convert.x" or "convert.x:function")."""
    wrong = []
    for name, path in project_modules().items():
        if top(name) != "edge":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                head = node.value.split(":")[0].split(".")
                if (
                    head[0] in ("convert", "calibration")
                    and len(head) > 1
                    and all(p.isidentifier() for p in head)
                ):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not wrong, "\n".join(wrong)


HOST_COMMANDS = ("train", "train-detector", "weights", "quantize", "compile", "export")


def test_host_commands_are_plugins_listed_without_importing_them():
    """The training host's commands reach `edge` as plugins (pyproject.toml, entry points
    "edge.commands"): `edge --help` lists them, and edge's own, without importing any command, convert
    or TensorFlow; each line is what click makes from the imported command."""
    from edge.cli import COMMANDS, cli, plugins

    assert set(HOST_COMMANDS) <= set(plugins()), "entry points missing: pip install -e . again"
    assert not set(HOST_COMMANDS) & set(COMMANDS)
    code = (
        "import json, sys\n"
        "from edge.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('edge', 'convert', 'calibration', 'tensorflow'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = proc.stdout.strip().splitlines()
    imported = json.loads(out[-1])
    assert not [m for m in imported if m.startswith(("convert", "tensorflow", "edge.commands"))], imported
    assert [line.split()[0] for line in out[out.index("Commands:") + 1 : -1]] == cli.list_commands(None)
    for name in cli.list_commands(None):  # the line read from the source is the imported command's
        assert cli.help_line(None, name, 60) == cli.get_command(None, name).get_short_help_str(60)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def edge_graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in all_imports():
        if top(i.source) == top(i.target) == "edge" and (i.module_level or not module_level_only):
            graph.setdefault(i.source, set()).add(i.target)
    return graph


def test_edge_has_no_import_cycle_at_module_level():
    cycles = _cycles(edge_graph(module_level_only=True))
    assert not cycles, "modules of edge that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_edge_has_no_import_cycle_through_lazy_imports_either():
    """A cycle hidden in a function cannot fail at import time, but it is still two modules that need
    each other; the one exception is a package loading its plugins by name (edge.runtime), which the
    static graph does not see."""
    cycles = _cycles(edge_graph(module_level_only=False))
    assert not cycles, "modules of edge that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_imports_inside_functions_relative_ones_and_cycles(tmp_path):
    """The tests above would pass vacuously if the parser missed imports; check it on a known file."""
    modules = {"edge.a": Path("a.py"), "edge.b": Path("b.py"), "convert.c": Path("c.py")}
    src = tmp_path / "a.py"
    src.write_text("from . import b\ndef f():\n    from convert import c\n")
    found = imports_of("edge.a", src, modules)
    assert {(i.target, i.module_level) for i in found} == {("edge.b", True), ("convert.c", False)}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# -- packages that need each other -----------------------------------------------------------------


def subpackages(modules: dict[str, Path]) -> list[str]:
    """Every package below the top-level ones: edge.daemon, edge.daemon.mqtt, edge.lab, convert.commands..."""
    return sorted(m for m, path in modules.items() if path.name == "__init__.py" and "." in m)


def inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def packages_both_ways(imports: list[Import], packages: list[str]) -> dict[tuple[str, str], list[str]]:
    """Pairs of packages, neither inside the other, that each import the other (a package counts with
    its subpackages); for each pair, where every import between them is. A package and its own
    subpackages are one thing seen from outside; inside, the module cycle tests above apply."""
    edges: dict[tuple[str, str], list[str]] = {}
    for i in imports:
        for a in (p for p in packages if inside(i.source, p)):
            for b in (p for p in packages if inside(i.target, p) and not inside(p, a) and not inside(a, p)):
                edges.setdefault((a, b), []).append(f"{i.where}: {i.source} imports {i.target}")
    return {(a, b): edges[a, b] + edges[b, a] for a, b in edges if a < b and (b, a) in edges}


def test_no_two_packages_import_each_other():
    """Two packages that need each other are one package, or share something that belongs below both
    (the class catalogue, the results database): the daemon and the lab, for one, do not."""
    both = packages_both_ways(all_imports(), subpackages(project_modules()))
    assert not both, "packages that import each other both ways:\n" + "\n".join(
        f"{a} <-> {b}:\n  " + "\n  ".join(where) for (a, b), where in both.items()
    )


def test_the_package_check_sees_a_pair_through_subpackages_and_lazy_imports():
    packages = ["edge.a", "edge.a.x", "edge.b", "edge.c"]
    imports = [
        Import("edge.a.x.m", "edge.b.n", "a/x/m.py:1", True),
        Import("edge.b.n", "edge.a", "b/n.py:9", False),  # lazy, and into the parent package
        Import("edge.a.m", "edge.a.x.m", "a/m.py:1", True),  # a package and its own subpackage
        Import("edge.c.m", "edge.a.m", "c/m.py:1", True),  # one way only
    ]
    # edge.b imports edge.a itself, not edge.a.x: the pair is the parents'
    assert list(packages_both_ways(imports, packages)) == [("edge.a", "edge.b")]


# -- one owner of results.db -----------------------------------------------------------------------

RESULTS = "edge.results"
# SQL as this project writes it (upper-case keywords), in any string or f-string of a module.
SQL = re.compile(
    r"\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM"
    r"|(CREATE|DROP)\s+(TABLE|(UNIQUE\s+)?INDEX|VIEW|TRIGGER)|ALTER\s+TABLE|PRAGMA\s+\w+"
    r"|BEGIN\s+(IMMEDIATE|EXCLUSIVE|DEFERRED|TRANSACTION)|ROLLBACK|COMMIT)\b",
    re.S,
)
DB_CALLS = ("execute", "executemany", "executescript")


def _strings(tree: ast.AST):
    """(line, text) of every string; an f-string whole, its placeholders as 'x'."""
    in_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            in_fstrings.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            yield node.lineno, text
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings:
            yield node.lineno, node.value


def database_code(path: Path) -> list[str]:
    """line: what, for every sqlite3 import, SQL string and execute call in the file, in line order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        found += [(node.lineno, f"imports {n}") for n in names if n.partition(".")[0] == "sqlite3"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in DB_CALLS:
            found.append((node.lineno, f"calls .{node.func.attr}()"))
    found += [
        (line, f"SQL {SQL.search(text).group(0)[:40]!r}") for line, text in _strings(tree) if SQL.search(text)
    ]
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_only_the_results_package_touches_the_database():
    """results.db has one owner: the schema, its migrations and every query are in edge.results; the
    daemon, the lab and MQTT call it (docs/design.md)."""
    wrong = [
        f"{path.relative_to(ROOT)}:{what}"
        for name, path in project_modules().items()
        if not inside(name, RESULTS)
        for what in database_code(path)
    ]
    assert not wrong, "database code outside edge/results:\n" + "\n".join(wrong)


def test_every_connection_is_opened_in_one_place():
    """sqlite3.connect is called once, in edge.results.schema.connect: the timeout, the autocommit mode
    and the thread rule of every connection to results.db are declared there."""
    calls = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in project_modules().values()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "sqlite3.connect"
    ]
    assert [c.partition(":")[0] for c in calls] == ["edge/results/schema.py"], calls


def test_the_database_check_sees_sql_imports_and_calls(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import sqlite3\n"
        "from sqlite3 import Row\n"
        "def f(db, table):\n"
        "    db.execute(f'UPDATE {table} SET ended = 1')\n"
        "    return 'SELECT id\\n FROM sessions'\n"
        "HELP = 'Select the frames from a folder; update the page; commit to a label'\n"
    )
    assert [line.split(":")[0] for line in database_code(src)] == ["1", "2", "4", "4", "5"]


# -- logging set up once ---------------------------------------------------------------------------

LOGGING_SETUP = "edge.cli"  # setup_logging: the one handler, installed before any sub-command runs
SETUP_CALLS = ("basicConfig", "addHandler", "dictConfig", "fileConfig")


def logging_setup(path: Path) -> list[str]:
    """line: what, for every call that configures handlers (logging.basicConfig, x.addHandler,
    logging.config.dictConfig/fileConfig) and every assignment to a logger's `handlers`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in SETUP_CALLS:
                found.append((node.lineno, f"calls {name}()"))
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            targets = []
        for target in targets:
            target = target.value if isinstance(target, ast.Subscript) else target
            if isinstance(target, ast.Attribute) and target.attr == "handlers":
                found.append((node.lineno, "sets .handlers"))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_logging_is_set_up_in_the_cli_only():
    """Modules log through logging.getLogger(__name__); the handler (the terminal's streams, edge run's
    time stamps) is installed once, by edge/cli.py. A second handler anywhere prints lines twice or in
    another shape depending on which command imported what (docs/design.md)."""
    wrong = [
        f"{path.relative_to(ROOT)}:{what}"
        for name, path in project_modules().items()
        if name != LOGGING_SETUP
        for what in logging_setup(path)
    ]
    assert not wrong, "logging configured outside edge/cli.py:\n" + "\n".join(wrong)
    assert logging_setup(project_modules()[LOGGING_SETUP]), "edge/cli.py no longer sets up logging"


def test_the_logging_check_sees_handlers_configured(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import logging, logging.config\n"
        "from logging import basicConfig\n"
        "log = logging.getLogger(__name__)\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "def f(handler):\n"
        "    log.addHandler(handler)\n"
        "    log.handlers[:] = [handler]\n"
        "    logging.getLogger('x').handlers = []\n"
        "    logging.config.dictConfig({})\n"
        "    basicConfig()\n"
        "    log.info('basicConfig and addHandler in a message are not calls')\n"
    )
    assert [line.split(":")[0] for line in logging_setup(src)] == ["4", "6", "7", "8", "9", "10"]
