"""Tiny synthetic benchmark: look-alikes of eight SPEC §3 datasets written in the real downloads' raw formats.

    gsco tiny-benchmark DIR                               (CLI: flows/cli.py)
    OMP_NUM_THREADS=1 pytest -q tests/test_tiny_benchmark.py

    paths = generate_tiny_benchmark(Path("outputs/tiny/data"), seed=0)   # {"chestmnist": .../medmnist, ...}

Every file lands where the dataset's data card (`raw`) says the real one lies, so the project's loaders read the tiny
set exactly as they read a user's download. Images are drawn, not sampled from real data: each class (or, for
ChestMNIST, each positive label) adds its own shape, texture and intensity on a modality-like background, plus noise,
so a linear model on raw pixels learns the classes and nearest neighbours mostly share a label. Report, VQA and case
texts are written from the same drawn findings, so text and image agree. OpenI case texts carry invented patient
names, ages, dates and record numbers (listed per case in `planted`) for the DES de-identification filter to remove.

The output is a function of (seed, scale, sizes) only, byte for byte: npz archives are written through `zipfile` with
a fixed date, images through PIL with fixed settings, text with fixed field order. Regenerating leaves identical files
untouched (their mtimes too), so raw digests and the ingest cache do not change. `.tiny_benchmark.json` in the root
records what was written; files it lists that a new run does not produce are removed (a smaller `scale` leaves no
stale images behind), and a file the generator did not write is never overwritten.

Expected at seed 0, scale 1: 168 images per diagnosis set (train 96 / val 24 / test 48; DermNet's train folder holds
train + val, the loader carves val out of it), 60 English SLAKE QA pairs on 20 images (+ 6 Chinese rows), 60 IU-Xray
reports (frontal + lateral PNG each), 40 OpenI cases; 527 files, about 2.5 MB, generated in about 1 s on one core.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from data_contracts.cards import DataCard, get_card
from data_contracts.files import write_bytes_atomic
from tasks.ingest.tiny_images import (MEDMNIST_PX, chest, chestmnist_image, csv_bytes, encode, finish, npz_bytes,
                                      skin_photo, u8, ultrasound)
from tasks.ingest.tiny_texts import build_iu_xray, build_openi_cases, build_slake

TINY_DATASETS: tuple[str, ...] = ("chestmnist", "pneumoniamnist", "breastmnist", "dermnet", "ham10000", "slake",
                                  "iu_xray", "openi_cases")
DEFAULT_SIZES: dict[str, int] = {"train": 96, "val": 24, "test": 48}
MANIFEST = ".tiny_benchmark.json"

# A 5-class DermNet subset keeps the tiny set learnable from 96 images; the card's 23-name label set is unchanged.
DERMNET_CLASSES = ("Acne and Rosacea Photos", "Eczema Photos", "Melanoma Skin Cancer Nevi and Moles",
                   "Psoriasis pictures Lichen Planus and related diseases",
                   "Warts Molluscum and other Viral Infections")
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "split"]


# ---------------------------------------------------------------------------------------------------------- public

def generate_tiny_benchmark(root: Path, seed: int = 0, scale: float = 1.0,
                            sizes: Mapping[str, int] | None = None) -> dict[str, Path]:
    """Each tiny dataset's raw folder under `root` (name -> path), after writing the files that changed.

    `sizes` gives the train/val/test counts of every diagnosis set (default 96/24/48); `scale` multiplies those and
    the VQA, report and case counts (at least one image per class and split is always kept).
    """
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    split_sizes = dict(DEFAULT_SIZES)
    for k, v in (sizes or {}).items():
        if k not in DEFAULT_SIZES or int(v) < 1:
            raise ValueError(f"sizes: expected positive counts for {sorted(DEFAULT_SIZES)}, got {k}={v!r}")
        split_sizes[k] = int(v)
    split_sizes = {k: max(1, round(v * scale)) for k, v in split_sizes.items()}
    root = Path(root)
    files: dict[str, bytes] = {}
    for name in TINY_DATASETS:
        card = get_card(name)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        for rel, data in _BUILDERS[name](card, rng, split_sizes, scale).items():
            files[f"{card.raw.dir}/{rel}"] = data
    _sync(root, files, {"generator": "tasks.ingest.tiny_benchmark", "seed": seed, "scale": scale, "sizes": split_sizes})
    return {name: root / get_card(name).raw.dir for name in TINY_DATASETS}


# ------------------------------------------------------------------------------------------------------ file output

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_changed(path: Path, data: bytes) -> bool:
    """True when `path` was (re)written; an existing file with the same bytes (and its mtime) is left alone."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)
    return True


