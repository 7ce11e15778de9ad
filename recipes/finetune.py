"""MedDr fine-tuning, the script every rank runs: LoRA on an InternVL-family model under DeepSpeed (SPEC §5).

    # GPUs, one node (the generalist stage launches one of these with the run's config):
    python -m deepspeed.launcher.runner --no_local_rank --num_gpus 8 --module recipes.finetune --config run.json
    python -m torch.distributed.run --standalone --nproc_per_node 8 -m recipes.finetune --config run.json
    # CPU (tiny profile): DS_ACCELERATOR=cpu is set when no GPU is visible; gloo backend
    python -m recipes.finetune --config run.json

`run.json` holds a FinetuneConfig (tasks/generalist/finetune/config.py); what the run writes is listed in
tasks/generalist/finetune/training.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from data_contracts.files import FolderLock
from data_contracts.layout import FinetuneFiles
from tasks.generalist.finetune.config import FinetuneConfig
from tasks.generalist.finetune.training import train
from tasks.processes import die_with_parent


def main(argv: list[str] | None = None) -> int:
    if "LOCAL_RANK" in os.environ:  # started by a launcher, which starts workers in sessions of their own: die with it
        die_with_parent(expected_parent=os.getppid())
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="run config JSON (FinetuneConfig fields)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # older launchers pass it
    cfg = FinetuneConfig.from_json(ap.parse_args(argv).config)
    # one run per output folder: a second launch (a worker left from a killed run, say) is refused, naming the first
    first = os.environ.get("RANK", "0") == "0"
    with FolderLock(FinetuneFiles(Path(cfg.output_dir)).run_lock, "fine-tuning run") if first \
            else contextlib.nullcontext():
        result = train(cfg)
    if result:
        print(json.dumps({k: result[k] for k in ("status", "start_step", "total_steps", "final_loss", "val_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
