"""DICOM images (VinDr, CBIS-DDSM) as 8-bit PNG; `encode_image` picks DICOM or plain image decoding by file suffix.

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py -k dicom

Needs pydicom (pinned by the project); without it, reading a DICOM file raises a DataError that names the file.
Compressed transfer syntaxes (JPEG 2000, JPEG-LS) additionally need one of pydicom's decoder plugins
(pylibjpeg-openjpeg, python-gdcm); pydicom's own message, which names them, is passed on per file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import RowError, check_pixels, encode_array, encode_file
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS

DICOM_EXTENSIONS = {".dcm", ".dicom"}
PYDICOM_HINT = "pydicom installed (pip install pydicom==3.0.2), which is required to read DICOM images"


def is_dicom(path: Path) -> bool:
    """Whether `path` is read as DICOM (by suffix: .dcm / .dicom)."""
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`arr` mapped linearly from [lo, hi] onto 0..255 (clipped); a flat image becomes all zeros."""
    if not np.isfinite([lo, hi]).all() or hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _apply_voi_lut(arr: np.ndarray, ds) -> tuple[np.ndarray, np.ndarray]:
    """(`arr` through the first VOI LUT of the VOI LUT Sequence, the LUT itself)."""
    # Not pydicom's apply_voi: 3.0.2 builds its index array in the LUT's entry dtype, so the indexes of an 8-bit LUT
    # with more than 256 entries wrap around (pixels/processing.py, `clipped_iv = np.zeros(arr.shape, dtype=dtype)`).
    item = ds.VOILUTSequence[0]
    n, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
    data = item.LUTData
    if isinstance(data, bytes):   # VR OW: 16-bit words in the file's byte order
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        order = ">" if syntax is not None and not syntax.is_little_endian else "<"
        lut = np.frombuffer(data, dtype=f"{order}u2")[:n].astype(np.int64)
    else:                         # VR US: one value or a list
        lut = np.atleast_1d(np.asarray(data, dtype=np.int64))[:n]
    idx = np.clip(np.rint(arr).astype(np.int64) - first, 0, len(lut) - 1)
    return lut[idx], lut


def dicom_to_uint8(ds) -> np.ndarray:
    """The dataset's pixels as uint8 (H,W) grey or (H,W,3) RGB, as a viewer would show them.

    Grey images: modality LUT / rescale slope+intercept, then the first VOI LUT (preferred, as in pydicom's
    apply_voi_lut) or window, mapped from the LUT's / window's output range; without either, min-max over the image.
    MONOCHROME1 is inverted so that bright means dense in every image.
    """
    from pydicom.pixels import apply_modality_lut, apply_windowing

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"a single-frame image, got {frames} frames")
    arr = ds.pixel_array
    if int(ds.get("SamplesPerPixel", 1)) == 3:   # pydicom already returns YBR data as RGB
        return arr if arr.dtype == np.uint8 else _scale(arr, float(arr.min()), float(arr.max()))
    if arr.ndim != 2:
        raise ValueError(f"a 2-D grey image, got pixel array shape {arr.shape}")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    arr = apply_modality_lut(arr, ds)
    lut = ds.get("VOILUTSequence")
    has_lut = bool(lut) and lut[0].get("LUTDescriptor") is not None and lut[0].get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if has_lut:
        out, lut = _apply_voi_lut(arr, ds)
        grey = _scale(out, float(lut.min()), float(lut.max()))
    elif has_window:
        out = apply_windowing(arr, ds)
        # values far outside any window land on the window's output limits; the library owns that range
        with np.errstate(over="ignore"):
            y0, y1 = apply_windowing(np.array([-1e15, 1e15]), ds)
        grey = _scale(out, min(y0, y1), max(y0, y1))
    else:
        grey = _scale(arr, float(arr.min()), float(arr.max()))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def encode_dicom(path: Path, where: str, row=None, field=None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[bytes, str, int, int]:
    """PNG bytes (8-bit, see dicom_to_uint8) of a DICOM file, with format and size; errors name the file. An image
    larger than `max_pixels` (Rows x Columns) is refused before its pixels are decoded."""
    try:
        import pydicom
    except ImportError:
        raise DataError(where, f"{PYDICOM_HINT}; cannot read {path}", row=row, field=field) from None
    if not Path(path).is_file():
        raise RowError(where, f"an existing image file, {path} is missing", row=row, field=field)
    try:
        ds = pydicom.dcmread(path)
        size = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    except Exception as e:
        raise RowError(where, f"a readable DICOM image, {path} is not ({type(e).__name__}: {e})", row=row,
                       field=field) from None
    check_pixels(*size, max_pixels, where, row=row, field=field)
    try:
        arr = dicom_to_uint8(ds)
    except Exception as e:
        raise RowError(where, f"a readable DICOM image, {path} is not ({type(e).__name__}: {e})", row=row,
                       field=field) from None
    return encode_array(arr)


def encode_image(path: Path, where: str, row=None, field=None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
                 ) -> tuple[bytes, str, int, int]:
    """Encoded bytes, format and size of an image file: DICOM converted to PNG, other formats via encode_file."""
    if is_dicom(path):
        return encode_dicom(path, where, row=row, field=field, max_pixels=max_pixels)
    return encode_file(path, where, row=row, field=field, max_pixels=max_pixels)
