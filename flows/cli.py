"""The `gsco` command: the main job, the stages, and the dataset registry.

    gsco run --profile tiny                  # the main job on the embedded tiny profile
    gsco run --profile tiny --set finetune.max_steps=50 --stage generalist
    gsco lineage RUN_ID --out outputs/tiny
    gsco datasets list | show NAME | validate NAME PATH
    gsco tiny-benchmark DIR
    gsco ingest --data-root DIR --out DIR
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

cli = typer.Typer(help="GSCo pipeline: generalist-specialist collaboration as Prefect flows with MLflow lineage.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
datasets_app = typer.Typer(help="The dataset registry (data cards).", no_args_is_help=True)
cli.add_typer(datasets_app, name="datasets")
console = Console(width=None if __import__("sys").stdout.isatty() else 200)


def _error(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` as one line (never read as markup: `[nosuch]` stays) and return the Exit to raise."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _card(name: str):
    """The data card of `name`, or a one-line error naming the registered datasets."""
    from data_contracts.cards import get_card, registry

    try:
        return get_card(name)
    except KeyError:
        raise _error(f"unknown dataset {name!r}; known: {', '.join(sorted(registry()))}") from None


def _writable_folder(path: Path, what: str) -> Path:
    """`path` resolved, if it is a folder or can become one; else a one-line error (before any server starts)."""
    path = Path(path).expanduser().resolve()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise _error(f"{what} {path}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise _error(f"{what} {path}: {existing} is not writable")
    return path


def _prefect_env(out_dir: Path) -> None:
    """Give each outputs folder its own Prefect home unless the user points at a server or home already."""
    from data_contracts.layout import RunLayout

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server's 20 s default start-up budget is too short on a loaded 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # nothing is fetched from a model hub at run time
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        home = RunLayout(Path(out_dir)).prefect_home
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)


@datasets_app.command("list")
def datasets_list(role: Optional[str] = typer.Option(None, help="training or benchmark")) -> None:
    """Every registered dataset with task type, modality, label count and the paper's sizes."""
    from data_contracts.cards import registry

    t = Table(title="GSCo dataset registry (data_contracts/datasets)")
    for col in ("name", "roles", "domain", "task", "type", "modality", "labels", "paper train", "paper test",
                "access", "DGB"):
        t.add_column(col)
    for name, c in registry().items():
        if role and role not in c.roles:
            continue
        ps = c.paper_sizes
        t.add_row(name, ",".join(c.roles), c.domain or "", c.task_kind, c.task_type, c.modality,
                  str(len(c.labels)) if c.labels else "-", _n(ps.train if ps.train is not None else ps.total),
                  _n(ps.test), c.access, "yes" if c.dgb_source else "")
    console.print(t)


def _n(v: int | None) -> str:
    return f"{v:,}" if v is not None else "-"


@datasets_app.command("show")
def datasets_show(name: str) -> None:
    """One data card in full."""
    import yaml

    card = _card(name)
    console.print(yaml.safe_dump(card.model_dump(mode="json", exclude_none=True), sort_keys=False, width=120))


@datasets_app.command("validate")
def datasets_validate(name: str, path: Path, show: int = typer.Option(10, help="problems to list")) -> None:
    """Check a local copy (a data root holding the card's raw.dir, or that folder itself) against the card, and say
    how it compares with the paper's data: the MedMNIST file read (the paper uses 224 px), the split file followed."""
    from tasks.ingest.validate import validate_local_copy

    card = _card(name)
    if not path.exists():
        raise _error(f"{path}: no such folder (pass the data root holding {card.raw.dir!r}, or that folder)")
    report = validate_local_copy(card, path)
    for line in report.lines(show):   # paths and file names print as they are: no markup, no wrapping mid-line
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if report.ok else 1)


@cli.command("tiny-benchmark")
def tiny_benchmark(out: Path, seed: int = 0, scale: float = 1.0) -> None:
    """Write the tiny benchmark (look-alikes of the paper's datasets in their real raw formats) under OUT."""
    from tasks.ingest.tiny_benchmark import generate_tiny_benchmark

    if scale <= 0:
        raise _error(f"--scale {scale}: expected a number > 0")
    written = generate_tiny_benchmark(_writable_folder(out, "OUT"), seed=seed, scale=scale)
    for name, d in written.items():
        console.print(f"{name:16s} {d}")


