"""Small helpers several test modules share (fixtures live in conftest.py)."""
from __future__ import annotations

from pathlib import Path


def tables_mtimes(tables_root: Path) -> dict[str, int]:
    """mtime_ns of every file under a tables root (to prove a cached run rewrote nothing)."""
    root = Path(tables_root)
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()
            and not p.name.startswith(".")} if root.exists() else {}


def process_cmdlines() -> dict[int, str]:
    """{pid: command line} of every live process (Linux /proc), to prove a killed run left none of its own behind."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:  # ended while being read
                pass
    return out


def tiny_specialists(max_epochs: int) -> dict:
    """The `specialists` profile section of the flow tests: two tiny architectures on one CPU slot, no retries."""
    return {
        "architectures": ["resnet18", "vit_b16"], "devices": [], "cpu_slots": 1, "concurrency_limit": None,
        "isolation": "inprocess", "threads": 1, "retries": 0,
        "recipe": {"img_size": 32, "batch_size": 16, "max_epochs": max_epochs, "patience": max_epochs, "lr": 0.001,
                   "eval_batch_size": 64},
        "arch_settings": {"resnet18": {"allow_scratch": True, "overrides": {"channels": [16, 32, 64, 128],
                                                                            "stem_width": 16}},
                          "vit_b16": {"allow_scratch": True,
                                      "overrides": {"depth": 2, "embed_dim": 64, "num_heads": 2}}},
    }
