"""Tiny synthetic benchmark: look-alikes of eight SPEC §3 datasets written in the real downloads' raw formats.

    gsco tiny-data DIR                                    (CLI: flows/cli.py)
    OMP_NUM_THREADS=1 pytest -q tests/test_tiny_data.py

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

import csv
import datetime as dt
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from data_contracts.cards import DataCard, get_card

TINY_DATASETS: tuple[str, ...] = ("chestmnist", "pneumoniamnist", "breastmnist", "dermnet", "ham10000", "slake",
                                  "iu_xray", "openi_cases")
DEFAULT_SIZES: dict[str, int] = {"train": 96, "val": 24, "test": 48}
SLAKE_QA, IU_XRAY_REPORTS, OPENI_CASES = 60, 60, 40
MANIFEST = ".tiny_benchmark.json"

MEDMNIST_PX, PHOTO_PX, SLAKE_PX, IU_PX, OPENI_PX = 28, 40, 48, 48, 48
# A 5-class DermNet subset keeps the tiny set learnable from 96 images; the card's 23-name label set is unchanged.
DERMNET_CLASSES = ("Acne and Rosacea Photos", "Eczema Photos", "Melanoma Skin Cancer Nevi and Moles",
                   "Psoriasis pictures Lichen Planus and related diseases",
                   "Warts Molluscum and other Viral Infections")
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "split"]
IU_REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
IU_PROJECTION_COLUMNS = ["uid", "filename", "projection"]

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_JPEG = {"quality": 90, "optimize": False, "progressive": False, "subsampling": 0}
_PNG = {"optimize": False, "compress_level": 6}


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
    _sync(root, files, {"generator": "tasks.tiny_data", "seed": seed, "scale": scale, "sizes": split_sizes})
    return {name: root / get_card(name).raw.dir for name in TINY_DATASETS}


# ------------------------------------------------------------------------------------------------------ file output

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> bool:
    """True when `path` was (re)written; an existing file with the same bytes is left alone."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
        _write_atomic(root / rel, data)
    for rel in sorted(set(previous) - set(files)):
        p = root / rel
        p.unlink(missing_ok=True)
        for parent in p.parents:
            if parent == root or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    record = {**meta, "files": {rel: _sha(files[rel]) for rel in sorted(files)}}
    _write_atomic(manifest_path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An `np.savez`-compatible archive whose bytes depend only on the arrays (fixed member date and attributes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.create_system, info.external_attr = 3, 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def _u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _encode(img: np.ndarray, fmt: str) -> bytes:
    """JPEG/PNG bytes of a float image in [0,1], (H,W) grayscale or (H,W,3) RGB."""
    buf = io.BytesIO()
    Image.fromarray(_u8(img)).save(buf, format=fmt, **(_JPEG if fmt == "JPEG" else _PNG))
    return buf.getvalue()


def _csv(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


# ---------------------------------------------------------------------------------------------------------- drawing

def _coords(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in [0, 1]."""
    t = (np.arange(s) + 0.5) / s
    return np.meshgrid(t, t)


def _ellipse(x, y, cx, cy, rx, ry, soft=0.25, angle=0.0) -> np.ndarray:
    """Soft-edged ellipse mask in [0, 1]."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    d = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
    return np.clip((1.0 - d) / soft, 0.0, 1.0)


def _gauss(x, y, cx, cy, sigma) -> np.ndarray:
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))


def _paint(img: np.ndarray, mask: np.ndarray, value) -> np.ndarray:
    """`img` with `value` blended in where `mask` is 1 (works for grayscale and RGB)."""
    m = mask[..., None] if img.ndim == 3 else mask
    return img * (1 - m) + np.asarray(value, dtype=float) * m


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Acquisition variation shared by all modalities: gain, offset and pixel noise."""
    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-0.04, 0.04)
    return img + rng.normal(0.0, noise, img.shape)


# Findings the chest renderer draws; the side is the patient's (patient's left = image right on a PA film).
def _chest(s: int, rng: np.random.Generator, findings: Mapping[str, str] | None = None,
           lateral: bool = False) -> np.ndarray:
    """A chest radiograph look-alike with the given findings ({finding: side or ''})."""
    findings = findings or {}
    x, y = _coords(s)
    ox, oy = rng.uniform(-0.02, 0.02, 2)
    x, y = x - ox, y - oy
    img = np.full((s, s), 0.06)
    img = _paint(img, _ellipse(x, y, 0.5, 0.56, 0.44, 0.47), 0.52)
    if lateral:
        img = _paint(img, _ellipse(x, y, 0.52, 0.48, 0.3, 0.33), 0.24)
        img = _paint(img, _ellipse(x, y, 0.38, 0.64, 0.12 if "cardiomegaly" not in findings else 0.2, 0.13), 0.62)
        img = _paint(img, (np.abs(x - 0.8) < 0.04) * (y > 0.2) * 1.0, 0.62)
        return img
    ribs = 0.035 * np.sin(y * 2 * np.pi * 7)
    lung = 0.2 + rng.uniform(-0.05, 0.05)   # inspiration depth and exposure vary between patients
    for cx in (0.31, 0.69):
        img = _paint(img, _ellipse(x, y, cx, 0.5, 0.15, 0.31), lung + ribs)
    img = _paint(img, (np.abs(x - 0.5) < 0.035) * (y > 0.15) * 1.0, 0.58)
    big = "cardiomegaly" in findings
    img = _paint(img, _ellipse(x, y, 0.52, 0.67, 0.19 if big else 0.11, 0.16 if big else 0.11), 0.7)
    for f, side in findings.items():
        cx = 0.69 if side == "left" else 0.31
        if f == "effusion":
            lung = _ellipse(x, y, cx, 0.5, 0.16, 0.32, soft=0.1)
            img = _paint(img, lung * np.clip((y - (0.62 + 0.15 * np.abs(x - cx))) / 0.04, 0, 1), 0.66)
        elif f == "opacity":
            img = img + 0.34 * _gauss(x, y, cx, 0.6, 0.075) * (1 + 0.3 * np.sin(x * 40) * np.sin(y * 37))
        elif f == "nodule":
            img = _paint(img, _ellipse(x, y, cx, 0.4, 0.045, 0.045), 0.85)
        elif f == "pneumothorax":
            img = _paint(img, _ellipse(x, y, cx + (0.08 if side == "left" else -0.08), 0.35, 0.07, 0.16), 0.04)
        elif f == "pneumonia":   # patchy lower-zone opacities, from faint to dense
            for px in (0.31, 0.69):
                img = img + rng.uniform(0.08, 0.35) * _gauss(x, y, px + rng.uniform(-0.04, 0.04),
                                                             0.62 + rng.uniform(-0.06, 0.06), rng.uniform(0.05, 0.1))
    return img


# ChestMNIST: each of the 14 labels (medmnist INFO order) adds its own element in its own place, large and
# contrasted enough to survive 28 px and a 16 px downsample; anatomy is loose beyond cardiomegaly and effusion.
# (kind, cx, cy, size, value); kinds: disk, blob (additive gaussian), ring, band/vband, hatch, heart, effusion
_CHEST_ELEMENTS = [
    ("band", 0.24, 0.86, 0.12, 1.0),     # atelectasis: plate-like band at the right base
    ("heart", 0.0, 0.0, 0.0, 0.0),      # cardiomegaly: enlarged heart
    ("effusion", 0.0, 0.0, 0.0, 0.0),   # effusion: left base meniscus
    ("hatch", 0.38, 0.20, 0.11, 0.9),    # infiltration: patchy right upper zone
    ("disk", 0.62, 0.42, 0.1, 1.0),     # mass
    ("disk", 0.38, 0.42, 0.075, 1.0),   # nodule
    ("blob", 0.62, 0.20, 0.08, 0.7),    # pneumonia
    ("ring", 0.14, 0.42, 0.1, 1.0),    # pneumothorax: pleural line around a lucent space
    ("disk", 0.86, 0.64, 0.08, 1.0),    # consolidation
    ("blob", 0.86, 0.20, 0.07, 0.8),    # edema
    ("ring", 0.86, 0.42, 0.1, 1.0),    # emphysema: thin-walled bulla
    ("hatch", 0.14, 0.64, 0.1, 0.9),   # fibrosis
    ("vband", 0.14, 0.20, 0.14, 1.0),   # pleural thickening
    ("disk", 0.50, 0.92, 0.09, 1.0),    # hernia: below the diaphragm
]


def _chestmnist_image(rng: np.random.Generator, positives: np.ndarray) -> np.ndarray:
    s = MEDMNIST_PX
    x, y = _coords(s)
    img = _chest(s, rng, {"cardiomegaly": ""} if positives[1] else {})
    for j in np.flatnonzero(positives):
        kind, cx, cy, r, v = _CHEST_ELEMENTS[j]
        jx, jy = rng.uniform(-0.02, 0.02, 2)
        cx, cy = cx + jx, cy + jy
        if kind == "disk":
            img = _paint(img, _ellipse(x, y, cx, cy, r, r), v)
        elif kind == "blob":
            img = img + v * _gauss(x, y, cx, cy, r)
        elif kind == "ring":
            img = _paint(img, _ellipse(x, y, cx, cy, r, r * 1.6), v)
            img = _paint(img, _ellipse(x, y, cx, cy, r * 0.55, r * 0.9), 0.0)
        elif kind == "band":
            img = _paint(img, _ellipse(x, y, cx, cy, r, 0.05, soft=0.5), v)
        elif kind == "vband":
            img = _paint(img, _ellipse(x, y, cx, cy, 0.05, r, soft=0.5), v)
        elif kind == "hatch":
            img = img + v * _ellipse(x, y, cx, cy, r, r) * (0.6 + 0.4 * np.sign(np.sin((x + y) * 60)))
        elif kind == "effusion":
            img = _paint(img, _ellipse(x, y, 0.69, 0.5, 0.17, 0.33, soft=0.1) * (y > 0.6 + jy) * (x > 0.7), 0.9)
    return img


def _ultrasound(rng: np.random.Generator, malignant: bool, lesion: bool) -> np.ndarray:
    """A breast ultrasound look-alike: speckled fan, with an irregular shadowing (malignant) or smooth oval mass."""
    s = MEDMNIST_PX
    x, y = _coords(s)
    fan = np.clip(1 - np.abs(x - 0.5) / (0.25 + 0.45 * y), 0, 1) * (y > 0.05)
    img = fan * (0.35 + 0.2 * (y < 0.3)) * rng.gamma(4.0, 0.25, (s, s))
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.45 + rng.uniform(-0.04, 0.04)
    size = rng.uniform(0.75, 1.2)
    if malignant:   # irregular, taller than wide, posterior shadowing
        theta = np.arctan2(y - cy, x - cx)
        spike = 1 + rng.uniform(0.05, 0.35) * np.sin(7 * theta + rng.uniform(0, 6.28))
        img = _paint(img, _ellipse(x, y, cx, cy, 0.14 * size * spike, 0.18 * size * spike, soft=0.3), 0.03)
        img = img * (1 - rng.uniform(0.1, 0.8) * (np.abs(x - cx) < 0.12 * size) * (y > cy + 0.15 * size))
    elif lesion:    # smooth oval, wider than tall, posterior enhancement
        img = _paint(img, _ellipse(x, y, cx, cy, 0.16 * size, 0.09 * size), rng.uniform(0.03, 0.25))
        img = img + rng.uniform(0.0, 0.25) * (np.abs(x - cx) < 0.12) * (y > cy + 0.08) * (y < cy + 0.3)
    return img


# Photographs: (lesion RGB, shape, size) per class. Luminance differs between classes too, so a grayscale model sees it.
_DERM_LOOKS: dict[str, tuple[tuple[float, float, float], str, float]] = {
    # HAM10000 dx codes (dermoscopy)
    "akiec": ((0.78, 0.42, 0.38), "scaly", 0.24),
    "bcc": ((0.92, 0.72, 0.74), "ring", 0.22),
    "bkl": ((0.62, 0.48, 0.30), "plaque", 0.28),
    "df": ((0.42, 0.26, 0.18), "halo", 0.12),
    "mel": ((0.16, 0.10, 0.10), "irregular", 0.3),
    "nv": ((0.48, 0.32, 0.22), "disk", 0.18),
    "vasc": ((0.62, 0.08, 0.22), "lobules", 0.2),
    # DermNet class folders (clinical photographs)
    "Acne and Rosacea Photos": ((0.8, 0.25, 0.25), "papules", 0.3),
    "Eczema Photos": ((0.75, 0.4, 0.38), "scaly", 0.36),
    "Melanoma Skin Cancer Nevi and Moles": ((0.14, 0.08, 0.06), "irregular", 0.22),
    "Psoriasis pictures Lichen Planus and related diseases": ((0.93, 0.9, 0.88), "plaque", 0.3),
    "Warts Molluscum and other Viral Infections": ((0.6, 0.55, 0.45), "lobules", 0.22),
}


def _skin_photo(rng: np.random.Generator, look: str, dermoscopy: bool) -> np.ndarray:
    """An RGB skin photograph (or dermoscopy image, with its dark circular vignette) showing one class's lesion."""
    s = PHOTO_PX
    x, y = _coords(s)
    color, shape, r = _DERM_LOOKS[look]
    tone = np.array([0.86, 0.66, 0.54]) * rng.uniform(0.85, 1.05)
    img = np.broadcast_to(tone, (s, s, 3)) * (1 + 0.04 * rng.normal(size=(s, s, 1)))
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    r = r * rng.uniform(0.9, 1.1)
    if shape == "disk":
        img = _paint(img, _ellipse(x, y, cx, cy, r, r), color)
    elif shape == "irregular":
        theta = np.arctan2(y - cy, x - cx)
        wobble = 1 + 0.25 * np.sin(5 * theta + rng.uniform(0, 6.28)) + 0.1 * np.sin(11 * theta)
        img = _paint(img, _ellipse(x, y, cx, cy, r * wobble, r * 0.85 * wobble), color)
        img = _paint(img, _ellipse(x, y, cx + 0.05, cy - 0.03, r * 0.35, r * 0.3), (0.35, 0.3, 0.45))
    elif shape == "ring":
        img = _paint(img, _ellipse(x, y, cx, cy, r, r) - _ellipse(x, y, cx, cy, r * 0.55, r * 0.55), color)
        img = _paint(img, _ellipse(x, y, cx, cy, r * 0.3, r * 0.3), (0.55, 0.2, 0.2))
    elif shape == "plaque":
        img = _paint(img, _ellipse(x, y, cx, cy, r * 1.3, r * 0.7), color)
    elif shape == "halo":
        img = _paint(img, _ellipse(x, y, cx, cy, r * 2.2, r * 2.2), (0.95, 0.85, 0.8))
        img = _paint(img, _ellipse(x, y, cx, cy, r, r), color)
    elif shape == "scaly":
        m = _ellipse(x, y, cx, cy, r, r * 0.9, soft=0.5)
        img = _paint(img, m * (0.75 + 0.25 * np.sign(np.sin(x * 70) * np.sin(y * 70))), color)
    elif shape == "lobules":
        for k in range(5):
            a = 2 * np.pi * k / 5 + rng.uniform(-0.3, 0.3)
            img = _paint(img, _ellipse(x, y, cx + 0.55 * r * np.cos(a), cy + 0.55 * r * np.sin(a), r * 0.35,
                                       r * 0.35), color)
    elif shape == "papules":
        for _ in range(9):
            px, py = cx + rng.uniform(-r, r), cy + rng.uniform(-r, r)
            img = _paint(img, _ellipse(x, y, px, py, 0.04, 0.04), color)
    if dermoscopy:
        img = img * np.clip((0.62 - np.hypot(x - 0.5, y - 0.5)) / 0.1, 0, 1)[..., None]
    return img


def _ct_abdomen(rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """An axial abdominal CT look-alike: body, liver (image left), spine; a hypodense liver lesion when abnormal."""
    s = SLAKE_PX
    x, y = _coords(s)
    img = np.zeros((s, s))
    img = _paint(img, _ellipse(x, y, 0.5, 0.52, 0.42, 0.34), 0.35)
    img = _paint(img, _ellipse(x, y, 0.35, 0.45, 0.17, 0.16), 0.55)
    img = _paint(img, _ellipse(x, y, 0.5, 0.76, 0.06, 0.05), 0.95)
    img = _paint(img, _ellipse(x, y, 0.66, 0.48, 0.06, 0.09), 0.5)
    if lesion:
        img = _paint(img, _ellipse(x, y, 0.33 + rng.uniform(-0.03, 0.03), 0.45, 0.06, 0.06), 0.2)
    return img


def _mri_brain(rng: np.random.Generator, lesion: bool) -> np.ndarray:
    """An axial brain MRI look-alike: skull, brain, ventricles; a bright mass when abnormal."""
    s = SLAKE_PX
    x, y = _coords(s)
    img = np.zeros((s, s))
    img = _paint(img, _ellipse(x, y, 0.5, 0.5, 0.36, 0.44), 0.85)
    img = _paint(img, _ellipse(x, y, 0.5, 0.5, 0.32, 0.4), 0.45)
    for cx in (0.45, 0.55):
        img = _paint(img, _ellipse(x, y, cx, 0.47, 0.03, 0.1), 0.12)
    if lesion:
        side = 0.33 if rng.random() < 0.5 else 0.67
        img = _paint(img, _ellipse(x, y, side, 0.4, 0.08, 0.08), 0.95)
    return img


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
    return {card.raw.npz_file: _npz(arrays)}


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
        imgs = np.stack([_u8(_finish(_chestmnist_image(rng, row), rng, 0.05)) for row in labels])
        return imgs, labels

    return _medmnist(card, sizes, draw)


def _build_pneumoniamnist(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    def draw(n: int):
        lab = _balanced(rng, max(n, 2), 2)   # 0 normal, 1 pneumonia
        imgs = np.stack([_u8(_finish(_chest(MEDMNIST_PX, rng, {"pneumonia": ""} if v else {}), rng, 0.05))
                         for v in lab])
        return imgs, lab[:, None].astype(np.uint8)

    return _medmnist(card, sizes, draw)


def _build_breastmnist(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    def draw(n: int):
        lab = _balanced(rng, max(n, 2), 2)   # 0 malignant, 1 normal/benign
        imgs = np.stack([_u8(_finish(_ultrasound(rng, v == 0, v == 0 or rng.random() < 0.6), rng, 0.04))
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
            img = _finish(_skin_photo(rng, cls, dermoscopy=False), rng, 0.04)
            files[f"{folders[split]}/{cls}/{slug}-{split}-{seen[k]:03d}.jpg"] = _encode(img, "JPEG")
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
            img = _finish(_skin_photo(rng, dx, dermoscopy=True), rng, 0.04)
            files[f"{raw.image_dir}/{image_id}{raw.image_suffix or '.jpg'}"] = _encode(img, "JPEG")
    files[raw.table] = _csv(HAM_COLUMNS, rows)
    return files


# ------------------------------------------------------------------------------------------------------------- SLAKE

# (modality, location, organ, disease) of the three kinds of SLAKE image drawn here
_SLAKE_KINDS = [("CT", "Abdomen", "Liver", "Liver Cancer"), ("MRI", "Brain", "Brain", "Brain Tumor"),
                ("X-Ray", "Chest", "Lung", "Pneumonia")]
_SLAKE_FUNCTION = {"Liver": "Detoxification", "Brain": "Regulate body functions", "Lung": "Breathe"}
_OTHER_ORGAN = {"Liver": "Brain", "Brain": "Lung", "Lung": "Liver"}


def _slake_questions(modality: str, location: str, organ: str, disease: str, abnormal: bool) -> list[dict]:
    """Candidate English QA pairs for one image, each consistent with what the image shows."""
    yn = lambda b: "Yes" if b else "No"   # noqa: E731
    q = [
        ("What modality is used to take this image?", modality, "OPEN", "Modality", "vqa", ["vhead", "_", "_"]),
        ("Which part of the body does this image belong to?", location, "OPEN", "Position", "vqa",
         ["vhead", "_", "_"]),
        ("What is the main organ in the image?", organ, "OPEN", "Organ", "vqa", ["vhead", "_", "_"]),
        ("Is this image abnormal?", yn(abnormal), "CLOSED", "Abnormality", "vqa", ["vhead", "_", "_"]),
        ("Is this image normal?", yn(not abnormal), "CLOSED", "Abnormality", "vqa", ["vhead", "_", "_"]),
        (f"Does the picture contain {organ.lower()}?", "Yes", "CLOSED", "Organ", "vqa", ["vhead", "_", "_"]),
        (f"Does the picture contain {_OTHER_ORGAN[organ].lower()}?", "No", "CLOSED", "Organ", "vqa",
         ["vhead", "_", "_"]),
        (f"Is this {'an' if modality == 'MRI' else 'a'} {modality} image?", "Yes", "CLOSED", "Modality", "vqa",
         ["vhead", "_", "_"]),
        (f"What is the function of the {organ.lower()} shown in this image?", _SLAKE_FUNCTION[organ], "OPEN", "KG",
         "kg", [organ, "Function", "vhead"]),
    ]
    if abnormal:
        q += [("What diseases are included in the picture?", disease, "OPEN", "Abnormality", "vqa",
               ["vhead", "_", "_"]),
              (f"Does the {organ.lower()} look abnormal?", "Yes", "CLOSED", "Abnormality", "vqa",
               ["vhead", "_", "_"])]
    else:
        q += [(f"Does the {organ.lower()} look healthy?", "Yes", "CLOSED", "Abnormality", "vqa",
               ["vhead", "_", "_"])]
    return [dict(zip(("question", "answer", "answer_type", "content_type", "base_type", "triple"), t)) for t in q]


def _build_slake(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    raw = card.raw
    per_image = 3
    n_images = max(6, round(SLAKE_QA * scale / per_image))
    n_split = {"test": max(1, round(n_images * 0.2)), "val": max(1, round(n_images * 0.2))}
    n_split["train"] = n_images - n_split["test"] - n_split["val"]
    files, img_id, qid = {}, 0, 0
    for split in ("train", "val", "test"):
        records = []
        for _ in range(n_split[split]):
            img_id += 1
            modality, location, organ, disease = _SLAKE_KINDS[img_id % len(_SLAKE_KINDS)]
            abnormal = bool(rng.random() < 0.5)
            if modality == "CT":
                img = _ct_abdomen(rng, abnormal)
            elif modality == "MRI":
                img = _mri_brain(rng, abnormal)
            else:
                img = _chest(SLAKE_PX, rng, {"opacity": ["right", "left"][rng.integers(2)]} if abnormal else {})
            img_name = f"xmlab{img_id}/source.jpg"
            files[f"{raw.image_dir}/{img_name}"] = _encode(_finish(img, rng, 0.03), "JPEG")
            base = {"img_id": img_id, "img_name": img_name}
            candidates = _slake_questions(modality, location, organ, disease, abnormal)
            picked = rng.choice(len(candidates), size=per_image, replace=False)
            # one closed and one open question per image at least, like the real mix
            closed = [i for i, c in enumerate(candidates) if c["answer_type"] == "CLOSED"]
            opened = [i for i, c in enumerate(candidates) if c["answer_type"] == "OPEN"]
            if not set(picked) & set(closed):
                picked[0] = closed[rng.integers(len(closed))]
            if not set(picked) & set(opened):
                picked[-1] = opened[rng.integers(len(opened))]
            for i in picked:
                c = candidates[i]
                records.append({**base, "question": c["question"], "answer": c["answer"], "q_lang": "en",
                                "location": location, "modality": modality, "answer_type": c["answer_type"],
                                "base_type": c["base_type"], "content_type": c["content_type"],
                                "triple": c["triple"], "qid": qid})
                qid += 1
            if img_id % 3 == 0:   # the real files interleave Chinese questions; the card's filter drops them
                records.append({**base, "question": "图片中有异常吗?", "answer": "是" if abnormal else "否",
                                "q_lang": "zh", "location": location, "modality": modality,
                                "answer_type": "CLOSED", "base_type": "vqa", "content_type": "Abnormality",
                                "triple": ["vhead", "_", "_"], "qid": qid})
                qid += 1
        files[raw.split.files[split]] = (json.dumps(records, ensure_ascii=False, indent=1) + "\n").encode()
    return files


# ----------------------------------------------------------------------------------------------------------- IU-Xray

# finding -> (MeSH, Problems, findings templates, impression templates); {side} is the patient's side
_IU_FINDINGS = {
    "normal": ("normal", "normal",
               ["The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
                "Cardiac and mediastinal contours are within normal limits. No focal consolidation, pleural effusion "
                "or pneumothorax.",
                "Heart size and pulmonary vascularity appear within normal limits. The lungs are free of focal "
                "airspace disease. No pleural effusion or pneumothorax is seen."],
               ["No acute cardiopulmonary abnormality.", "Normal chest x-XXXX.", "No active disease."]),
    "cardiomegaly": ("Cardiomegaly/mild", "Cardiomegaly",
                     ["The heart is enlarged. The lungs are clear. No pleural effusion or pneumothorax.",
                      "Cardiomediastinal silhouette is enlarged. No focal airspace consolidation. No pleural "
                      "effusion."],
                     ["Cardiomegaly without acute pulmonary disease.", "Mild cardiomegaly."]),
    "effusion": ("Pleural Effusion/{side}/small", "Pleural Effusion",
                 ["There is a small {side} pleural effusion with blunting of the {side} costophrenic angle. Heart "
                  "size is normal. No pneumothorax.",
                  "Blunting of the {side} costophrenic recess consistent with a small effusion. The heart is normal "
                  "in size."],
                 ["Small {side} pleural effusion.", "{Side} pleural effusion."]),
    "opacity": ("Opacity/lung/base/{side}", "Opacity;Pneumonia",
                ["There is airspace opacity in the {side} lung base concerning for pneumonia. Heart size is normal. "
                 "No pleural effusion.",
                 "Patchy {side} basilar airspace disease. The cardiomediastinal silhouette is normal."],
                ["{Side} lower lobe pneumonia.", "{Side} basilar airspace disease, likely pneumonia."]),
    "nodule": ("Nodule/lung/upper lobe/{side}", "Nodule",
               ["There is a 1 cm nodule in the {side} upper lung zone. The heart is normal in size. No pleural "
                "effusion.",
                "A rounded nodular density projects over the {side} upper lung. Lungs otherwise clear."],
               ["{Side} upper lobe pulmonary nodule. Recommend chest CT.", "{Side} lung nodule."]),
}
_IU_INDICATIONS = ["Positive TB test", "Chest pain", "XXXX-year-old male with shortness of breath",
                   "Cough and fever", "Preop evaluation", "XXXX-year-old female, dyspnea"]


def _build_iu_xray(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    raw = card.raw
    n = max(len(_IU_FINDINGS), round(IU_XRAY_REPORTS * scale))
    kinds = list(_IU_FINDINGS)
    # about 40% normal, the rest spread over the four findings
    weights = np.array([0.4, 0.15, 0.15, 0.15, 0.15])
    lab = np.concatenate([np.arange(len(kinds)), rng.choice(len(kinds), size=n - len(kinds), p=weights)])
    rng.shuffle(lab)
    files, reports, projections = {}, [], []
    for uid, k in enumerate(lab, start=1):
        kind = kinds[k]
        side = ["right", "left"][rng.integers(2)]
        mesh, problems, finding_t, impression_t = _IU_FINDINGS[kind]
        fill = {"side": side, "Side": side.capitalize()}
        findings = finding_t[rng.integers(len(finding_t))].format(**fill)
        if uid % 12 == 0:   # some real reports have an impression only
            findings = ""
        reports.append({"uid": str(uid), "MeSH": mesh.format(**fill), "Problems": problems,
                        "image": "Xray Chest PA and Lateral",
                        "indication": _IU_INDICATIONS[rng.integers(len(_IU_INDICATIONS))] + ".",
                        "comparison": ["None.", "Chest radiographs XXXX."][rng.integers(2)], "findings": findings,
                        "impression": impression_t[rng.integers(len(impression_t))].format(**fill)})
        shown = {} if kind == "normal" else {kind: side}
        for projection, code, lateral in (("Frontal", 4001, False), ("Lateral", 3001, True)):
            filename = f"{uid}_IM-{uid:04d}-{code}.dcm.png"
            projections.append({"uid": str(uid), "filename": filename, "projection": projection})
            files[f"{raw.image_dir}/{filename}"] = _encode(_finish(_chest(IU_PX, rng, shown, lateral), rng, 0.03),
                                                           "PNG")
    files[raw.table] = _csv(IU_REPORT_COLUMNS, reports)
    files[raw.join_table] = _csv(IU_PROJECTION_COLUMNS, projections)
    return files


# ------------------------------------------------------------------------------------------------------ OpenI cases

# Invented identities: no real person is meant.
_FIRST = {"male": ["John", "Ahmed", "Kenji", "Peter", "Lucas", "Omar"],
          "female": ["Maria", "Linda", "Sofia", "Amara", "Ingrid", "Grace"]}
_LAST = ["Carter", "Lopez", "Haddad", "Novak", "Tanaka", "Moretti", "Brandt", "Okafor", "Silva", "Larsen", "Kowalski",
         "Fischer"]
_MONTH_NAMES = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                "November", "December"]
# case kind -> (modality phrase, title templates, caption findings) consistent with the drawn image
_OPENI_KINDS = {
    "effusion": ("Chest radiograph", "Pleural effusion", "shows a {side} pleural effusion with blunting of the "
                 "costophrenic angle"),
    "cardiomegaly": ("Chest radiograph", "Dilated cardiomyopathy", "shows marked enlargement of the cardiac "
                     "silhouette"),
    "nodule": ("Chest radiograph", "Solitary pulmonary nodule", "shows a well-defined nodule in the {side} upper lung"),
    "liver_lesion": ("Axial contrast-enhanced CT", "Hepatic mass", "shows a hypodense lesion in the liver"),
    "brain_tumor": ("Axial T2-weighted MRI", "Intracranial mass", "shows a hyperintense mass in the {side} "
                    "cerebral hemisphere"),
    "melanoma": ("Clinical photograph", "Cutaneous melanoma", "shows an asymmetric, irregularly pigmented lesion "
                 "with uneven borders"),
}


def _openi_image(rng: np.random.Generator, kind: str, side: str) -> tuple[np.ndarray, str]:
    if kind in ("effusion", "cardiomegaly", "nodule"):
        return _chest(OPENI_PX, rng, {kind: side}), "png"
    if kind == "liver_lesion":
        return _ct_abdomen(rng, True), "png"
    if kind == "brain_tumor":
        return _mri_brain(rng, True), "png"
    return _skin_photo(rng, "mel", dermoscopy=False), "jpg"


def _phi(rng: np.random.Generator) -> dict[str, tuple[str, str]]:
    """Invented identifying items, kind -> (span as planted, phrase that carries it)."""
    male = bool(rng.random() < 0.5)
    firsts = _FIRST["male" if male else "female"]
    first, last = firsts[rng.integers(len(firsts))], _LAST[rng.integers(len(_LAST))]
    title = ("Mr." if male else ["Mrs.", "Ms."][rng.integers(2)])
    name = f"{title} {first} {last}"
    age = int(rng.integers(19, 88))
    age_span = f"{age}-year-old"
    d = dt.date(2005, 1, 1) + dt.timedelta(days=int(rng.integers(0, 15 * 365)))
    date_span = [f"{d.month:02d}/{d.day:02d}/{d.year}", f"{_MONTH_NAMES[d.month - 1]} {d.day}, {d.year}",
                 d.isoformat()][rng.integers(3)]
    record = [f"MRN {rng.integers(10**7, 10**8)}", f"medical record number {rng.integers(10**5, 10**6)}-"
              f"{rng.integers(10, 99)}", f"patient ID: A{rng.integers(10**5, 10**6)}"][rng.integers(3)]
    return {"name": (name, name), "age": (age_span, f"a {age_span} {'man' if male else 'woman'}"),
            "date": (date_span, f"on {date_span}"), "identifier": (record, f"({record})")}


def _build_openi_cases(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
    raw = card.raw
    n = max(len(_OPENI_KINDS), round(OPENI_CASES * scale))
    kinds = list(_OPENI_KINDS)
    files, lines = {}, []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        side = ["right", "left"][rng.integers(2)]
        modality, title_t, finding = _OPENI_KINDS[kind]
        img, ext = _openi_image(rng, kind, side)
        uid = f"PMC{3100000 + 7919 * (i + 1) % 900000}_fig{1 + i % 3}"
        image = f"{uid}.{ext}"
        files[f"{raw.image_dir}/{image}"] = _encode(_finish(img, rng, 0.03), "PNG" if ext == "png" else "JPEG")
        finding = finding.format(side=side)
        # a fifth of the cases carry no identifying text, so a filter's false positives show up too
        phi = _phi(rng) if i % 5 != 4 else {}
        planted = [k for k in ("name", "age", "date", "identifier") if k in phi and rng.random() < 0.8]
        if phi and not planted:
            planted = ["name"]
        ph = lambda k: f" {phi[k][1]}" if k in planted else ""   # noqa: E731
        if "name" in planted:
            title = f"{title_t} in {phi['name'][1]}: a case report"
        else:
            title = f"{title_t}: a case report"
        subject = phi["age"][1] if "age" in planted else "the patient"
        caption = (f"{modality} of {subject} obtained{ph('date')}{ph('identifier')} {finding}."
                   .replace("  ", " "))
        caption = caption[0].upper() + caption[1:]
        lines.append(json.dumps({"uid": uid, "title": title, "caption": caption, "image": image,
                                 "planted": [phi[k][0] for k in planted], "planted_kinds": planted,
                                 "finding": kind}, ensure_ascii=False))
    files[raw.table] = ("\n".join(lines) + "\n").encode()
    return files


_BUILDERS: dict[str, Callable[[DataCard, np.random.Generator, dict[str, int], float], dict[str, bytes]]] = {
    "chestmnist": _build_chestmnist, "pneumoniamnist": _build_pneumoniamnist, "breastmnist": _build_breastmnist,
    "dermnet": _build_dermnet, "ham10000": _build_ham10000, "slake": _build_slake, "iu_xray": _build_iu_xray,
    "openi_cases": _build_openi_cases,
}
