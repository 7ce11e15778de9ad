"""Specialist training: the ten tiny architectures, the data path, training, early stopping, weights, resume.

    OMP_NUM_THREADS=1 pytest -q tests/test_specialist.py
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from PIL import Image, ImageDraw

from data_contracts.errors import DataError
from data_contracts.layout import JobFiles
from infra.profiles import load_profile
from tasks.specialists.architectures import ARCHS, ArchSpec, arch_spec, lr_scale_of
from tasks.specialists.data import (CachedImages, ImageDataset, SpecialistData, Split, collate_images,
                                   data_from_samples, decode_all, make_datasets)
from tasks.specialists.models import SCRATCH_NOTE, build_model, create_model, embedding_dim, forward_embed
from tasks.specialists.outputs import load_result, read_card
from tasks.specialists.settings import Recipe
from tasks.specialists.training import Runtime, predict, train_specialist

TINY = load_profile("tiny").specialists


def tiny_arch(name: str) -> ArchSpec:
    """The architecture as the tiny profile trains it (its sizes; no weights, so from scratch)."""
    return arch_spec(name, TINY.arch_settings[name])


TINY_EMB_DIM = {"vgg16": 4096, "alexnet": 512, "resnet18": 128, "densenet121": 256, "efficientnet_b4": 640,
                "vit_b16": 64, "clip_vit_b16": 64, "eva02_vit_b16": 64, "dino_vit_b16": 64, "sam_vit_b16": 32}
SHAPES = ("square", "ring", "stripes")


def _draw(shapes, rng, size=32, rgb=False) -> Image.Image:
    """A noisy image holding the named shapes at random places; each shape has its own intensity."""
    base = rng.integers(0, 50, (size, size)).astype(np.uint8)
    im = Image.fromarray(base, "L")
    d = ImageDraw.Draw(im)
    for s in shapes:
        x, y = (int(v) for v in rng.integers(2, size // 2, 2))
        w = int(rng.integers(size // 4, size // 2))
        if s == "square":
            d.rectangle([x, y, x + w, y + w], fill=230)
        elif s == "ring":
            d.ellipse([x, y, x + w, y + w], outline=160, width=3)
        else:
            for r in range(0, size, 6):
                d.line([0, r, size, r], fill=110, width=2)
    return im.convert("RGB") if rgb else im


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _split(n, rng, multilabel=False, label_noise=0.0, prefix="s") -> Split:
    images, targets = [], []
    for i in range(n):
        if multilabel:
            t = (rng.random(3) < 0.5).astype(np.float32)
            images.append(_encode(_draw([SHAPES[j] for j in np.flatnonzero(t)], rng, rgb=True), "JPEG"))
        else:
            t = i % 3
            images.append(_encode(_draw([SHAPES[t]], rng), "PNG"))
            if rng.random() < label_noise:
                t = int(rng.integers(0, 3))
        targets.append(t)
    return Split([f"{prefix}{i:04d}" for i in range(n)], images, np.array(targets))


def _data(seed=0, sizes=(120, 45, 60), **kw) -> SpecialistData:
    rng = np.random.default_rng(seed)
    ml = kw.get("multilabel", False)
    splits = {s: _split(n, rng, prefix=f"{s}-", **kw) for s, n in zip(("train", "val", "test"), sizes)}
    return SpecialistData("shapes", "multilabel" if ml else "multiclass", list(SHAPES), **splits)


def _recipe(**kw) -> Recipe:
    base = dict(img_size=32, batch_size=16, max_epochs=8, lr=3e-3, patience=3, eval_batch_size=64, seed=0,
                resume_every_s=0.0)
    return Recipe(**{**base, **kw})


@pytest.mark.parametrize("name", list(ARCHS))
def test_tiny_arch_builds_and_embeds(name):
    arch = tiny_arch(name)
    for size in (arch.img_size or 32, 224):
        torch.manual_seed(0)
        model, init = build_model(arch, 5, size)
        assert init.init == "scratch" and init.note.startswith(SCRATCH_NOTE)
        model.eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            logits, emb = forward_embed(model, arch, x)
            ref = model(x)
        assert logits.shape == (2, 5)
        assert emb.shape == (2, TINY_EMB_DIM[name]) == (2, embedding_dim(model, arch))
        torch.testing.assert_close(logits, ref)
        assert torch.isfinite(emb).all() and emb.std() > 0


def test_full_archs_pin_registered_weights():
    assert len(ARCHS) == 10
    for a in ARCHS.values():
        assert not a.allow_scratch and a.weights_path is None and a.pretrained_tag
        if a.source == "timm":
            assert a.full_name in timm.list_pretrained(a.full_name), a.full_name
        else:
            torchvision.models.get_model_weights(a.model_name)[a.pretrained_tag]  # raises if not a weights enum name
    assert ARCHS["sam_vit_b16"].full_name == "samvit_base_patch16.sa1b"
    assert ARCHS["dino_vit_b16"].full_name == "vit_base_patch16_224.dino"
    assert create_model(tiny_arch("alexnet"), 2, 64) is not None
    with pytest.raises(ValueError, match="at least 63 px"):
        create_model(tiny_arch("alexnet"), 2, 32)


def test_data_path_gray_rgb_arrays_and_bad_bytes():
    rng = np.random.default_rng(1)
    gray = _draw(["square"], rng, size=40)
    rgb = _draw(["ring"], rng, size=40, rgb=True)
    arr = np.asarray(_draw(["stripes"], rng, size=40))
    images = [_encode(gray, "PNG"), _encode(rgb, "JPEG"), arr, np.stack([arr] * 3, -1)]
    ds = ImageDataset(images, 32, ids=["a", "b", "c", "d"], where="t/train")
    assert ds[0][0].shape == (1, 32, 32) and ds[1][0].shape == (3, 32, 32) and ds[2][0].shape == (1, 32, 32)
    x, idx = collate_images([ds[i] for i in range(4)])
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and idx.tolist() == [0, 1, 2, 3]
    assert torch.equal(x[0, 0], x[0, 2]) and torch.equal(x[2], x[3])  # grayscale repeated into 3 equal channels
    want = np.asarray(gray.resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(x[0, 0].numpy(), want)
    cached = decode_all(ds)
    assert torch.equal(cached, x)
    assert decode_all(ImageDataset(images[:1] + images[2:3], 32)).shape == (2, 1, 32, 32)  # gray set: 1 channel
    rt = Runtime("cpu", Recipe(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    xin = rt.prepare(cached[2:3, :1])
    assert xin.shape == (1, 3, 32, 32)
    torch.testing.assert_close(xin[0, 1], (cached[2, 0].float() / 255 - 0.5) / 0.25)
    bad = ImageDataset([b"not an image"], 32, ids=["x-17"], where="t/val")
    with pytest.raises(DataError, match=r"t/val row 0 \(sample x-17\) field 'image'"):
        bad[0]


def test_specialist_data_rejects_bad_targets():
    rng = np.random.default_rng(0)
    good = _split(6, rng)
    with pytest.raises(DataError, match=r"shapes/val.*class indices in \[0, 3\)"):
        SpecialistData("shapes", "multiclass", list(SHAPES), good, Split(good.ids, good.images, good.targets + 5),
                       good)
    with pytest.raises(DataError, match="multi-hot"):
        SpecialistData("shapes", "multilabel", list(SHAPES), good, good, good)


def test_multiclass_training_beats_chance_and_outputs_reload(tmp_path):
    data = _data()
    arch = tiny_arch("resnet18")
    res = train_specialist(data, arch, _recipe(), tmp_path / "job")
    out = tmp_path / "job"
    assert res.status == "trained" and res.init == "scratch" and "weights absent" in res.weights_note
    assert res.params["loss"] == "cross_entropy"
    assert res.metrics["test_accuracy"] > 0.7, res.history  # chance is 1/3
    for name in ["best.safetensors", "test_predictions.jsonl", "probs_test.npy", "metrics.json", "history.json",
                 "done.json", *(f"emb_{s}.npy" for s in ("train", "val", "test")),
                 *(f"ids_{s}.json" for s in ("train", "val", "test"))]:
        assert (out / name).is_file(), name
    assert not (out / "last.pt").exists() and not list(out.glob(".*.tmp"))
    sd = safetensors.torch.load_file(str(out / "best.safetensors"))
    assert "fc.weight" in sd and sd["fc.weight"].shape == (3, 128)
    card = read_card(out / "best.safetensors")
    assert card["epoch"] == res.best_epoch and card["label_names"] == list(SHAPES)
    done = json.loads((out / "done.json").read_text())
    assert done["fingerprint"] == res.fingerprint and done["metrics"] == res.metrics

    probs = np.load(out / "probs_test.npy", allow_pickle=False)
    emb = {s: np.load(out / f"emb_{s}.npy", allow_pickle=False) for s in ("train", "val", "test")}
    assert probs.shape == (60, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert emb["train"].shape == (120, 128) and emb["test"].shape == (60, 128)
    assert json.loads((out / "ids_test.json").read_text()) == data.test.ids
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == data.test.ids
    assert [r["predicted"][0] for r in rows] == [SHAPES[i] for i in probs.argmax(1)]
    acc = float(np.mean(probs.argmax(1) == data.test.targets))
    assert acc == pytest.approx(res.metrics["test_accuracy"])

    p2, e2 = predict(out / "best.safetensors", arch, data.test.images)
    np.testing.assert_allclose(p2, probs, atol=1e-5)
    np.testing.assert_allclose(e2, emb["test"], atol=1e-4)

    again = train_specialist(data, arch, _recipe(), out)
    assert again.status == "skipped" and again.metrics == res.metrics
    changed = train_specialist(data, arch, _recipe(max_epochs=2), out)
    assert changed.status == "trained" and changed.epochs_run == 2  # another recipe: stale outputs replaced


def test_multilabel_uses_bce_and_multi_hot_predictions(tmp_path):
    data = _data(seed=3, multilabel=True)
    res = train_specialist(data, tiny_arch("resnet18"), _recipe(max_epochs=10), tmp_path / "ml")
    assert res.params["loss"] == "bce_with_logits"
    probs = np.load(tmp_path / "ml" / "probs_test.npy")
    y = data.test.targets
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert bce == pytest.approx(res.metrics["test_loss"], abs=1e-4)  # the reported loss is BCE over sigmoid outputs
    assert not np.allclose(probs.sum(1), 1, atol=1e-2)
    rows = [json.loads(line) for line in (tmp_path / "ml" / "test_predictions.jsonl").read_text().splitlines()]
    for r, pr in zip(rows, probs):
        assert r["predicted"] == [SHAPES[j] for j in range(3) if pr[j] >= 0.5]
    assert any(len(r["predicted"]) >= 2 for r in rows)
    assert res.metrics["test_macro_f1"] > 0.6, res.history


def test_early_stopping_keeps_best_val_loss_epoch(tmp_path):
    # half the labels are noise: validation loss falls while the shapes are learnt, then rises as the noise is fitted
    data = _data(seed=5, sizes=(60, 30, 15), label_noise=0.5)
    recipe = _recipe(max_epochs=25, lr=3e-3 / lr_scale_of(tiny_arch("resnet18")), patience=2)  # a step of 3e-3
    res = train_specialist(data, tiny_arch("resnet18"), recipe, tmp_path / "es")
    vals = [h["val_loss"] for h in res.history]
    assert res.stopped_early and res.epochs_run < 25
    assert res.best_epoch == int(np.argmin(vals)) >= 2
    assert res.epochs_run == res.best_epoch + recipe.patience + 1
    probs, _ = predict(tmp_path / "es" / "best.safetensors", tiny_arch("resnet18"), data.val.images)
    ce = float(-np.mean(np.log(probs[np.arange(len(probs)), data.val.targets])))
    assert ce == pytest.approx(vals[res.best_epoch], abs=1e-4)  # the kept weights are the best epoch's
    assert ce < vals[-1]
    # and the written predictions and embeddings come from those weights, not the last epoch's
    p_test, e_test = predict(tmp_path / "es" / "best.safetensors", tiny_arch("resnet18"), data.test.images)
    np.testing.assert_allclose(np.load(tmp_path / "es" / "probs_test.npy"), p_test, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "es" / "emb_test.npy"), e_test, atol=1e-4)
    assert res.metrics["best_val_loss"] == pytest.approx(vals[res.best_epoch])


def test_missing_weights_fail_clearly_unless_scratch_allowed(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'resnet18' \(timm resnet18\.a1_in1k\).*no weights_path.*"
                                                r"hf\.co/timm/resnet18\.a1_in1k.*allow_scratch"):
        build_model(ARCHS["resnet18"], 3, 32)
    missing = tmp_path / "nowhere" / "alexnet.pth"
    with pytest.raises(FileNotFoundError, match=rf"'alexnet'.*{missing}.*alexnet-owt-7be5be79\.pth"):
        build_model(ARCHS["alexnet"].model_copy(update=dict(weights_path=str(missing))), 3, 224)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        train_specialist(_data(sizes=(6, 3, 3)), ARCHS["resnet18"], _recipe(), tmp_path / "job")
    assert not (tmp_path / "job" / "done.json").exists()
    _, init = build_model(tiny_arch("resnet18").model_copy(update=dict(weights_path=str(missing))), 3, 32)
    assert init.init == "scratch" and init.note.startswith("weights absent: trained from scratch") and str(missing) in init.note


def test_local_weights_load_except_new_head(tmp_path):
    arch = tiny_arch("resnet18")
    torch.manual_seed(1)
    src = create_model(arch, 1000, 32)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(src.state_dict(), str(path))
    model, init = build_model(arch.model_copy(update=dict(weights_path=str(path), allow_scratch=False)), 3, 32)
    assert init.init == "pretrained" and sorted(init.skipped_for_head) == ["fc.bias", "fc.weight"]
    assert init.weights_sha256 and str(path) in init.note
    torch.testing.assert_close(model.state_dict()["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
    assert model.fc.weight.shape == (3, 128)

    vit = tiny_arch("vit_b16")
    vsrc = create_model(vit, 1000, 32)
    pth = tmp_path / "vit.pth"
    torch.save({"state_dict": vsrc.state_dict()}, pth)  # a wrapped torch checkpoint, read with weights_only=True
    vmodel, vinit = build_model(vit.model_copy(update=dict(weights_path=str(pth))), 2, 32)
    assert sorted(vinit.skipped_for_head) == ["head.bias", "head.weight"]
    torch.testing.assert_close(vmodel.pos_embed, vsrc.pos_embed)

    with pytest.raises(ValueError, match=rf"{pth}: weights do not fit arch 'resnet18'.*missing"):
        build_model(arch.model_copy(update=dict(weights_path=str(pth))), 3, 32)


def test_killed_job_resumes_to_the_same_result(tmp_path, kill_at_validation):
    data = _data(seed=7, sizes=(48, 24, 12))
    arch, recipe = tiny_arch("resnet18"), _recipe(max_epochs=4, patience=10)
    ref = train_specialist(data, arch, recipe, tmp_path / "ref")

    kill_at_validation(3, data, arch, recipe, tmp_path / "job")
    assert load_result(JobFiles(tmp_path / "job")) is None and (tmp_path / "job" / "last.pt").is_file()

    res = train_specialist(data, arch, recipe, tmp_path / "job")
    assert res.status == "resumed" and res.epochs_run == 4
    for a, b in zip(res.history, ref.history):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "job" / "probs_test.npy"), np.load(tmp_path / "ref" / "probs_test.npy"),
                               atol=1e-5)


def test_train_and_val_are_decoded_once_within_the_cache_budget():
    data = _data(sizes=(30, 12, 6))
    each = 3 * 32 * 32
    ds, place = make_datasets(data, 32, Recipe(cache_max_bytes=20 * each), torch.device("cpu"))
    assert place == {"train": "stream", "val": "host", "test": "stream"}  # train is over the budget, val fits
    assert isinstance(ds["val"], CachedImages) and ds["val"].x.shape == (12, 1, 32, 32)  # grayscale: 1 channel
    assert isinstance(ds["train"], ImageDataset) and isinstance(ds["test"], ImageDataset)
    x, idx = ds["val"].__getitems__([3, 1])
    assert torch.equal(x[0], ImageDataset(data.val.images, 32)[3][0]) and idx.tolist() == [3, 1]
    _, place = make_datasets(data, 32, Recipe(cache_max_bytes=42 * each), torch.device("cpu"))
    assert place == {"train": "host", "val": "host", "test": "stream"}


def test_data_from_canonical_samples_frames():
    import polars as pl

    rng = np.random.default_rng(2)
    img = _encode(_draw(["ring"], rng), "PNG")

    def frame(split, labels, task_type="multilabel"):
        return pl.DataFrame({"sample_id": [f"{split}-{i}" for i in range(len(labels))], "dataset": "toy",
                             "task_type": task_type, "image": [img] * len(labels), "labels": labels,
                             "label_set": [["a", "b", "No finding"]] * len(labels)})

    ml = [["a"], ["a", "b"], ["No finding"]]
    data = data_from_samples(frame("train", ml), frame("val", ml), frame("test", ml), digest="d1")
    assert data.task_type == "multilabel" and data.label_names == ["a", "b", "No finding"]
    np.testing.assert_array_equal(data.train.targets, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    assert data.content_digest() == "d1"
    mc = [["b"], ["a"], ["No finding"]]
    data = data_from_samples(*(frame(s, mc, "multiclass") for s in ("train", "val", "test")))
    assert data.test.targets.tolist() == [1, 0, 2] and len(data.content_digest()) == 32
    with pytest.raises(DataError, match=r"toy/val row 1 field 'labels'"):
        data_from_samples(frame("train", mc, "multiclass"), frame("val", [["a"], ["a", "b"], ["b"]], "multiclass"),
                             frame("test", mc, "multiclass"))


# ------------------------------------------------------------------------------------------- classification_metrics
NAMES3 = ["nevus", "bcc", "melanoma"]
MC_TARGETS = np.array([0, 0, 1, 1, 0])                  # "melanoma" absent from the targets


def _metrics_no_warnings(*args, **kwargs):
    import warnings

    from tasks.specialists.outputs import classification_metrics_and_notes
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # sklearn's "AUC undefined" warning must not happen either
        m, notes = classification_metrics_and_notes(*args, **kwargs)
    assert all(v is None or np.isfinite(v) for v in m.values()), m
    return m, notes


def test_classification_metrics_multiclass_missing_class_torchmetrics_convention():
    from torchmetrics.functional.classification import multiclass_f1_score
    probs = np.array([[.7, .2, .1], [.2, .1, .7], [.1, .8, .1], [.6, .3, .1], [.5, .4, .1]], dtype=np.float32)
    m, notes = _metrics_no_warnings("multiclass", MC_TARGETS, probs, label_names=NAMES3)
    # predicted 0, 2, 1, 0, 0: nevus tp2 fp1 fn1 -> 2/3, bcc tp1 fn1 -> 2/3, melanoma fp1 -> 0 (predicted: averaged)
    assert m["macro_f1"] == pytest.approx(4 / 9)
    assert m["micro_f1"] == pytest.approx(3 / 5) and m["accuracy"] == pytest.approx(3 / 5)
    assert m["auc"] is None and notes == {"auc": "undefined: class 'melanoma' absent from the targets"}
    # melanoma never predicted either: left out of the macro average, as torchmetrics' MulticlassF1Score does
    probs[1] = [.2, .7, .1]
    m, _ = _metrics_no_warnings("multiclass", MC_TARGETS, probs, label_names=NAMES3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    want = multiclass_f1_score(torch.tensor(probs.argmax(1)), torch.tensor(MC_TARGETS), 3, average="macro").item()
    assert m["macro_f1"] == pytest.approx(want)


def test_classification_metrics_multilabel_label_without_positive():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[.9, .1, .2], [.3, .6, .1], [.8, .2, .1], [.1, .1, .5]])
    m, notes = _metrics_no_warnings("multilabel", targets, probs, threshold=0.5, label_names=["a", "b", "c"])
    # predicted [a], [b], [a], [c]: a tp2 -> 1; b tp1 fn1 -> 2/3; c fp1 -> 0; every label is averaged
    # (torchmetrics MultilabelF1Score: a label in neither truth nor prediction would count as 0 too)
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["micro_f1"] == pytest.approx(6 / 8)             # tp 3, fp 1, fn 1
    assert m["accuracy"] == pytest.approx(2 / 4)             # exact match: samples 0 and 1
    assert m["auc"] is None and notes == {"auc": "undefined: class 'c' absent from the targets"}


def test_classification_metrics_binary_one_class_and_defined_auc():
    from sklearn.metrics import roc_auc_score

    from tasks.specialists.outputs import classification_metrics
    probs = np.array([[.2, .8], [.6, .4], [.3, .7]])
    m, notes = _metrics_no_warnings("binary", np.array([1, 1, 1]), probs, label_names=["normal", "pneumonia"])
    assert m["accuracy"] == pytest.approx(2 / 3) and m["auc"] is None
    assert notes["auc"] == ("undefined: class 'normal' absent from the targets; "
                            "class 'pneumonia' present in every target")
    targets = np.array([1, 0, 1])
    m = classification_metrics("binary", targets, probs)     # the old signature still works
    assert m["auc"] == pytest.approx(roc_auc_score(targets, probs[:, 1])) and m["auc"] == 1.0
    assert set(m) == {"accuracy", "macro_f1", "micro_f1", "auc"}


def test_jobs_on_parallel_threads_train_bit_identical_to_solo_runs(tmp_path):
    """In-process jobs share torch's global RNG: nothing a job does may draw from it outside its seeded weight
    initialisation, or a job's weights depend on what ran beside it (issue: two tiny runs, different weights)."""
    from concurrent.futures import ThreadPoolExecutor

    data = _data(seed=3, sizes=(40, 16, 8))
    recipe = _recipe(max_epochs=3, patience=10)
    names = ["resnet18", "vgg16", "alexnet", "densenet121", "vit_b16", "efficientnet_b4"]
    solo = {n: train_specialist(data, tiny_arch(n), recipe, tmp_path / "solo" / n) for n in names}
    with ThreadPoolExecutor(2) as pool:
        side = dict(zip(names, pool.map(lambda n: train_specialist(data, tiny_arch(n), recipe, tmp_path / "par" / n),
                                        names)))
    for n in names:
        a = safetensors.torch.load_file(str(tmp_path / "solo" / n / "best.safetensors"))
        b = safetensors.torch.load_file(str(tmp_path / "par" / n / "best.safetensors"))
        assert a.keys() == b.keys()
        differing = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differing, f"{n}: {len(differing)} tensors differ, e.g. {differing[0]}"
        timing = ("train_s", "decode_s", "train_images_per_s")
        assert {k: v for k, v in side[n].metrics.items() if k not in timing} == \
            {k: v for k, v in solo[n].metrics.items() if k not in timing}