def _sync(root: Path, files: dict[str, bytes], meta: dict) -> None:
    """Write `files` under root, remove files an earlier run wrote and this one does not, record the manifest."""
    manifest_path = root / MANIFEST
    previous: dict[str, str] = {}
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest_path}: unreadable tiny-benchmark manifest ({e}); delete it and the "
                             f"generated folders to regenerate") from None
    # Refuse before writing anything: a file this generator did not write may be a user's real download.
    for rel, data in files.items():
        p = root / rel
        if p.exists() and rel not in previous and (not p.is_file() or p.read_bytes() != data):
            raise FileExistsError(f"{p}: exists and was not written by the tiny-benchmark generator (no entry in "
                                  f"{manifest_path}); refusing to overwrite it. Generate into an empty folder.")
    for rel, data in files.items():
        _write_changed(root / rel, data)
    for rel in sorted(set(previous) - set(files)):
        p = root / rel
        p.unlink(missing_ok=True)
        for parent in p.parents:
            if parent == root or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    record = {**meta, "files": {rel: _sha(files[rel]) for rel in sorted(files)}}
    _write_changed(manifest_path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


# ------------------------------------------------------------------------------------------------------ diagnosis sets

def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n class indices covering all k classes as evenly as possible, in shuffled order."""
    lab = np.arange(n) % k
    rng.shuffle(lab)
    return lab


def _medmnist(card: DataCard, sizes: dict[str, int],
              draw: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> dict[str, bytes]:
    arrays = {}
    for split in ("train", "val", "test"):
        imgs, labels = draw(sizes[split])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels
    return {card.raw.npz_file: npz_bytes(arrays)}


def _build_chestmnist(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    n_labels = len(card.raw.label_map)

    def draw(n: int):
        n = max(n, n_labels)
        labels = np.zeros((n, n_labels), dtype=np.uint8)
        for i in range(n):
            if i % 5 == 4:   # about a fifth of rows have no positive label ("No finding")
                continue
            # denser than the real set (most labels there are rare) so 96 images teach every label
            labels[i, i % n_labels] = 1
            labels[i, rng.choice(n_labels, size=2 + int(rng.random() < 0.5), replace=False)] = 1
        labels = labels[rng.permutation(n)]
        imgs = np.stack([u8(finish(chestmnist_image(rng, row), rng, 0.05)) for row in labels])
        return imgs, labels

    return _medmnist(card, sizes, draw)


def _build_pneumoniamnist(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    def draw(n: int):
        lab = _balanced(rng, max(n, 2), 2)   # 0 normal, 1 pneumonia
        imgs = np.stack([u8(finish(chest(MEDMNIST_PX, rng, {"pneumonia": ""} if v else {}), rng, 0.05))
                         for v in lab])
        return imgs, lab[:, None].astype(np.uint8)

    return _medmnist(card, sizes, draw)


def _build_breastmnist(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    def draw(n: int):
        lab = _balanced(rng, max(n, 2), 2)   # 0 malignant, 1 normal/benign
        imgs = np.stack([u8(finish(ultrasound(rng, v == 0, v == 0 or rng.random() < 0.6), rng, 0.04))
                         for v in lab])
        return imgs, lab[:, None].astype(np.uint8)

    return _medmnist(card, sizes, draw)


def _build_dermnet(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    unknown = set(DERMNET_CLASSES) - set(card.raw.label_map)
    if unknown:
        raise ValueError(f"DERMNET_CLASSES {sorted(unknown)} are not class folders of the dermnet card")
    folders = {v: k for k, v in card.raw.split_folders.items()}
    # The release has no val folder: the loader carves val out of train, so train holds both.
    counts = {"train": sizes["train"] + sizes["val"], "test": sizes["test"]}
    files = {}
    for split, n in counts.items():
        lab = _balanced(rng, max(n, len(DERMNET_CLASSES)), len(DERMNET_CLASSES))
        seen: dict[int, int] = {}
        for k in lab:
            cls = DERMNET_CLASSES[k]
            seen[k] = seen.get(k, 0) + 1
            slug = cls.split()[0].lower()
            img = finish(skin_photo(rng, cls, dermoscopy=False), rng, 0.04)
            files[f"{folders[split]}/{cls}/{slug}-{split}-{seen[k]:03d}.jpg"] = encode(img, "JPEG")
    return files


_HAM_META = {   # dx -> (dx_types, localizations)
    "akiec": (["histo"], ["face", "scalp", "upper extremity"]),
    "bcc": (["histo"], ["face", "back", "neck"]),
    "bkl": (["histo", "consensus", "confocal"], ["trunk", "face", "back"]),
    "df": (["histo", "consensus"], ["lower extremity", "upper extremity"]),
    "mel": (["histo"], ["back", "lower extremity", "trunk"]),
    "nv": (["follow_up", "histo", "consensus"], ["back", "trunk", "abdomen", "lower extremity"]),
    "vasc": (["consensus", "histo"], ["trunk", "face", "lower extremity"]),
}


def _build_ham10000(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    raw = card.raw
    codes = list(raw.label_map)
    split_value = {v: k for k, v in raw.split.values.items()}
    files, rows, image_no, lesion_no = {}, [], 24306, 0
    for split in ("train", "val", "test"):
        lab = _balanced(rng, max(sizes[split], len(codes)), len(codes))
        for i, k in enumerate(lab):
            dx = codes[k]
            dx_types, sites = _HAM_META[dx]
            # Like the real metadata, some lesions have two images (consecutive rows, same dx and split).
            if not (i > 0 and lab[i - 1] == k and rng.random() < 0.7):
                lesion_no += 1
                age = str(float(5 * rng.integers(4, 18))) if rng.random() > 0.03 else ""
                sex, site = ["male", "female"][rng.integers(2)], sites[rng.integers(len(sites))]
                dx_type = dx_types[rng.integers(len(dx_types))]
            image_id = f"ISIC_{image_no:07d}"
            image_no += 1
            rows.append({"lesion_id": f"HAM_{lesion_no:07d}", "image_id": image_id, "dx": dx, "dx_type": dx_type,
                         "age": age, "sex": sex, "localization": site, "split": split_value.get(split, split)})
            img = finish(skin_photo(rng, dx, dermoscopy=True), rng, 0.04)
            files[f"{raw.image_dir}/{image_id}{raw.image_suffix or '.jpg'}"] = encode(img, "JPEG")
    files[raw.table] = csv_bytes(HAM_COLUMNS, rows)
    return files


_BUILDERS: dict[str, Callable[[DataCard, np.random.Generator, dict[str, int], float], dict[str, bytes]]] = {
    "chestmnist": _build_chestmnist, "pneumoniamnist": _build_pneumoniamnist, "breastmnist": _build_breastmnist,
    "dermnet": _build_dermnet, "ham10000": _build_ham10000, "slake": build_slake, "iu_xray": build_iu_xray,
    "openi_cases": build_openi_cases,
}