@cli.command("ingest")
def ingest_cmd(data_root: Path = typer.Option(..., help="folder holding one folder per dataset (card raw.dir)"),
               out: Path = typer.Option(Path("outputs/local"), help="outputs folder (tables, MLflow store)"),
               dataset: list[str] = typer.Option(None, help="only these datasets (repeatable)"),
               policy: str = typer.Option("fail", help="fail | quarantine"),
               uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI (default: SQLite in OUT)"),
               experiment: str = "gsco") -> None:
    """Load, validate and write canonical tables for every dataset present under DATA_ROOT."""
    from data_contracts.layout import RunLayout
    from tasks.ingest.stage import present_datasets
    from tasks.tracking import Tracking, tracking_uri

    # every mistake is one line, before a Prefect server starts
    if policy not in ("fail", "quarantine"):
        raise _error(f"--policy {policy!r}: expected fail or quarantine")
    if not data_root.is_dir():
        raise _error(f"--data-root {data_root}: no such folder")
    for name in dataset or []:
        _card(name)
    try:
        present_datasets(data_root, dataset or None)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise _error(str(e.args[0] if e.args else e)) from None
    out = _writable_folder(out, "--out")
    _prefect_env(out)
    from flows.ingest import ingest

    layout = RunLayout(out)
    tracking = Tracking(uri=tracking_uri(layout, uri), experiment=experiment, out_dir=str(layout.root))
    res = ingest(str(data_root), str(layout.root), tracking, datasets=dataset or None, policy=policy)
    _print_ingest(res, tracking.uri)


@cli.command("run")
def run(profile: str = typer.Option("tiny", help="profile name (infra/profiles) or YAML path"),
        set_: list[str] = typer.Option(None, "--set", help="override, e.g. --set data.policy=quarantine"),
        out: Optional[Path] = typer.Option(None, help="outputs folder (default: the profile's outputs.dir)"),
        stage: list[str] = typer.Option(None, help="only these stage groups (ingest, generalist, specialists, "
                                                   "evaluation) and what they read; repeatable")) -> None:
    """The main job: the `benchmark` flow (every stage, each served from cache when unchanged) on a profile."""
    from infra.profiles import ProfileError, load_profile
    from tasks.plan import stage_groups

    try:  # the whole profile is checked before anything starts: a bad key or value fails in a second
        prof = load_profile(profile, set_ or [])
        stage_groups(stage or None)
    except (ProfileError, ValueError) as e:
        raise _error(str(e)) from None
    out_dir = _writable_folder(Path(out or prof.outputs.dir), "--out" if out else "outputs.dir")
    from data_contracts.files import FolderLockedError, folder_lock_holder
    from data_contracts.layout import RunLayout

    lock = RunLayout(out_dir).run_lock
    try:
        holder = folder_lock_holder(lock)
        if holder:  # refused before any server starts; the flow takes the lock itself
            raise FolderLockedError(lock, "run", holder)
        _prefect_env(out_dir)
        from flows.benchmark import benchmark

        state = benchmark(profile=profile, overrides=set_ or [], out_dir=str(out_dir), stages=stage or None,
                          return_state=True)
        res = state.result(raise_on_failure=False)   # a Failed run (specialist jobs failed) still carries its result
        if isinstance(res, BaseException):
            raise res
    except FolderLockedError as e:  # (also when taken between the check and the flow's start)
        raise _error(str(e)) from None
    t = Table(title="benchmark stages")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("recomputed")
    for k, v in res["stages"].items():
        units = res.get("recomputed", {}).get(k, [])
        t.add_row(k, v, ", ".join(units) if len(units) <= 4 else f"{len(units)} units")
    console.print(t)
    if res["failures"]:
        console.print(f"[red]failed specialist jobs:[/red] {res['failures']}")
    console.print(f"tables:     {Path(res['out_dir']) / 'tables'}")
    if res["report"]:
        console.print(f"report:     {res['report']}")
        console.print(f"            {res['report_md']}")
    console.print(f"MLflow run: {res['mlflow_run_id']}  (store {res['tracking_uri']})")
    console.print(f"lineage:    gsco lineage {res['mlflow_run_id']} --out {out_dir}")
    console.print(f"MLflow UI:  mlflow ui --backend-store-uri {res['tracking_uri']} --host 127.0.0.1")
    if res["failures"]:
        raise typer.Exit(1)


