"""The report as one self-contained Markdown text (what the Prefect UI shows as the run's artifact): every image the
report links beside it embedded as a data: URI, headed by the MLflow run that holds it and where to open that run.

    md = artifact_markdown(Path("outputs/tiny/evaluation/report/report.md"), run_id, "sqlite:///.../mlflow.db",
                           experiment_id="1")
"""
from __future__ import annotations

import base64
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from tasks.secrets import redact

_IMAGE = re.compile(r"(!\[(?:[^\]\\]|\\.)*\]\()([^)\s]+)(\))")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
         ".gif": "image/gif"}


def embed_images(markdown: str, folder: Path) -> str:
    """`markdown` with each image linked by a relative path replaced by a data: URI of the file under `folder`.

    A linked image that is not there is an error naming it (an artifact with a broken image is what this prevents)."""
    folder = Path(folder)

    def inline(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # data:, http(s): already absolute
            return m.group(0)
        path = folder / unquote(target)
        mime = _MIME.get(path.suffix.lower())
        if mime is None or not path.is_file():
            raise FileNotFoundError(f"report image {target!r}: expected a .png/.jpg/.svg/.gif file beside the report "
                                    f"in {folder}")
        return f"{m.group(1)}data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}{m.group(3)}"

    return _IMAGE.sub(inline, markdown)


def run_link(tracking_uri: str, run_id: str, experiment_id: str | None = None) -> str:
    """Where to open an MLflow run: its page on a tracking server, else the `mlflow ui` command for the local store."""
    tracking_uri = redact(tracking_uri)   # a server URL's password never reaches the artifact
    scheme = urlparse(tracking_uri).scheme
    if scheme in ("http", "https"):
        exp = experiment_id or "0"
        return f"[open the run in MLflow]({tracking_uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id})"
    return f"open it with `mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1`, then run {run_id}"


def artifact_markdown(report_md: Path, run_id: str, tracking_uri: str, experiment_id: str | None = None) -> str:
    """The report's Markdown, images embedded, under a line naming the MLflow parent run and how to open it."""
    report_md = Path(report_md)
    head = f"**MLflow run** `{run_id}` — {run_link(tracking_uri, run_id, experiment_id)}\n\n"
    return head + embed_images(report_md.read_text(encoding="utf-8"), report_md.parent)
