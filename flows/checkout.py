"""The pull step of every deployment of this project (prefect.yaml, infra/deployments/kubernetes.yaml): a flow run
starts in the checkout its worker names with GSCO_REPO.

    pull:
      - flows.checkout.enter_checkout: {}

Prefect's own `set_working_directory` with "{{ $GSCO_REPO }}" renders an unset variable as "" and stays in the
worker's temporary folder, where the run then crashes with a FileNotFoundError on that folder. Here an unset or wrong
GSCO_REPO ends the flow run Failed with one line naming it (the state message and the run's log).
"""
from __future__ import annotations

import os
from pathlib import Path

ENTRYPOINT = Path("flows") / "benchmark.py"     # what every deployment's entrypoint needs to find


class CheckoutError(RuntimeError):
    """The worker's GSCO_REPO is unset or names no checkout."""


def checkout_problem(variable: str = "GSCO_REPO") -> str | None:
    """One line saying what is wrong with `variable` as a checkout, or None when it names one."""
    value = os.environ.get(variable, "").strip()
    if not value:
        return (f"{variable} is not set in this worker's environment: start the worker with {variable}=<the "
                "gsco-pipeline checkout flows run from> (the image of infra/Dockerfile sets /opt/gsco)")
    if not (Path(value).expanduser() / ENTRYPOINT).is_file():
        return f"{variable}={value}: not a gsco-pipeline checkout (no {ENTRYPOINT} there)"
    return None


def _fail_flow_run(message: str) -> None:
    """Mark the flow run this process prepares Failed with `message` (the worker's later Crashed is refused for a
    run already finished, so the one line stays what the UI and `prefect flow-run inspect` show)."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            flow_run_logger(client.read_flow_run(flow_run_id)).error(message)
            client.set_flow_run_state(flow_run_id, Failed(message=message), force=True)
    except Exception:  # noqa: BLE001 - the server unreachable: the CheckoutError still says what is wrong
        pass


def enter_checkout(variable: str = "GSCO_REPO") -> dict[str, str]:
    """{"directory": the checkout}, after changing into it; a one-line CheckoutError (and the flow run Failed with
    it) when `variable` is unset or names no gsco-pipeline checkout."""
    problem = checkout_problem(variable)
    if problem:
        _fail_flow_run(problem)
        raise CheckoutError(problem)
    path = Path(os.environ[variable].strip()).expanduser().resolve()
    os.chdir(path)
    return {"directory": str(path)}
