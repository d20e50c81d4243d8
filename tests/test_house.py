"""House rules checked on the source: the package's import graph has no cycle (every `from . import` / `from .x import`
in src/, at module level or inside functions), stages never import the orchestrator, and no function is over 60 lines
without a `# long:` comment on its first line saying why."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "introspect"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the package modules it imports. `from . import x` counts as importing x, not the package."""
    files = {module_name(p, src): p for p in src.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level):
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            subs = {f"{target}.{a.name}" for a in node.names} & set(files)
            if subs:
                deps |= subs
            if node.module and target in files:
                deps.add(target)
        graph[mod] = deps - {mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "introspect"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(pkg)) == [["introspect.a", "introspect.b"]]


def test_src_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "introspect.stages.evaluate" in graph and "introspect.pipeline" in graph
    assert cycles(graph) == []


def test_stages_never_import_the_orchestrator() -> None:
    graph = import_graph()
    stages = [m for m in graph if m.startswith("introspect.stages")]
    assert len(stages) >= 6
    assert not [m for m in stages if "introspect.pipeline" in graph[m]]


MAX_LINES = 60


def long_functions(src: Path = SRC) -> list[str]:
    """Functions over MAX_LINES lines whose `def` line carries no `# long: why` comment."""
    found = []
    for path in sorted(src.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_LINES and "# long:" not in lines[node.lineno - 1]:
                    found.append(f"{path.relative_to(src.parent)}:{node.lineno} {node.name} ({size} lines)")
    return found


def test_the_length_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\ndef excused():  # long: a table of cases\n{body}")
    assert [f.split(" ")[1] for f in long_functions(tmp_path)] == ["long"]


def test_no_function_over_60_lines_without_a_reason() -> None:
    assert long_functions() == []


def test_config_reference_is_current_and_every_field_is_documented() -> None:
    import importlib.util

    script = SRC.parents[1] / "tools" / "config_docs.py"
    spec = importlib.util.spec_from_file_location("config_docs", script)
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    text = docs.page()
    undocumented = [ln for ln in text.splitlines() if ln.endswith("| — |")]
    assert undocumented == [], "document these fields where they are defined"
    assert (SRC.parents[1] / "docs" / "config.md").read_text() == text, "run python tools/config_docs.py"


def test_compare_tells_identical_runs_from_different_ones(tmp_path: Path, capsys) -> None:
    import json
    import shutil

    import pandas as pd

    from introspect import cli
    from introspect.tables import write_table

    run = tmp_path / "a"
    (run / "train").mkdir(parents=True)
    (run / "eval" / "step_000001").mkdir(parents=True)
    (run / "train" / "metrics.jsonl").write_text(json.dumps({"step": 1, "explanation": 1.5, "behavior_kl": 0.1}) + "\n")
    score = {"value": 0.5, "ci": [0.4, 0.6]}
    res = {"checkpoints": {"1": {"self": {"exact_match": score}, "orig": {"exact_match": score},
                                 "self_minus_orig": {"exact_match": {"value": 0.0, "ci": [-0.1, 0.1]}}}}}
    (run / "eval" / "results.json").write_text(json.dumps(res))
    items = pd.DataFrame({"text": ["x", "y"], "answer": ["A", "B"], "answer_without": ["A", "C"]})
    write_table(run / "eval" / "step_000001" / "items.parquet", items, {"inputs": {}})
    shutil.copytree(run, tmp_path / "b")
    assert cli.main(["compare", str(run), str(tmp_path / "b")]) == 0
    items.loc[1, "answer"] = "C"
    write_table(tmp_path / "b" / "eval" / "step_000001" / "items.parquet", items, {"inputs": {}})
    assert cli.main(["compare", str(run), str(tmp_path / "b")]) == 1
    assert "behaviour False" in capsys.readouterr().out
    assert cli.main(["compare", str(run), str(tmp_path / "b" / "x.csv")]) == 2


def test_compare_two_behaviour_tables(tiny_tables, tmp_path: Path) -> None:
    import json

    from introspect import cli

    beh, _ = tiny_tables
    out = tmp_path / "agreement.json"
    assert cli.main(["compare", str(beh), str(beh), "--out", str(out)]) == 0
    agreement = json.loads(out.read_text())["agreement"]
    assert set(agreement.values()) == {1.0} and len(agreement) == 4
