"""The shape of the code, read from the source with `ast`: no import cycle, dependencies
that point one way (the layers of the README's "Where to find things"), modules that
stay small, and a client whose request call loads no database driver."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("jobd", "jobd_master", "jobctl")
MAX_MODULE_LINES = 400
MAX_WORKER_LINES = 250

#: Layers, lowest first: a module may import its own layer's package and lower layers,
#: never a higher layer or a sibling package of its own layer.
LAYERS: list[tuple[str, ...]] = [
    ("jobd", "jobd.names", "jobd.users"),  # jobd: the package's __init__ (the version)
    ("jobd.jobs", "jobd.cron", "jobd.config_reader", "jobd.database_url"),
    ("jobd.config_exposure",),
    ("jobd.config",),
    ("jobd.wire", "jobd.store"),
    ("jobd.runtime",),
    ("jobd.worker", "jobd.api"),
    ("jobd.client",),
    ("jobd_master", "jobctl", "jobd.__main__"),
]
#: What each of these may import of ours, beyond itself.
LEAF_IMPORTS = {
    "jobd.names": set(),
    "jobd.config": {
        "jobd.names",
        "jobd.config_reader",
        "jobd.config_exposure",
        "jobd.database_url",
    },
    "jobd.config_exposure": {"jobd.config_reader"},
    "jobd.users": set(),
    "jobd.cron": set(),
    "jobd.wire.checks": {"jobd.names"},
    "jobd.wire.protocol": {"jobd.names", "jobd.wire.checks"},
}
#: Daemon internals jobctl never imports: it is a client of jobd.client and the protocol.
NOT_FOR_JOBCTL = ("jobd.worker", "jobd_master", "jobd.runtime")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, module of ours) for every import that runs (anywhere in the file, inside
    functions too); imports under `if TYPE_CHECKING:` never run and are left out."""

    def walk(node: ast.AST) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                continue
            yield child
            yield from walk(child)

    tree = ast.parse(path.read_text(), str(path))
    for node in walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    yield node.lineno, full
                elif node.module in known:
                    yield node.lineno, node.module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for _, m in imports(path, known) if m != name} for name, path in known.items()}


def layer_of(module: str) -> tuple[int, str]:
    best = (-1, "")
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best[1]):
                best = (rank, prefix)
    return best


def test_there_is_no_import_cycle():
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_one_way():
    wrong = []
    for module, targets in graph().items():
        rank, package = layer_of(module)
        for target in targets:
            target_rank, target_package = layer_of(target)
            sibling = target_rank == rank and target_package != package
            if target_rank > rank or sibling:
                wrong.append(f"{module} ({package}) imports {target} ({target_package})")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_leaf_modules_import_only_what_they_may():
    edges = graph()
    wrong = {m: sorted(edges[m] - allowed) for m, allowed in LEAF_IMPORTS.items()}
    assert not {m: w for m, w in wrong.items() if w}


def test_jobctl_is_a_client_and_never_imports_daemon_internals():
    edges = graph()
    wrong = [
        f"{m} imports {t}"
        for m, targets in edges.items()
        if m.startswith("jobctl")
        for t in targets
        if t.startswith(NOT_FOR_JOBCTL)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_claim_decisions_know_no_sockets_and_no_processes():
    source = (ROOT / "jobd/worker/claims.py").read_text()
    tree = ast.parse(source)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    forbidden = {"zmq", "subprocess", "os", "jobd.worker.launcher", "jobd.worker.runner"}
    assert not names & forbidden


def test_no_module_is_over_400_lines_and_the_worker_is_at_most_250():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
    assert sizes["jobd.worker.worker"] <= MAX_WORKER_LINES


def test_a_request_call_loads_no_database_driver_and_no_cron_library():
    code = (
        "import sys\n"
        "from jobd.client import call, Client, NoAnswer\n"
        "import jobctl.connection\n"
        "heavy = [m for m in ('aiomysql', 'pymysql', 'croniter') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
        "from jobd.client import Jobd\n"
        "print('aiomysql' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    heavy, loaded_with_jobd = done.stdout.splitlines()
    assert heavy == ""  # nothing heavy for a plain request
    assert loaded_with_jobd == "True"  # the job API, asked for, does load it
