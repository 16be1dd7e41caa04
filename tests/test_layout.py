"""The package's shape, checked from its source: import rules, module sizes, one home per default."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

from streamseg.config import SECTIONS

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("imports_doc", ROOT / "docs" / "imports.py")
imports_doc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(imports_doc)

LONG_MODULES = {
    "streamseg/config.py": "the one home of every setting: each key with its docstring",
    "streamseg/runtime/link.py": "the link protocol and both of its ends, written down in one place",
    "streamseg/runtime/messages.py": "every type the wire carries, with its checks: the codec's contract in one place",
    "streamseg/runtime/worker.py": "the runtime's two loops and the link servicing they share",
}
"""Modules allowed over 400 lines, and why."""


def test_imports_have_no_cycles_and_keep_their_layers() -> None:
    graph = imports_doc.imports(imports_doc.modules())
    assert imports_doc.broken_rules(graph) == []
    assert "streamseg.stages" in graph["streamseg.runtime.worker"]  # the table, by name
    assert not any(t.startswith("streamseg.stages.") for t in graph["streamseg.runtime.worker"])


def test_the_rules_catch_a_cycle_and_a_layer_broken() -> None:
    graph = {"streamseg.a": {"streamseg.b": True}, "streamseg.b": {"streamseg.a": True},
             "streamseg.config": {"streamseg.plan": True},
             "streamseg.runtime.worker": {"streamseg.stages.decode": True}}
    problems = imports_doc.broken_rules(graph)
    assert any("cycle" in p for p in problems)
    assert any(p.startswith("streamseg.config imports") for p in problems)
    assert any(p.startswith("streamseg.runtime.worker imports") for p in problems)


def test_the_import_picture_is_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "imports.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_no_module_is_long_without_a_reason() -> None:
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines())
            for p in (ROOT / "streamseg").rglob("*.py") if len(p.read_text().splitlines()) > 400}
    assert set(long) <= set(LONG_MODULES), long


CONFIG_DEFAULTS: dict[str, set] = {}
for _cls in SECTIONS.values():
    for _f in dataclasses.fields(_cls):
        if _f.default is not dataclasses.MISSING and _f.default is not None:
            CONFIG_DEFAULTS.setdefault(_f.name, set()).add(_f.default)
"""Config key -> its default value(s) (a name may be a key of several sections)."""


def _literal_defaults(tree: ast.AST) -> list[tuple[str, int]]:
    """(name, line) of parameters and class fields that repeat a config key's default: the same name,
    and a literal default equal to the key's."""
    def repeats(name: str, value: ast.AST | None) -> bool:
        return (isinstance(value, ast.Constant) and value.value not in (None, "") and name in CONFIG_DEFAULTS
                and any(value.value == d and type(value.value) is type(d) for d in CONFIG_DEFAULTS[name]))

    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += list(zip(args.kwonlyargs, args.kw_defaults))
            found += [(a.arg, node.lineno) for a, d in pairs if repeats(a.arg, d)]
        elif isinstance(node, ast.ClassDef):
            found += [(item.target.id, item.lineno) for item in node.body
                      if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                      and repeats(item.target.id, item.value)]
    return found


def test_only_config_states_the_default_of_a_config_key() -> None:
    offenders = {}
    for path in (ROOT / "streamseg").rglob("*.py"):
        if path.name == "config.py" and path.parent.name == "streamseg":
            continue
        # the tools' own options (a scene's seed, a training run's threads) are not the pipeline's keys
        hits = [(name, line) for name, line in _literal_defaults(ast.parse(path.read_text()))
                if not (name in ("seed", "threads", "crf") and "tools" in path.parts)]
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert offenders == {}


def test_the_default_check_sees_a_literal_default() -> None:
    tree = ast.parse("def f(x, hwm_frames=4, *, score_thresh=0.5, mask_thresh=0.9, other=1, weights=None): ...\n"
                     "class C:\n    max_batch: int = 4\n    name: str = CONFIG.name\n")
    assert sorted(n for n, _ in _literal_defaults(tree)) == ["hwm_frames", "max_batch", "score_thresh"]
