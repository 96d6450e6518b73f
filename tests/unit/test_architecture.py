"""ARCHITECTURE.md's claims that a test can check (the import rules are lint-imports contracts in pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

from mixvfs.cache import errors

REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = (REPO / "ARCHITECTURE.md").read_text()


def modules_in_the_table() -> set[str]:
    """The modules the "Packages and layers" table names, as paths under mixvfs/ (a folder cell holds until
    the next one)."""
    table = ARCHITECTURE.split("| folder | module | responsibility |", 1)[1].split("\n\n", 1)[0]
    named, folder = set(), ""
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        folder = cells[0].strip("`") or folder
        if folder.endswith(".py"):
            named.add(folder)
        named.update(folder + module for module in re.findall(r"`([a-z_]+\.py)`", cells[1]))
    return named


def test_the_module_table_names_every_product_module_and_no_other():
    real = {str(p.relative_to(REPO / "mixvfs")) for p in (REPO / "mixvfs").rglob("*.py") if p.name != "__init__.py"}
    assert modules_in_the_table() | {"host.py"} == real  # host.py has a paragraph of its own above the table


def test_the_error_tree_is_drawn_as_errors_py_has_it():
    drawn = {  # class: its parent, as the section "The error tree" says
        "ConfigError": "MixvfsError", "CacheError": "MixvfsError", "CorruptBlob": "CacheError",
        "FetchError": "MixvfsError", "NotKept": "FetchError",
        "SourceMissing": "FetchError", "Cancelled": "FetchError", "PermanentHttpError": "FetchError",
        "AuthRejected": "PermanentHttpError", "BadBody": "FetchError", "LengthMismatch": "BadBody",
        "NotAudio": "BadBody", "ContentChanged": "BadBody", "NoSpace": "FetchError",
        "ServerWaitTooLong": "FetchError", "RequestWaitExceeded": "FetchError", "NotForPreview": "FetchError",
        "TransientError": "FetchError", "ServerBusy": "TransientError", "ServerAskedToWait": "ServerBusy",
        "NetworkError": "TransientError", "ServerUnreachable": "NetworkError", "StallTimeout": "TransientError",
        "CertificateNotTrusted": "ServerUnreachable", "NotAnswering": "StallTimeout",
    }
    section = ARCHITECTURE.split("## The error tree", 1)[1].split("\n## ", 1)[0]
    ours = {name for name, value in vars(errors).items()
            if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__}
    assert set(re.findall(r"`([A-Z][A-Za-z]+)`", section)) == {*drawn, "MixvfsError"} == ours
    for name, parent in drawn.items():
        assert getattr(errors, parent) in getattr(errors, name).__bases__, name


def import_cycles(package: str) -> list[set[str]]:
    """The groups of modules that import each other, directly or around a circle (Tarjan's strongly connected
    components over the imports as grimp reads them from the source, function-level imports included)."""
    import grimp  # import-linter's own graph builder

    graph = grimp.build_graph(package)
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[set[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(group)

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return cycles


def test_no_module_of_the_package_imports_itself_around_a_circle():
    assert import_cycles("mixvfs") == []