@cli.command("lineage")
def lineage_cmd(run_id: str, out: Path = typer.Option(Path("outputs/tiny"), help="outputs folder of the run"),
                uri: Optional[str] = typer.Option(None, "--tracking-uri", help="MLflow URI (default: SQLite in OUT)"),
                as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The chain from a benchmark run back to datasets, corpus, adapter, specialists and index versions (MLflow)."""
    import json

    from data_contracts.layout import RunLayout
    from tasks.lineage import lineage
    from tasks.tracking import tracking_uri

    from mlflow.exceptions import MlflowException

    layout = RunLayout(out)
    if uri is None and not layout.mlflow_db.is_file():  # reading must never create an empty store
        console.print(f"[red]error:[/red] {layout.mlflow_db}: no MLflow store there; pass the run's outputs folder "
                      "(--out) or its tracking server (--tracking-uri)", soft_wrap=True)
        raise typer.Exit(2)
    try:
        tree = lineage(tracking_uri(layout, uri), run_id)
    except MlflowException as e:
        console.print(f"[red]error:[/red] run {run_id}: not found in {tracking_uri(layout, uri)} "
                      f"({str(e).splitlines()[0][:200]})", soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(tree, indent=2))
        return
    _print_lineage(tree)


def _registered(reg: list[dict]) -> str:
    return ", ".join(f"{r['name']} v{r['version']}" + (f" @{','.join(r['aliases'])}" if r["aliases"] else "")
                     for r in reg) or "-"


def _print_lineage(tree: dict) -> None:
    """The summary (raw data, LanceDB tables, specialists, MedDr), then every stage run with what it read and wrote."""
    s = tree["summary"]
    console.print(f"[bold]run {s['run_id']}[/bold]  commit {s['commit']}  profile {s['profile']}  "
                  f"report written by run {s['report_run_id'] or '-'}", soft_wrap=True)
    t = Table(title="datasets: raw files and canonical tables")
    for col in ("dataset", "raw digest", "source", "splits (rows, digest)"):
        t.add_column(col, overflow="fold")
    for ds, d in s["datasets"].items():
        t.add_row(ds, d["raw_digest"], d["source"] or "-",
                  "\n".join(f"{sp} {e['rows']} {e['digest']}" for sp, e in sorted(d["splits"].items())))
    console.print(t)
    t = Table(title="RAD tables (LanceDB)")
    for col in ("dataset/retriever", "content digest", "LanceDB version", "tag"):
        t.add_column(col, overflow="fold")
    for name, i in s["indexes"].items():
        t.add_row(name, i["digest"], str(i["lancedb_version"]), i["lancedb_tag"] or "-")
    console.print(t)
    t = Table(title="specialists (RAD: the retriever, chosen on validation)")
    for col in ("dataset", "arch", "weights digest", "validation", "RAD", "registered"):
        t.add_column(col, overflow="fold")
    for ds, jobs in s["specialists"].items():
        for j in jobs:
            val = f"{j['val_metric']} {j['val_score']:.4f}" if j["val_score"] is not None else "-"
            t.add_row(ds, j["arch"], j["digest"] or "-", val, "yes" if j["rad_retriever"] else "",
                      _registered(j["registered"]))
    console.print(t)
    t = Table(title="generalist")
    for col in ("model", "digest", "model id", "registered"):
        t.add_column(col, overflow="fold")
    for name, m in s["generalist"].items():
        t.add_row(name, m["digest"] or "-", m["model_id"], _registered(m["registered"]))
    console.print(t)
    for r in [tree["run"], *tree["stages"]]:
        console.print(f"[bold]{r['name']}[/bold]  run {r['run_id']}  ({r['status']})")
        for d in r["datasets"]:
            console.print(f"  {d['context'] or 'input':6s} dataset {d['name']:32s} digest {d['digest']}")
        for m in r["models_in"]:
            console.print(f"  input  model   {m['name']:32s} digest {m['digest']}  ({m['model_id']})")
        for m in r["models_out"]:
            console.print(f"  output model   {m['name']:32s} digest {m['digest']}  ({m['model_id']})")


def _print_ingest(res: dict, store: str) -> None:
    t = Table(title="canonical tables")
    for col in ("dataset", "status", "splits (rows)", "rejects"):
        t.add_column(col)
    for r in res["results"]:
        t.add_row(r["dataset"], r["status"], ", ".join(f"{s} {e['rows']}" for s, e in sorted(r["splits"].items())),
                  str(r["rejects"]))
    console.print(t)
    counts = Counter(r["status"] for r in res["results"])
    console.print(f"tables:     {res['tables_root']}   ({dict(counts)})")
    console.print(f"MLflow run: {res['run_id']}  store {store}")
    console.print(f"MLflow UI:  mlflow ui --backend-store-uri {store}  (then open http://127.0.0.1:5000)")


def app(argv: list[str] | None = None) -> None:
    """The `gsco` command. A usage mistake (unknown option or command, missing argument, bad value) is one line
    naming what was wrong and where to look, like every other error here; `gsco` alone, or a group alone, prints
    its help."""
    import sys

    # typer 0.29 vendors click: its usage errors are these classes, not the `click` package's
    from typer._click.exceptions import NoArgsIsHelpError, UsageError

    try:
        code = cli(args=argv, standalone_mode=False, prog_name="gsco")
    except NoArgsIsHelpError as e:
        e.ctx.get_help()   # typer prints its (rich) help itself
        code = 0
    except UsageError as e:
        where = e.ctx.command_path if e.ctx else "gsco"
        console.print(f"[red]error:[/red] {escape(where)}: {escape(e.format_message())} (see {escape(where)} --help)",
                      soft_wrap=True)
        code = 2
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    app()
