"""Draw streamseg's import graph as a Mermaid diagram in docs/imports.md, and check its rules.

    python docs/imports.py          # rewrite docs/imports.md
    python docs/imports.py --check  # exit 1 if docs/imports.md is stale or a rule is broken

Modules are read with :mod:`ast` (nothing is imported). An edge A --> B means A imports B at
module level; A -.-> B, inside a function (imported on first use).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streamseg"
OUT = ROOT / "docs" / "imports.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(mods: dict[str, Path]) -> dict[str, dict[str, bool]]:
    """Module -> {imported streamseg module: whether at module level}."""
    graph: dict[str, dict[str, bool]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        top = {id(node) for node in tree.body}
        found: dict[str, bool] = {}

        def add(target: str, node: ast.AST) -> None:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                found[target] = found.get(target, False) or id(node) in top

        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if not source.startswith("streamseg"):
                    continue
                for alias in node.names:  # `from . import codec` names a module
                    add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in mods else source, node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("streamseg"):
                        add(alias.name, node)
        graph[name] = found
    return graph


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Cycles among module-level imports (each once, as found by a depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target, top in graph.get(node, {}).items():
            if not top:
                continue
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return found


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ("runtime", "stages", "models",
                                                                            "formats", "tools")) else name


ORCHESTRATION = {"streamseg.plan", "streamseg.pipeline", "streamseg.supervisor", "streamseg.summary",
                 "streamseg.health", "streamseg.remote", "streamseg.cli"}


def broken_rules(graph: dict[str, dict[str, bool]]) -> list[str]:
    """The layering the README promises, checked."""
    problems = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for name, targets in graph.items():
        for target in targets:
            if name in ("streamseg.config", "streamseg.errors") and target != "streamseg.errors":
                problems.append(f"{name} imports {target}: config and errors import nothing else of streamseg")
            if name.startswith("streamseg.runtime") and (target in ORCHESTRATION or
                                                         target.startswith("streamseg.stages.")):
                problems.append(f"{name} imports {target}: the runtime imports no stage module and no orchestration")
            if name.startswith(("streamseg.stages", "streamseg.formats", "streamseg.models")) \
                    and target in ORCHESTRATION:
                problems.append(f"{name} imports {target}: stages, formats and models import no orchestration")
    return problems


def mermaid(graph: dict[str, dict[str, bool]]) -> str:
    groups: dict[str, list[str]] = {}
    for name in graph:
        groups.setdefault(layer(name) if layer(name) != name else "", []).append(name)

    def node(name: str) -> str:
        return name.replace(".", "_")

    lines = ["```mermaid", "flowchart LR"]
    for group, names in sorted(groups.items()):
        if group:
            lines.append(f"  subgraph {group}")
        for name in names:
            lines.append(f"    {node(name)}[{name.removeprefix('streamseg.')}]")
        if group:
            lines.append("  end")
    for name, targets in sorted(graph.items()):
        for target, top in sorted(targets.items()):
            lines.append(f"  {node(name)} {'-->' if top else '-.->'} {node(target)}")
    lines.append("```")
    return "\n".join(lines)


def render() -> str:
    graph = imports(modules())
    return ("# streamseg's imports\n\n"
            "Written by `python docs/imports.py` from the source (`--check` tells whether it is stale). "
            "A solid arrow is an import at module level, a dotted one an import inside a function "
            "(on first use: torch, the stage classes in a worker). The rules it checks: no cycles; "
            "`config` and `errors` import nothing else of streamseg; the runtime imports no stage "
            "module and no orchestration (it finds a stage's class by name in the `STAGES` table); "
            "stages, formats and models import no orchestration.\n\n" + mermaid(graph) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when stale or broken")
    args = parser.parse_args()
    problems = broken_rules(imports(modules()))
    for problem in problems:
        print(problem, file=sys.stderr)
    text = render()
    if args.check:
        stale = not OUT.exists() or OUT.read_text() != text
        if stale:
            print(f"{OUT.relative_to(ROOT)} is stale: run python docs/imports.py", file=sys.stderr)
        return int(bool(problems) or stale)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)
    return int(bool(problems))


if __name__ == "__main__":
    sys.exit(main())
