"""One specialist job in its own process (the specialists stage's subprocess isolation: CUDA_VISIBLE_DEVICES pinned
by the caller); prints the job's result as one JSON line.

    CUDA_VISIBLE_DEVICES=3 python -m recipes.specialist_job outputs/full/specialists/ham10000/resnet18/job.json
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tasks.specialists.stage import run_job


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m recipes.specialist_job JOB.json", file=sys.stderr)
        return 2
    # the job's log lines (epochs, warning summaries) on stderr, read line by line by the stage that started it
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s", force=True)
    print(json.dumps(run_job(json.loads(Path(args[0]).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
