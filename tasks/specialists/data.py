"""The specialist data path: canonical table rows -> checked splits -> decoded, resized uint8 batches.

    data = data_from_samples(train_df, val_df, test_df, digest=...)
    datasets, placement = make_datasets(data, img_size=224, recipe=recipe, device=torch.device("cuda"))

Encoded PNG/JPEG bytes (the canonical table's `image` column) or uint8 arrays -> `ImageDataset` decodes, converts to
L or RGB and resizes (bilinear) in `Recipe.num_workers` DataLoader workers -> train and val, read every epoch, are
decoded once into a uint8 tensor (one channel for all-grayscale sets; `CachedImages`, fetched a whole batch per index
operation) kept on the GPU while they fit `Recipe.device_cache_max_bytes`, else in host memory while they fit
`Recipe.cache_max_bytes`, else decoded again each epoch -> uint8 batches reach the device, where grayscale is
broadcast to 3 channels and mean/std normalisation runs (a quarter of float32's host-to-device traffic).
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data_contracts.errors import DataError
from data_contracts.layout import SPLITS
from tasks.specialists.settings import Recipe

SPECIALIST_TASK_TYPES = ("binary", "multiclass", "multilabel")


@dataclass
class Split:
    """One split: sample ids, images (encoded PNG/JPEG bytes or uint8 arrays) and targets (index, or multi-hot rows)."""
    ids: list[str]
    images: Sequence[bytes] | np.ndarray | Sequence[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SpecialistData:
    """A diagnosis dataset's three splits, label names and task type; checked on construction."""
    dataset: str
    task_type: str
    label_names: list[str]
    train: Split
    val: Split
    test: Split
    digest: str | None = None  # content digest of the canonical tables, when known (else computed from the arrays)

    def __post_init__(self):
        if self.task_type not in SPECIALIST_TASK_TYPES:
            raise ValueError(f"{self.dataset}: task_type {self.task_type!r}, expected one of {SPECIALIST_TASK_TYPES}")
        c = len(self.label_names)
        if c < 2 or len(set(self.label_names)) != c:
            raise ValueError(f"{self.dataset}: label_names must be >= 2 distinct names, got {self.label_names}")
        if self.task_type == "binary" and c != 2:
            raise ValueError(f"{self.dataset}: binary task needs 2 label names, got {c}")
        for name in SPLITS:
            s = getattr(self, name)
            where = f"{self.dataset}/{name}"
            s.ids = [str(i) for i in s.ids]
            s.targets = np.asarray(s.targets)
            if len(s) == 0:
                raise DataError(where, "at least one sample", field="ids")
            if len(s.images) != len(s) or len(s.targets) != len(s):
                raise DataError(where, f"equal lengths of ids ({len(s)}), images ({len(s.images)}) and targets "
                                       f"({len(s.targets)})")
            if len(set(s.ids)) != len(s):
                raise DataError(where, "unique sample ids", field="ids")
            t = s.targets
            if self.task_type == "multilabel":
                if t.ndim != 2 or t.shape[1] != c or not np.isin(t, (0, 1)).all():
                    raise DataError(where, f"multi-hot targets of shape (N, {c}) with 0/1 entries, got shape "
                                           f"{t.shape}", field="targets")
                s.targets = t.astype(np.float32)
            else:
                if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= c:
                    bad = int(np.flatnonzero((t < 0) | (t >= c))[0]) if t.ndim == 1 and t.size else None
                    raise DataError(where, f"class indices in [0, {c}) of shape (N,)", row=bad, field="targets")
                s.targets = t.astype(np.int64)
        if self.train.targets.ndim == 1 and len(np.unique(self.train.targets)) < 2:
            raise DataError(f"{self.dataset}/train", "at least two classes present", field="targets")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def content_digest(self) -> str:
        """`digest` if given, else sha256 over ids, targets and image bytes of all splits (32 hex chars)."""
        if self.digest:
            return self.digest
        h = hashlib.sha256(f"{self.dataset}|{self.task_type}|{json.dumps(self.label_names)}".encode())
        for name in SPLITS:
            s = getattr(self, name)
            h.update(name.encode())
            h.update(json.dumps(s.ids).encode())
            h.update(np.ascontiguousarray(s.targets).tobytes())
            for img in s.images:
                if isinstance(img, (bytes, bytearray, memoryview)):
                    h.update(b"b" + bytes(img))
                else:
                    a = np.ascontiguousarray(img)
                    h.update(f"a{a.shape}".encode() + a.tobytes())
        return h.hexdigest()[:32]


