"""Bad raw input: each case gets an error naming the file and row/field, and tables written earlier stay intact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_contracts.cards import get_card
from data_contracts.errors import ContractError
from data_contracts.io import read_manifest, read_rejects, read_samples
from tasks.ingest.dataset import ingest_dataset
from tests.helpers import tables_mtimes


def _ingest(name, data, out, **kw):
    return ingest_dataset(get_card(name), data, out, **kw)


def _ham_csv(data: Path) -> Path:
    return data / "ham10000" / "HAM10000_metadata.csv"


def _edit_csv(path: Path, fn) -> None:
    df = pl.read_csv(path, infer_schema=False)
    fn(df).write_csv(path)


def _setup(tiny_copy, tmp_path, *names):
    out = tmp_path / "tables"
    for n in names:
        _ingest(n, tiny_copy, out)
    return out, tables_mtimes(out), {n: read_manifest(out, n) for n in names}


def _assert_intact(out, before_mtimes, before_manifests):
    assert tables_mtimes(out) == before_mtimes
    for n, m in before_manifests.items():
        assert read_manifest(out, n) == m
        for split in m["splits"]:
            read_samples(out, n, split, verify_digest=True)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_corrupted_image(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000", "dermnet")
    img = sorted((tiny_copy / "ham10000" / "images").glob("*.jpg"))[3]
    img.write_bytes(img.read_bytes()[:40])
    with pytest.raises(ContractError) as e:
        _ingest("ham10000", tiny_copy, out)
    msg = str(e.value)
    assert "ham10000/HAM10000_metadata.csv row" in msg and "field 'image_id'" in msg and img.name in msg
    _assert_intact(out, mt, mf)


def test_label_outside_label_set(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("zebra")).otherwise(pl.col("dx")).alias("dx")))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv row 5 field 'dx': expected a label in the label "
                                            r"set of ham10000.*'zebra'"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_missing_column(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.drop("dx"))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv field 'dx': expected column 'dx'"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def _rewrite_npz(path: Path, fn) -> None:
    arrays = dict(np.load(path))
    arrays = fn(arrays)
    np.savez(path, **arrays)


def test_npz_wrong_keys(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "pneumoniamnist")
    npz = tiny_copy / "medmnist" / "pneumoniamnist.npz"
    _rewrite_npz(npz, lambda a: {k: v for k, v in a.items() if k != "val_labels"})
    with pytest.raises(ContractError, match=r"medmnist/pneumoniamnist.npz field 'val_labels': expected key"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_npz_wrong_shapes(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "pneumoniamnist")
    npz = tiny_copy / "medmnist" / "pneumoniamnist.npz"
    _rewrite_npz(npz, lambda a: {**a, "test_labels": np.zeros((len(a["test_labels"]), 3), dtype=np.uint8)})
    with pytest.raises(ContractError, match=r"pneumoniamnist.npz field 'test_labels': expected labels of shape"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _rewrite_npz(npz, lambda a: {**a, "train_images": a["train_images"].astype(np.float32)})
    with pytest.raises(ContractError, match=r"field 'train_images': expected uint8 images"):
        _ingest("pneumoniamnist", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_csv_path_escaping_data_root(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("../../../../etc/passwd")).otherwise(
            pl.col("image_id")).alias("image_id")))
    with pytest.raises(ContractError, match=r"HAM10000_metadata.csv row 2 field 'image_id': expected a path inside "
                                            r"the data root.*escapes"):
        _ingest("ham10000", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_duplicate_ids(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "ham10000")
    _edit_csv(_ham_csv(tiny_copy), lambda df: pl.concat([df, df[1:2]]))
    with pytest.raises(ContractError, match=r"sample_id|duplicate sample id") as e:
        _ingest("ham10000", tiny_copy, out)
    assert "HAM10000_metadata.csv" in str(e.value)
    _assert_intact(out, mt, mf)


def test_empty_vqa_answer(tiny_copy, tmp_path):
    out, mt, mf = _setup(tiny_copy, tmp_path, "slake")
    path = tiny_copy / "slake" / "train.json"
    rows = json.loads(path.read_text())
    idx = next(i for i, r in enumerate(rows) if r["q_lang"] == "en")
    rows[idx]["answer"] = "  "
    path.write_text(json.dumps(rows))
    with pytest.raises(ContractError, match=rf"slake/train.json row {idx} field 'answer': expected a non-empty answer"):
        _ingest("slake", tiny_copy, out)
    _assert_intact(out, mt, mf)


def test_quarantine_writes_good_rows_and_rejects(tiny_copy, tmp_path):
    out = tmp_path / "tables"
    clean = _ingest("ham10000", tiny_copy, out)
    n_clean = sum(e["rows"] for e in clean.splits.values())
    img = sorted((tiny_copy / "ham10000" / "images").glob("*.jpg"))[0]
    img.write_bytes(b"not an image")
    _edit_csv(_ham_csv(tiny_copy), lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) == 7).then(pl.lit("zebra")).otherwise(pl.col("dx")).alias("dx")))
    with pytest.raises(ContractError):
        _ingest("ham10000", tiny_copy, out, policy="fail")
    r = _ingest("ham10000", tiny_copy, out, policy="quarantine")
    assert r.status == "written" and r.rejects == 2
    assert sum(e["rows"] for e in r.splits.values()) == n_clean - 2
    rej = read_rejects(out, "ham10000")
    assert rej.height == 2
    assert any("zebra" in x for x in rej["reason"]) and any(img.name in x for x in rej["reason"])
    assert set(rej["field"]) == {"dx", "image_id"}


# --- quarantine keeps every good row: each bad record is one reject with its reason --------------------------------

def _counts(result) -> dict[str, int]:
    return {s: e["rows"] for s, e in result.splits.items()}


def _clean(name, data, tmp_path) -> dict[str, int]:
    """Rows per split of the untouched copy (ingested before the test damages it)."""
    return _counts(_ingest(name, data, tmp_path / "clean"))


def _reasons(out, name) -> dict[str, str]:
    rej = read_rejects(out, name)
    return dict(zip(rej["row"], rej["reason"]))


def test_medmnist_fractional_and_nan_labels_are_rejected_not_rounded(tiny_copy, tmp_path):
    clean = _clean("pneumoniamnist", tiny_copy, tmp_path)
    npz = tiny_copy / "medmnist" / "pneumoniamnist.npz"
    before = np.load(npz)["train_labels"].copy()

    def damage(a):
        labels = a["train_labels"].astype(np.float64)   # 0.0 / 1.0 elsewhere: exact integers, still valid
        labels[3], labels[5], labels[8] = 0.7, 1.9, np.nan
        return {**a, "train_labels": labels}
    _rewrite_npz(npz, damage)
    out = tmp_path / "tables"
    with pytest.raises(ContractError, match=r"^medmnist/pneumoniamnist.npz row 3 field 'train_labels': expected a "
                                            r"label index in \['0', '1'\], got 0.7$"):
        _ingest("pneumoniamnist", tiny_copy, out)
    r = _ingest("pneumoniamnist", tiny_copy, out, policy="quarantine")
    assert _counts(r) == {**clean, "train": clean["train"] - 3} and r.rejects == 3
    f = "medmnist/pneumoniamnist.npz"
    assert _reasons(out, "pneumoniamnist") == {
        "3": f"{f} row 3 field 'train_labels': expected a label index in ['0', '1'], got 0.7",
        "5": f"{f} row 5 field 'train_labels': expected a label index in ['0', '1'], got 1.9",
        "8": f"{f} row 8 field 'train_labels': expected a label index in ['0', '1'], got nan"}
    train = read_samples(out, "pneumoniamnist", "train")
    assert not {"pneumoniamnist:train:3", "pneumoniamnist:train:5", "pneumoniamnist:train:8"} & set(train["sample_id"])
    kept = dict(zip(train["sample_id"], train["labels"].to_list()))
    assert kept["pneumoniamnist:train:4"] == [["normal", "pneumonia"][int(before[4, 0])]]


def test_medmnist_multilabel_flags_must_be_exactly_0_or_1(tiny_copy, tmp_path):
    clean = _clean("chestmnist", tiny_copy, tmp_path)
    npz = tiny_copy / "medmnist" / "chestmnist.npz"

    def damage(a):
        labels = a["test_labels"].astype(np.float32)
        labels[2, 4], labels[6, 0] = 0.7, 2.0
        return {**a, "test_labels": labels}
    _rewrite_npz(npz, damage)
    out = tmp_path / "tables"
    r = _ingest("chestmnist", tiny_copy, out, policy="quarantine")
    assert _counts(r) == {**clean, "test": clean["test"] - 2}
    f = "medmnist/chestmnist.npz"
    assert _reasons(out, "chestmnist") == {
        "2": f"{f} row 2 field 'test_labels': expected 0/1 flags, got 0.7 in column 4",
        "6": f"{f} row 6 field 'test_labels': expected 0/1 flags, got 2.0 in column 0"}


def test_one_hot_cells_must_be_flags(tmp_path):
    import csv as csv_module

    from PIL import Image

    card = get_card("chexpert")
    d = tmp_path / card.raw.dir / "CheXpert-v1.0-small"
    cols = list(card.raw.onehot_columns)
    values = {"train": [{"Edema": "1.0"}, {"Edema": "0.7", "Pneumonia": "1"}, {"Edema": "-1.0", "Cardiomegaly": "1"},
                        {"Edema": "yes!", "Pneumonia": "1"}],
              "valid": [{"Pneumonia": "1.0", "Edema": "0.0"}]}
    for f, recs in values.items():
        rows = []
        for k, v in enumerate(recs):
            path = f"CheXpert-v1.0-small/{f}/patient{k}/study1/view1_frontal.jpg"
            (tmp_path / card.raw.dir / path).parent.mkdir(parents=True)
            Image.new("L", (8, 8), color=40 * k).save(tmp_path / card.raw.dir / path, "JPEG")
            rows.append({"Path": path, **{c: v.get(c, "") for c in cols}})
        with (d / f"{f}.csv").open("w", newline="") as fh:
            w = csv_module.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    out = tmp_path / "tables"
    r = _ingest("chexpert", tmp_path, out, policy="quarantine")
    assert sum(_counts(r).values()) == 3 and r.rejects == 2
    f = "chexpert/CheXpert-v1.0-small/train.csv"
    assert _reasons(out, "chexpert") == {
        "1": f"{f} row 1 field 'Edema': expected a 0/1 flag (1, 0, -1 or blank), got '0.7'",
        "3": f"{f} row 3 field 'Edema': expected a 0/1 flag (1, 0, -1 or blank), got 'yes!'"}


def test_slake_record_that_is_not_an_object(tiny_copy, tmp_path):
    clean = _clean("slake", tiny_copy, tmp_path)
    path = tiny_copy / "slake" / "train.json"
    rows = json.loads(path.read_text())
    rows.insert(2, "a string, not a record")
    rows.insert(5, [1, 2])
    path.write_text(json.dumps(rows))
    out = tmp_path / "tables"
    with pytest.raises(ContractError, match=r"^slake/train.json row 2: expected a JSON object, got str$"):
        _ingest("slake", tiny_copy, out)
    r = _ingest("slake", tiny_copy, out, policy="quarantine")
    assert _counts(r) == clean and r.rejects == 2
    assert _reasons(out, "slake") == {"2": "slake/train.json row 2: expected a JSON object, got str",
                                      "5": "slake/train.json row 5: expected a JSON object, got list"}


def test_jsonl_line_that_does_not_parse(tiny_copy, tmp_path):
    clean = _clean("openi_cases", tiny_copy, tmp_path)
    path = tiny_copy / "openi_cases" / "cases.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(3, '{"uid": "PMC1_fig1", "title": broken')
    lines.insert(6, '["not", "an", "object"]')
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tables"
    with pytest.raises(ContractError, match=r"^openi_cases/cases.jsonl row 3: expected a JSON object on one line "
                                            r"\(JSONDecodeError: Expecting value: line 1 column 31 \(char 30\)\)$"):
        _ingest("openi_cases", tiny_copy, out)
    r = _ingest("openi_cases", tiny_copy, out, policy="quarantine")
    assert _counts(r) == clean and r.rejects == 2
    reasons = _reasons(out, "openi_cases")
    assert set(reasons) == {"3", "6"}
    assert reasons["6"] == "openi_cases/cases.jsonl row 6: expected a JSON object, got list"


def test_symlinked_class_folders_are_refused_by_name(tiny_copy, tmp_path):
    clean = _clean("dermnet", tiny_copy, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(sorted((tiny_copy / "dermnet").rglob("*.jpg"))[0].read_bytes())
    train = tiny_copy / "dermnet" / "train"
    (train / "Vasculitis Photos").symlink_to(outside, target_is_directory=True)            # leads outside the root
    (train / "Urticaria Hives").symlink_to(tiny_copy / "dermnet" / "test" / "Eczema Photos")  # relabels other images
    out = tmp_path / "tables"
    with pytest.raises(ContractError, match=r"^dermnet/train/Urticaria Hives field 'class folder': expected a real "
                                            r"folder, not a symbolic link"):
        _ingest("dermnet", tiny_copy, out)
    r = _ingest("dermnet", tiny_copy, out, policy="quarantine")
    assert _counts(r) == clean and r.rejects == 2
    rej = read_rejects(out, "dermnet")
    assert sorted(rej["source_path"]) == ["dermnet/train/Urticaria Hives", "dermnet/train/Vasculitis Photos"]
    assert all("a link may lead outside the data root" in x for x in rej["reason"])
    assert not any("secret" in p for s in r.splits for p in read_samples(out, "dermnet", s)["source_path"])


def test_duplicate_sample_id_keeps_the_first_copy(tiny_copy, tmp_path):
    clean = _clean("ham10000", tiny_copy, tmp_path)
    csv = _ham_csv(tiny_copy)
    df = pl.read_csv(csv, infer_schema=False)
    other = {"train": "test", "val": "train", "test": "train"}
    n = df.height
    _edit_csv(csv, lambda d: pl.concat([d, d[1:2].with_columns(split=pl.lit(other[d["split"][1]])), d[2:3]]))
    out = tmp_path / "tables"
    f = "ham10000/HAM10000_metadata.csv"
    first = f"ham10000:{df['image_id'][1]}"
    message = (f"{f} row {n} field 'image_id': expected a sample id seen only once, got duplicate sample id {first!r} "
               f"(the first copy, {f}#row=1, is kept)")
    with pytest.raises(ContractError) as e:
        _ingest("ham10000", tiny_copy, out)
    assert str(e.value) == message
    r = _ingest("ham10000", tiny_copy, out, policy="quarantine")
    assert _counts(r) == clean and r.rejects == 2          # one id across splits, one within a split
    assert _reasons(out, "ham10000") == {
        str(n): message, str(n + 1): message.replace(f"row {n} ", f"row {n + 1} ").replace(
            first, f"ham10000:{df['image_id'][2]}").replace("#row=1", "#row=2")}
    kept = read_samples(out, "ham10000", df["split"][1])
    assert kept.filter(pl.col("sample_id") == first)["source_path"].to_list() == [f"{f}#row=1"]


def test_latin1_byte_in_csv_and_json_rejects_that_record(tiny_copy, tmp_path):
    clean = _clean("ham10000", tiny_copy, tmp_path)
    csv = _ham_csv(tiny_copy)
    split4 = pl.read_csv(csv, infer_schema=False)["split"][4]
    _edit_csv(csv, lambda d: d.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("@@BAD@@"))
                                            .otherwise(pl.col("localization")).alias("localization")))
    data = csv.read_bytes().replace(b"@@BAD@@", b"caf\xe9")   # Latin-1 'e acute': not UTF-8
    csv.write_bytes(data)
    out = tmp_path / "tables"
    f = "ham10000/HAM10000_metadata.csv"
    at = data.index(b"\xe9")
    message = f"{f} row 4 field 'localization': expected UTF-8 text, got byte 0xe9 at byte offset {at}"
    with pytest.raises(ContractError) as e:
        _ingest("ham10000", tiny_copy, out)
    assert str(e.value) == message
    r = _ingest("ham10000", tiny_copy, out, policy="quarantine")
    assert _counts(r) == {**clean, split4: clean[split4] - 1}
    assert _reasons(out, "ham10000") == {"4": message}

    clean = _clean("slake", tiny_copy, tmp_path)
    path = tiny_copy / "slake" / "train.json"
    rows = json.loads(path.read_text())
    idx = next(i for i, x in enumerate(rows) if x["q_lang"] == "en")
    rows[idx]["question"] = "@@BAD@@"
    data = json.dumps(rows).encode().replace(b"@@BAD@@", b"caf\xe9")
    path.write_bytes(data)
    at = data.index(b"\xe9")
    r = _ingest("slake", tiny_copy, out, policy="quarantine")
    assert _counts(r) == {**clean, "train": clean["train"] - 1}
    assert _reasons(out, "slake") == {str(idx): f"slake/train.json row {idx} field 'question': expected UTF-8 text, "
                                                f"got byte 0xe9 at byte offset {at}"}


def test_latin1_byte_in_a_text_list_rejects_that_line(tmp_path):
    from PIL import Image

    card = get_card("fmc_colon")
    d = tmp_path / card.raw.dir
    (d / "images").mkdir(parents=True)
    for k in range(6):
        Image.new("L", (8, 8), color=20 * k).save(d / "images" / f"p{k}.png")
    (d / "trainval.txt").write_text("".join(f"p{k}.png {k % 2}\n" for k in range(4)))
    data = b"p4.png 0\np\xe95.png 1\n"
    (d / "test_WithLabel.txt").write_bytes(data)
    at = data.index(b"\xe9")
    r = _ingest("fmc_colon", tmp_path, tmp_path / "tables", policy="quarantine")
    assert sum(_counts(r).values()) == 5 and r.rejects == 1
    assert _reasons(tmp_path / "tables", "fmc_colon") == {
        "1": f"medfmc/colon/test_WithLabel.txt row 1: expected UTF-8 text, got byte 0xe9 at byte offset {at}"}


def _huge_png(path: Path, side: int = 12000) -> None:
    from PIL import Image

    Image.new("L", (side, side)).save(path, "PNG", compress_level=1)


def test_oversize_image_is_a_row_reject(tiny_copy, tmp_path):
    clean = _clean("dermnet", tiny_copy, tmp_path)
    huge = tiny_copy / "dermnet" / "train" / "Eczema Photos" / "huge.png"
    _huge_png(huge)
    out = tmp_path / "tables"
    message = ("dermnet/train/Eczema Photos/huge.png field 'image': expected an image of at most 67,108,864 pixels "
               "(data.max_image_pixels), got 12000x12000 = 144,000,000")
    with pytest.raises(ContractError) as e:
        _ingest("dermnet", tiny_copy, out)
    assert str(e.value) == message
    r = _ingest("dermnet", tiny_copy, out, policy="quarantine")
    assert _counts(r) == clean and r.rejects == 1
    assert list(read_rejects(out, "dermnet")["reason"]) == [message]


def test_image_size_limit_is_the_profiles(tiny_copy, tmp_path):
    from infra.profiles import load_profile
    from tasks.ingest.dataset import ingest_key
    from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS, DataSettings

    assert DataSettings().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 8192 * 8192   # the size the README gives
    assert load_profile("tiny", overrides=["data.max_image_pixels=4096"]).data.max_image_pixels == 4096
    card = get_card("ham10000")
    assert ingest_key(card, "raw", "fail", 4096) != ingest_key(card, "raw", "fail", 8192)
    out = tmp_path / "tables"
    first = _ingest("ham10000", tiny_copy, out)
    w = read_samples(out, "ham10000", "train")["image_width"][0]
    h = read_samples(out, "ham10000", "train")["image_height"][0]
    with pytest.raises(ContractError, match=rf"field 'image_id': expected an image of at most {w * h - 1:,} pixels "
                                            rf"\(data.max_image_pixels\), got {w}x{h} = {w * h:,}$"):
        _ingest("ham10000", tiny_copy, out, max_image_pixels=w * h - 1)
    assert read_manifest(out, "ham10000")["meta"]["cache_key"] == first.cache_key   # the failed run changed nothing
    npz_limit = 28 * 28 - 1
    with pytest.raises(ContractError, match=rf"^medmnist/pneumoniamnist.npz field 'train_images': expected images of "
                                            rf"at most {npz_limit} pixels \(data.max_image_pixels\), got 28x28$"):
        _ingest("pneumoniamnist", tiny_copy, out, max_image_pixels=npz_limit)
