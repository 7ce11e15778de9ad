"""What a run shows in Prefect while it works: the work's own log lines (tasks/logs.py: `gsco.*` loggers) in the log
of the task or flow run they happen in, cache hits as task runs in a Completed state named Cached, and the device
slots as a Prefect tag limit, so queued jobs wait as Pending instead of showing Running.

    return as_state(result, cached=result["status"] == "cached")     # at the end of a task
    job.with_options(tags=[device_slots(settings.concurrency_limit, lock_dir, 2)])
"""
from __future__ import annotations

import hashlib
import logging

from prefect import get_run_logger
from prefect.context import FlowRunContext, TaskRunContext
from prefect.states import Completed, State

from tasks.logs import ROOT

CACHED = "Cached"


class RunLogHandler(logging.Handler):
    """Hands a `gsco.*` record to the logger of the Prefect run it was emitted in (its log in the UI, live);
    outside any run, to the root logger's handlers as if it had propagated."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if TaskRunContext.get() is None and FlowRunContext.get() is None:
                # as if it had propagated: to the root's handlers, except those the record met on its way up
                # (a capture handler put on the `gsco` logger as well as on the root must see it once)
                seen = {h for lg in _chain(record.name) for h in lg.handlers}
                for h in logging.getLogger().handlers:
                    if h not in seen and record.levelno >= h.level:
                        h.handle(record)
                return
            get_run_logger().log(record.levelno, "%s", record.getMessage(), exc_info=record.exc_info)
        except Exception:
            self.handleError(record)


def _chain(name: str) -> list[logging.Logger]:
    """The loggers from `name` up to the `gsco` root logger (where propagation stops)."""
    parts = name.split(".")
    return [logging.getLogger(".".join(parts[:i])) for i in range(len(parts), 0, -1)
            if ".".join(parts[:i]) == ROOT or ".".join(parts[:i]).startswith(ROOT + ".")]


def forward_domain_logs() -> None:
    """Send the `gsco` loggers' records (INFO and up) to the current Prefect run's log; idempotent."""
    log = logging.getLogger(ROOT)
    if not any(isinstance(h, RunLogHandler) for h in log.handlers):
        log.addHandler(RunLogHandler())
    log.setLevel(logging.INFO)
    log.propagate = False   # the run logger prints to the console already


forward_domain_logs()


def as_state(result, cached: bool) -> State | object:
    """A task's return value: a Completed state named Cached when its unit was served from the stage cache (the
    UI's "Cached"; `.result()` still gives `result`), else `result` itself."""
    return Completed(name=CACHED, data=result, message="served from the stage cache") if cached else result


def device_slots(limit_name: str | None, lock_dir: str, slots: int) -> str:
    """The task tag whose Prefect concurrency limit holds `slots` device slots (created here; resized when it exists).

    A task run with the tag waits for a slot Pending, before it is Running. `limit_name` (a profile's
    `specialists.concurrency_limit`) shares the slots between every run on a Prefect server; without one the slots
    belong to the outputs folder (its device lock folder), like the lock files that pin each job to a device."""
    from prefect.client.orchestration import get_client

    from prefect.exceptions import ObjectNotFound

    tag = limit_name or "gsco-devices-" + hashlib.sha256(str(lock_dir).encode()).hexdigest()[:12]
    with get_client(sync_client=True) as client:
        if not limit_name:
            # the folder's own slots: one run writes a folder at a time, so slots still held belong to a killed run
            # (its leases would block this one until they expire): start from none taken
            try:
                client.delete_global_concurrency_limit_by_name(f"tag:{tag}")
            except ObjectNotFound:
                pass
        client.upsert_global_concurrency_limit_by_name(f"tag:{tag}", slots)
    return tag