def data_from_samples(train, val, test, digest: str | None = None) -> SpecialistData:
    """SpecialistData from the canonical samples table's three split frames (polars/pandas: sample_id, image, ...)."""
    def col(df, name):
        c = df[name]
        return c.to_list() if hasattr(c, "to_list") else list(c)

    first = {k: col(train, k)[0] for k in ("dataset", "task_type", "label_set")}
    label_names = list(first["label_set"])
    index = {n: i for i, n in enumerate(label_names)}
    splits = {}
    for name, df in zip(SPLITS, (train, val, test)):
        where = f"{first['dataset']}/{name}"
        ids, labels = col(df, "sample_id"), col(df, "labels")
        for i, ls in enumerate(col(df, "label_set")):
            if list(ls) != label_names:
                raise DataError(where, f"label_set {label_names} in every row", row=i, field="label_set")
        for i, tt in enumerate(col(df, "task_type")):
            if tt != first["task_type"]:
                raise DataError(where, f"task_type {first['task_type']!r} in every row", row=i, field="task_type")
        if first["task_type"] == "multilabel":
            targets = np.zeros((len(ids), len(label_names)), np.float32)
            for i, ls in enumerate(labels):
                for lab in ls:
                    if lab not in index:
                        raise DataError(where, f"labels within {label_names}", row=i, field="labels")
                    targets[i, index[lab]] = 1
        else:
            bad = [i for i, ls in enumerate(labels) if len(ls) != 1 or ls[0] not in index]
            if bad:
                raise DataError(where, f"exactly one label within {label_names}", row=bad[0], field="labels")
            targets = np.array([index[ls[0]] for ls in labels], np.int64)
        splits[name] = Split(ids, col(df, "image"), targets)
    return SpecialistData(first["dataset"], first["task_type"], label_names, digest=digest, **splits)


def decode_image(item, size: int) -> np.ndarray:
    """A (size, size) grayscale or (size, size, 3) RGB uint8 array from encoded bytes or a uint8 array (bilinear)."""
    if isinstance(item, (bytes, bytearray, memoryview)):
        im = Image.open(io.BytesIO(item))
        # JPEG decodes at a reduced DCT scale when the target is much smaller: same result class, far less work
        im.draft("RGB" if im.mode not in ("L", "1") else "L", (size, size))
    else:
        a = np.asarray(item)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
            raise ValueError(f"array image of dtype {a.dtype} shape {a.shape}, expected uint8 (H, W) or (H, W, 3)")
        im = Image.fromarray(a)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float32)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8))
    elif im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in ("1", "LA", "P") and _palette_is_gray(im) else "RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im)


def _palette_is_gray(im: Image.Image) -> bool:
    if im.mode in ("1", "LA"):
        return True
    pal = im.getpalette()
    if not pal:
        return True
    p = np.asarray(pal, np.uint8).reshape(-1, 3)
    return bool((p[:, 0] == p[:, 1]).all() and (p[:, 1] == p[:, 2]).all())


class ImageDataset(Dataset):
    """Decodes and resizes one split per item: (uint8 tensor (1|3, S, S), index); errors name the sample."""

    def __init__(self, images, img_size: int, ids: Sequence[str] | None = None, where: str = "images"):
        self.images, self.img_size, self.ids, self.where = images, int(img_size), ids, where

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        try:
            a = decode_image(self.images[i], self.img_size)
        except Exception as e:
            sid = self.ids[i] if self.ids is not None else None
            raise DataError(self.where, f"a decodable PNG/JPEG or uint8 image ({type(e).__name__}: {e})",
                            row=f"{i} (sample {sid})" if sid else i, field="image") from None
        t = torch.from_numpy(np.require(a, requirements=["C", "W"]))  # PIL's arrays are read-only
        return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()), i


