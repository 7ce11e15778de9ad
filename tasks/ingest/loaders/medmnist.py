"""MedMNIST `{flag}.npz` / `{flag}_{size}.npz`: keys {train,val,test}_{images,labels}, images (N,s,s[,3]) uint8."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, encode_array, make_row

SPLIT_KEYS = {"train": "train", "val": "val", "test": "test"}


def find_npz(ctx: LoadContext):
    """The npz file for the card: raw.npz_file, else the largest-size `{flag}_{size}.npz` present."""
    raw = ctx.card.raw
    if raw.npz_file and (ctx.dataset_dir / raw.npz_file).is_file():
        return ctx.dataset_dir / raw.npz_file
    for size in (224, 128, 64):
        p = ctx.dataset_dir / f"{raw.flag}_{size}.npz"
        if p.is_file():
            return p
    raise DataError(str(ctx.dataset_dir / (raw.npz_file or f"{raw.flag}.npz")), "a MedMNIST npz file")


def load(ctx: LoadContext) -> Iterator[dict | Reject]:
    """Rows of every split in the npz; shapes and keys are checked before any row is produced."""
    card, path = ctx.card, find_npz(ctx)
    rel = ctx.rel(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DataError(rel, f"a readable npz archive ({type(e).__name__}: {e})") from None
    multilabel = card.task_type == "multilabel"
    n_label_cols = len(card.raw.label_map) if multilabel else 1
    arrays = {}
    for split in SPLIT_KEYS:
        for kind in ("images", "labels"):
            key = f"{split}_{kind}"
            if key not in npz.files:
                raise DataError(rel, f"key {key!r} (keys present: {sorted(npz.files)})", field=key)
            arrays[key] = npz[key]
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.dtype != np.uint8 or not (imgs.ndim == 3 or (imgs.ndim == 4 and imgs.shape[-1] == 3)):
            raise DataError(rel, f"uint8 images of shape (N,s,s) or (N,s,s,3), got {imgs.dtype} {imgs.shape}",
                            field=f"{split}_images")
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape != (imgs.shape[0], n_label_cols):
            raise DataError(rel, f"labels of shape ({imgs.shape[0]}, {n_label_cols}), got {labels.shape}",
                            field=f"{split}_labels")
        arrays[f"{split}_labels"] = labels
    for split in SPLIT_KEYS:
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for i in range(imgs.shape[0]):
            src = f"{rel}#{split}_images[{i}]"
            try:
                if multilabel:
                    names = [card.raw.label_map[str(j)] for j in np.flatnonzero(labels[i])]
                    if not names:
                        if not card.raw.empty_means:
                            raise RowError(rel, "at least one positive label", row=i, field=f"{split}_labels")
                        names = [card.raw.empty_means]
                else:
                    v = str(int(labels[i, 0]))
                    if v not in card.raw.label_map:
                        raise RowError(rel, f"a label index in {sorted(card.raw.label_map)}, got {v}", row=i,
                                       field=f"{split}_labels")
                    names = [card.raw.label_map[v]]
                yield make_row(ctx, sample_id=f"{split}:{i}", split=split, image=encode_array(imgs[i]),
                               source_path=src, labels=names)
            except RowError as e:
                yield Reject(src, str(i), e.field, str(e))
