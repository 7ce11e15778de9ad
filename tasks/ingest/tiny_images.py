"""The tiny benchmark's pictures: modality-like backgrounds with class-specific shapes, textures and intensities,
drawn from a seeded generator, and their byte-deterministic encodings (PNG/JPEG with fixed settings, npz archives with a
fixed member date, CSV with fixed field order).
"""
from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Mapping

import numpy as np
from PIL import Image

MEDMNIST_PX, PHOTO_PX, SLAKE_PX, IU_PX, OPENI_PX = 28, 40, 48, 48, 48

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_JPEG = {"quality": 90, "optimize": False, "progressive": False, "subsampling": 0}
_PNG = {"optimize": False, "compress_level": 6}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
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


def u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode(img: np.ndarray, fmt: str) -> bytes:
    """JPEG/PNG bytes of a float image in [0,1], (H,W) grayscale or (H,W,3) RGB."""
    buf = io.BytesIO()
    Image.fromarray(u8(img)).save(buf, format=fmt, **(_JPEG if fmt == "JPEG" else _PNG))
    return buf.getvalue()


def csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
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


def finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Acquisition variation shared by all modalities: gain, offset and pixel noise."""
    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-0.04, 0.04)
    return img + rng.normal(0.0, noise, img.shape)


# Findings the chest renderer draws; the side is the patient's (patient's left = image right on a PA film).
def chest(s: int, rng: np.random.Generator, findings: Mapping[str, str] | None = None,
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


def chestmnist_image(rng: np.random.Generator, positives: np.ndarray) -> np.ndarray:
    s = MEDMNIST_PX
    x, y = _coords(s)
    img = chest(s, rng, {"cardiomegaly": ""} if positives[1] else {})
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


def ultrasound(rng: np.random.Generator, malignant: bool, lesion: bool) -> np.ndarray:
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


def skin_photo(rng: np.random.Generator, look: str, dermoscopy: bool) -> np.ndarray:
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


def ct_abdomen(rng: np.random.Generator, lesion: bool) -> np.ndarray:
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


def mri_brain(rng: np.random.Generator, lesion: bool) -> np.ndarray:
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