def collate_images(batch):
    """(uint8 (B, C, S, S), indices): one channel when every image is grayscale, else gray images repeated to 3."""
    xs, idx = zip(*batch)
    if any(x.shape[0] == 3 for x in xs):
        xs = [x.expand(3, -1, -1) for x in xs]
    return torch.stack(xs), torch.as_tensor(idx, dtype=torch.long)


class CachedImages(Dataset):
    """A split decoded once into a uint8 tensor (N, C, S, S); fetches whole batches with one index operation."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], i

    def __getitems__(self, idx: list[int]):
        i = torch.as_tensor(idx, dtype=torch.long)
        if self.x.is_cuda:  # a pinned, asynchronous index copy keeps the host from waiting on the GPU every batch
            i = i.pin_memory().to(self.x.device, non_blocking=True)
        return self.x[i], i


def _pass_through(batch):
    return batch


def decode_all(ds: ImageDataset, num_workers: int = 0, batch_size: int = 256) -> torch.Tensor:
    """The whole split decoded into one uint8 tensor (N, C, S, S), C = 1 when every image is grayscale."""
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_images, multiprocessing_context=_mp_context(num_workers),
                        generator=_private_generator())
    parts = [x for x, _ in loader]
    if any(p.shape[1] == 3 for p in parts):
        parts = [p.expand(-1, 3, -1, -1) for p in parts]
    return torch.cat(parts)


def _mp_context(num_workers: int):
    # fork shares the encoded bytes with workers copy-on-write; torch's default on Linux, made explicit
    return "fork" if num_workers > 0 and sys.platform.startswith("linux") else None


def make_datasets(data: SpecialistData, img_size: int, recipe: Recipe, device: torch.device
                  ) -> tuple[dict[str, Dataset], dict[str, str]]:
    """Each split's Dataset and where it lives: 'device' / 'host' (decoded once) or 'stream' (decoded per epoch).

    train and val are read every epoch, so they are decoded once while they fit `cache_max_bytes` (counted as
    3-channel uint8, since channels are known only after decoding), then moved to the GPU while their actual size fits
    `device_cache_max_bytes`; test is read once and streams."""
    host_left = recipe.cache_max_bytes
    dev_left = recipe.device_cache_max_bytes if device.type == "cuda" else 0
    out, place = {}, {}
    for s in SPLITS:
        split = getattr(data, s)
        ds = ImageDataset(split.images, img_size, split.ids, f"{data.dataset}/{s}")
        need = len(split) * 3 * img_size * img_size
        if s == "test" or need > host_left:
            out[s], place[s] = ds, "stream"
            continue
        x = decode_all(ds, recipe.num_workers)
        if x.nbytes <= dev_left:
            out[s], place[s], dev_left = CachedImages(x.to(device)), "device", dev_left - x.nbytes
        else:
            out[s], place[s], host_left = CachedImages(x), "host", host_left - x.nbytes
    return out, place


class EpochSampler(torch.utils.data.Sampler):
    """A permutation seeded by (seed, epoch): the same order on a rerun or a resumed run, whatever the workers."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(ds: Dataset, batch_size: int, sampler=None, num_workers: int = 0, pin_memory: bool = False,
                drop_last: bool = False) -> DataLoader:
    """The DataLoader of the job's data path: batched fetches for cached splits, decoding workers otherwise."""
    cached = isinstance(ds, CachedImages)
    workers = 0 if cached else num_workers  # a cached batch is one gather: worker IPC would only add copies
    pin = pin_memory and not (cached and ds.x.is_cuda)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      collate_fn=_pass_through if cached else collate_images, pin_memory=pin,
                      drop_last=drop_last, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None, multiprocessing_context=_mp_context(workers),
                      generator=_private_generator())


def _private_generator() -> torch.Generator:
    """A loader's own RNG. Without one, every `iter(loader)` draws its workers' base seed from torch's global RNG,
    which jobs on parallel threads share: one job's draw then shifts another's weight initialisation (and the
    workers' seeds would depend on what else ran in the process)."""
    return torch.Generator().manual_seed(0)