def test_job_killed_while_still_improving_resumes_instead_of_starting_over(tmp_path, kill_at_validation):
    """The resume state (last.pt) is written on a timer, the best checkpoint at every improving epoch: a kill after an
    improving epoch finds a best checkpoint newer than the state. The job must resume from the state (replaying the
    epochs in between) and end bit-identical to an uninterrupted run, not train from epoch 0."""
    import shutil

    data = _data(seed=1, sizes=(48, 24, 12))
    arch, recipe = tiny_arch("resnet18"), _recipe(max_epochs=5, patience=10, resume_every_s=0.0, lr=3e-4)
    ref = train_specialist(data, arch, recipe, tmp_path / "ref")
    best, new_bests = math.inf, []
    for h in ref.history:
        if h["val_loss"] < best:
            best, new_bests = h["val_loss"], new_bests + [h["epoch"]]
    assert {2, 3} <= set(new_bests), ref.history  # the scenario needs new bests at epochs 2 and 3

    job = tmp_path / "job"
    kill_at_validation(4, data, arch, recipe, job)      # dies validating epoch 3: last.pt holds epoch 2
    shutil.copyfile(job / "last.pt", tmp_path / "state-epoch2.pt")
    kill_at_validation(2, data, arch, recipe, job)      # resumes, finishes epoch 3 (a new best), dies in epoch 4
    assert read_card(job / "best.safetensors")["epoch"] == 3
    shutil.copyfile(tmp_path / "state-epoch2.pt", job / "last.pt")   # the timer had not fired since epoch 2

    res = train_specialist(data, arch, recipe, job)
    assert res.status == "resumed" and len(res.history) == 5 and res.best_epoch == ref.best_epoch
    assert [h["val_loss"] for h in res.history] == [h["val_loss"] for h in ref.history]
    a = safetensors.torch.load_file(str(job / "best.safetensors"))
    b = safetensors.torch.load_file(str(tmp_path / "ref" / "best.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_moved_outputs_folder_keeps_its_finished_jobs(tmp_path):
    """A finished job read from another place (the outputs folder moved or copied) is served from there: its result
    names the new folder and files that exist, never the old paths."""
    data = _data(seed=5, sizes=(24, 12, 6))
    arch, recipe = tiny_arch("resnet18"), _recipe(max_epochs=2, patience=10)
    first = train_specialist(data, arch, recipe, tmp_path / "a" / "job")
    (tmp_path / "a").rename(tmp_path / "b")
    again = train_specialist(data, arch, recipe, tmp_path / "b" / "job")
    assert again.status == "skipped" and again.fingerprint == first.fingerprint
    assert again.out_dir == str(tmp_path / "b" / "job")
    assert set(again.artifacts) == set(first.artifacts)
    assert all(Path(p).is_file() and Path(p).parent == tmp_path / "b" / "job" for p in again.artifacts.values())
