"""The codebase keeps its shape: small functions and modules, every output path named in one layout module, the
paper's parts as folders each with a stage module, and work that never calls into a stage."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = [p for d in ("flows", "tasks", "recipes") for p in sorted((REPO / d).rglob("*.py"))]
PARTS = ("ingest", "generalist", "specialists", "rad", "evaluation")
# file names of a run's outputs: spelled in data_contracts/layout.py only
OUTPUT_NAMES = ("done.json", "best.safetensors", "last.pt", "mlflow_run.json", "_synthesis.json", "_inprogress.json",
                "_corpus.json", "finetune_result.json", "loss.jsonl", "mlflow.db", "benchmark_result.json",
                "metrics.parquet", "_gsco_report.json", "ds_config.json", "latest.json", "job.json", "run.json",
                "_gsco_inputs.json", "launcher.log", "mlartifacts", "lancedb", "corpus_internvl", ".device-locks")


def _rel(p: Path) -> str:
    return p.relative_to(REPO).as_posix()


def test_no_function_over_80_lines_and_no_module_over_500():
    long_functions, long_modules = [], []
    for p in CODE:
        src = p.read_text()
        if src.count("\n") > 500:
            long_modules.append(f"{_rel(p)} ({src.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long_functions.append(f"{_rel(p)}:{node.lineno} {node.name}")
    assert not long_functions and not long_modules, (long_functions, long_modules)


def test_output_paths_are_spelled_in_the_layout_module_only():
    pattern = re.compile("|".join(re.escape(f'"{n}"') for n in OUTPUT_NAMES))
    found = [f"{_rel(p)}:{i}: {line.strip()}" for p in CODE + sorted((REPO / "data_contracts").glob("*.py"))
             if p.name != "layout.py" for i, line in enumerate(p.read_text().splitlines(), 1)
             if pattern.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("part", PARTS)
def test_each_part_has_its_stage_and_settings_and_work_never_calls_a_stage(part):
    folder = REPO / "tasks" / part
    assert (folder / "stage.py").is_file() and (folder / "settings.py").is_file()
    for p in sorted(folder.rglob("*.py")):
        if p.name == "stage.py":
            continue
        tree = ast.parse(p.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        stages = sorted(m for m in imported if m.endswith(".stage"))
        assert not stages, f"{_rel(p)} (work) imports the stage module(s) {stages}"


def test_prefect_is_imported_by_flows_only():
    files = [p for d in ("tasks", "recipes", "data_contracts", "infra") for p in sorted((REPO / d).rglob("*.py"))]
    users = [_rel(p) for p in files if re.search(r"^\s*(from|import) prefect\b", p.read_text(), re.M)]
    assert not users, users
