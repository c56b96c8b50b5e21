"""The project's own import-linter contract (``make lint``; declared in pyproject.toml's
``[tool.importlinter]``): no circle of modules.

import-linter's ``acyclic_siblings`` judges packages as wholes, so a front end kept inside a package (the
evaluations' command line, which builds a service) would read as a circle between the package and the
facade, which forwards to that package's runner. This contract judges modules: a module may not import
itself back through others. Every import counts, lazy ones (inside a function) and those made only for
type checking included, since grimp reads them all.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def circles(graph: ImportGraph, roots: set[str]) -> list[list[str]]:
    """Every circle of modules under ``roots`` (strongly connected sets of more than one module, or one that
    imports itself), each as a path that starts at its first module and returns to it."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in roots)
    edges = {
        m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d.split(".")[0] in roots) for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(m: str) -> None:  # Tarjan's strongly connected components
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for d in edges[m]:
            if d not in index:
                visit(d)
                low[m] = min(low[m], low[d])
            elif d in on_stack:
                low[m] = min(low[m], index[d])
        if low[m] == index[m]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == m:
                    break
            if len(group) > 1 or m in edges[m]:
                found.append(_path(sorted(group), edges))

    for m in modules:
        if m not in index:
            visit(m)
    return sorted(found)


def _path(group: list[str], edges: dict[str, list[str]]) -> list[str]:
    """A walk through the circle from its first module back to it (breadth first: the shortest)."""
    start, members = group[0], set(group)
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for m in frontier:
            for d in edges[m]:
                if d == start:
                    path = [m]
                    while path[-1] != start:
                        path.append(came[path[-1]])
                    return [*reversed(path), start]
                if d in members and d not in came:
                    came[d] = m
                    nxt.append(d)
        frontier = nxt
    return [*group, start]


class AcyclicModules(Contract):
    """No circle of modules under ``roots``."""

    type_name = "acyclic_modules"
    roots = fields.SetField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        found = circles(graph, set(self.roots))  # type: ignore[call-overload]  # a SetField, read as a set
        return ContractCheck(kept=not found, metadata={"circles": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for path in check.metadata["circles"]:
            output.print_error(" -> ".join(path))
            output.new_line()
