"""Raw layouts beyond the tiny benchmark: MedFM lists, HF parquet, OmniMedVQA, split lists, grouped rows, DICOM, ...

    OMP_NUM_THREADS=1 pytest -q tests/test_loaders_formats.py

Each test writes a few rows in the layout a registry card describes (under tmp_path), loads them with the real card
through tasks.ingest.loaders.iter_dataset and checks rows, labels, splits, questions / answers / options and which image
each row got (every fixture image has its own grey level). DICOM tests need pydicom and are skipped without it.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_contracts.cards import RawFormat, get_card, registry
from data_contracts.errors import DataError
from tasks.ingest.dataset import FORMAT_MODULES
from tasks.ingest.loaders import LOADERS, Reject, iter_dataset
from tasks.ingest.loaders.common import carve_val

HAS_PYDICOM = importlib.util.find_spec("pydicom") is not None
needs_pydicom = pytest.mark.skipif(not HAS_PYDICOM, reason="pydicom is not installed (needed to write and read DICOM)")


# --- helpers ------------------------------------------------------------------------------------------------------

def _img(path: Path, grey: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=grey).save(path, fmt)
    return path


def _img_bytes(grey: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), color=grey).save(buf, fmt)
    return buf.getvalue()


def _grey(row: dict) -> float:
    return float(np.asarray(Image.open(io.BytesIO(row["image"])).convert("L")).mean())


def _csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(card, root: Path) -> tuple[dict[str, dict], list[Reject]]:
    """Rows by sample id (checked unique) and rejects."""
    rows, rejects = {}, []
    for item in iter_dataset(card, root):
        if isinstance(item, Reject):
            rejects.append(item)
        else:
            assert item["sample_id"] not in rows, item["sample_id"]
            rows[item["sample_id"]] = item
    return rows, rejects


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope=None, intercept=None,
           center=None, width=None) -> Path:
    """A minimal single-frame 12-bit grey DICOM file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _flat_dicom(path: Path, level: int) -> Path:
    """A DICOM whose left half is 0 and right half `level` (min-max makes the right half 255)."""
    px = np.zeros((8, 8), dtype=np.uint16)
    px[:, 4:] = level
    return _dicom(path, px)


# --- registry coverage --------------------------------------------------------------------------------------------

def test_every_raw_format_and_card_has_a_loader():
    formats = set(typing.get_args(RawFormat))
    assert formats <= set(LOADERS)
    assert formats <= set(FORMAT_MODULES)
    for name, card in registry().items():
        assert card.raw.format in LOADERS, name
    assert {"medfmc_txt", "hf_parquet", "omnimedvqa_json"} <= {c.raw.format for c in registry().values()}


# --- medfmc_txt ---------------------------------------------------------------------------------------------------

def test_medfmc_colon_single_label_names_with_spaces(tmp_path):
    card = get_card("fmc_colon")
    d = tmp_path / card.raw.dir
    train = [f"patch {k} a.png {k % 2}" for k in range(12)]
    test = [f"test {k} b.png {k % 2}" for k in range(4)]
    for k in range(12):
        _img(d / "images" / f"patch {k} a.png", 10 + 10 * k)
    for k in range(4):
        _img(d / "images" / f"test {k} b.png", 200 + 10 * k)
    _text(d / "trainval.txt", train)
    _text(d / "test_WithLabel.txt", ["", *test])
    rows, rejects = _load(card, tmp_path)
    assert not rejects and len(rows) == 16
    for k in range(12):
        r = rows[f"fmc_colon:train:patch {k} a.png"]
        assert r["labels"] == [["Negative", "Positive"][k % 2]] and r["label_set"] == ["Negative", "Positive"]
        assert r["split"] == carve_val(card.raw.split, "train", f"train:patch {k} a.png")
        assert abs(_grey(r) - (10 + 10 * k)) < 1
        assert r["source_path"] == f"medfmc/colon/trainval.txt#row={k}"
    tests = [r for r in rows.values() if r["split"] == "test"]
    assert len(tests) == 4 and {r["source_path"] for r in tests} == {f"medfmc/colon/test_WithLabel.txt#row={k}"
                                                                      for k in range(1, 5)}


def test_medfmc_chest_comma_flags_and_no_finding(tmp_path):
    card = get_card("fmc_chest")
    d = tmp_path / card.raw.dir
    flags = [[0] * 19 for _ in range(3)]
    flags[1][0] = flags[1][18] = 1
    flags[2][10] = 1
    lines = [f"c{k}.png " + ",".join(map(str, f)) for k, f in enumerate(flags)]
    for k in range(3):
        _img(d / "images" / f"c{k}.png", 50 * k)
    _text(d / "trainval.txt", lines)
    _text(d / "test_WithLabel.txt", ["c0.png " + ",".join(["0"] * 18)])   # one flag short
    rows, rejects = _load(card, tmp_path)
    by = {sid.split(":")[-1]: r["labels"] for sid, r in rows.items()}
    assert by == {"c0.png": ["No finding"], "c1.png": ["pleural_effusion", "consolidation"], "c2.png": ["TB"]}
    assert len(rejects) == 1
    assert rejects[0].source_path == "medfmc/chest/test_WithLabel.txt" and rejects[0].row == "0"
    assert "test_WithLabel.txt row 0 field 'labels': expected an image file name, whitespace, then 19 ','-separated" \
           in rejects[0].reason and "got 18 flag(s)" in rejects[0].reason


def test_medfmc_endo_space_flags_rejects_several_lesions(tmp_path):
    card = get_card("fmc_endo")
    d = tmp_path / card.raw.dir
    lines = ["endo 0.jpg 0 0 1 0", "endo 1.jpg 0 0 0 0", "endo 2.jpg 1 1 0 0", "endo 3.jpg 0 0 0 2"]
    for k in range(4):
        _img(d / "images" / f"endo {k}.jpg", 40 * k, "JPEG")
    _text(d / "trainval.txt", lines)
    _text(d / "test_WithLabel.txt", ["endo 0.jpg 0 0 0 1"])
    rows, rejects = _load(card, tmp_path)
    got = {(r["split"] == "test", sid.split(":", 2)[-1]): r["labels"] for sid, r in rows.items()}
    assert got == {(False, "endo 0.jpg"): ["polyp"], (False, "endo 1.jpg"): ["No finding"],
                   (True, "endo 0.jpg"): ["tumor"]}
    assert all(r["image_format"] == "JPEG" for r in rows.values())
    reasons = {rj.row: rj.reason for rj in rejects}
    assert set(reasons) == {"2", "3"}
    assert reasons["2"].startswith("medfmc/endo/trainval.txt row 2 field 'labels': expected exactly one label for a "
                                   "multiclass set, got ['ulcer', 'erosion']")
    assert "field 'labels'" in reasons["3"] and "got flag '2'" in reasons["3"]


# --- hf_parquet ---------------------------------------------------------------------------------------------------

_PARQUET_SCHEMA = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             ("question", pa.string()), ("answer", pa.string())])


def _shard(path: Path, rows: list[tuple[bytes, str, str]], schema=_PARQUET_SCHEMA) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"image": {"bytes": b, "path": f"img{i}.jpg"}, "question": q, "answer": a}
            for i, (b, q, a) in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(recs, schema=schema), path)


def test_hf_parquet_path_vqa_shards_globs_and_struct_images(tmp_path):
    card = get_card("path_vqa")
    d = tmp_path / card.raw.dir / "data"
    _shard(d / "train-00000-of-00002.parquet", [(_img_bytes(10, "JPEG"), "Is this a tumor?", "yes"),
                                                (_img_bytes(20), "What is shown?", "fibrosis")])
    _shard(d / "train-00001-of-00002.parquet", [(_img_bytes(30), "Is there necrosis?", "No")])
    _shard(d / "validation-00000-of-00001.parquet", [(_img_bytes(40), "Where is the lesion?", "liver")])
    _shard(d / "test-00000-of-00001.parquet", [(_img_bytes(50), "Is it benign?", "no"),
                                               (b"not an image", "What organ?", "kidney")])
    rows, rejects = _load(card, tmp_path)
    assert sorted((r["split"], r["question"], r["answer"], r["answer_type"], round(_grey(r))) for r in rows.values()) \
        == [("test", "Is it benign?", "no", "closed", 50),
            ("train", "Is there necrosis?", "No", "closed", 30),
            ("train", "Is this a tumor?", "yes", "closed", 10),
            ("train", "What is shown?", "fibrosis", "open", 20),
            ("val", "Where is the lesion?", "liver", "open", 40)]
    assert "path_vqa:train:train-00001-of-00002:0" in rows and "path_vqa:val:validation-00000-of-00001:0" in rows
    assert rows["path_vqa:train:train-00000-of-00002:0"]["image_format"] == "JPEG"
    assert all(r["task_kind"] == "vqa" and r["labels"] == [] for r in rows.values())
    assert len(rejects) == 1 and rejects[0].row == "1" and rejects[0].field == "image"
    assert rejects[0].reason.startswith("path_vqa/data/test-00000-of-00001.parquet row 1 field 'image': expected "
                                        "image bytes that decode")


def test_hf_parquet_missing_column_and_unmatched_glob(tmp_path):
    card = get_card("path_vqa")
    d = tmp_path / card.raw.dir / "data"
    schema = pa.schema([f for f in _PARQUET_SCHEMA if f.name != "answer"])
    d.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"image": {"bytes": _img_bytes(1), "path": None}, "question": "q?"}],
                                        schema=schema), d / "train-00000-of-00001.parquet")
    for name in ("validation", "test"):
        _shard(d / f"{name}-00000-of-00001.parquet", [(_img_bytes(2), "q?", "a")])
    with pytest.raises(DataError, match=r"path_vqa/data/train-00000-of-00001.parquet field 'answer': expected column "
                                        r"'answer'"):
        _load(card, tmp_path)
    (d / "train-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match=r"path_vqa/data/train-\*\.parquet field 'split.files': expected at least one "
                                        r"file matching"):
        _load(card, tmp_path)


# --- omnimedvqa_json ----------------------------------------------------------------------------------------------

def _omni(qid, qtype, answer, options, image):
    rec = {"question_id": qid, "question_type": qtype, "question": f"What is the diagnosis in {qid}?",
           "gt_answer": answer, "image_path": image, "modality_type": "Fundus Photography", "dataset": "X"}
    rec.update({f"option_{letter}": o for letter, o in zip("ABCD", options)})
    return rec


def test_omnimedvqa_multiple_choice_options_and_filter(tmp_path):
    card = get_card("omnimedvqa")
    d = tmp_path / card.raw.dir
    for k in range(4):
        _img(d / "Images" / "ACRIMA" / f"im{k}.png", 30 + 40 * k)
    open_qs = [_omni("ACRIMA_0000", "Disease Diagnosis", "glaucoma", ["normal", "glaucoma", "cataract", "AMD"],
                     "Images/ACRIMA/im0.png"),
               _omni("ACRIMA_0001", "Modality Recognition", "fundus", ["CT", "fundus"], "Images/ACRIMA/im1.png"),
               _omni("ACRIMA_0002", "Disease Diagnosis", "normal", ["glaucoma", "normal"], "Images/ACRIMA/im2.png")]
    restricted = [_omni("R_0000", "Disease Diagnosis", "melanoma", ["nevus", "keratosis"], "Images/ACRIMA/im3.png"),
                  _omni("R_0001", "Disease Diagnosis", "nevus", ["nevus", "", "melanoma"], "Images/ACRIMA/im3.png")]
    (d / "QA_information" / "Open-access").mkdir(parents=True)
    (d / "QA_information" / "Restricted-access").mkdir(parents=True)
    (d / "QA_information" / "Open-access" / "ACRIMA.json").write_text(json.dumps(open_qs))
    (d / "QA_information" / "Restricted-access" / "R.json").write_text(json.dumps(restricted))
    rows, rejects = _load(card, tmp_path)
    assert set(rows) == {"omnimedvqa:test:ACRIMA_0000", "omnimedvqa:test:ACRIMA_0002"}
    r0, r2 = rows["omnimedvqa:test:ACRIMA_0000"], rows["omnimedvqa:test:ACRIMA_0002"]
    assert r0["label_set"] == ["normal", "glaucoma", "cataract", "AMD"] and r0["answer"] == "glaucoma"
    assert r2["label_set"] == ["glaucoma", "normal"] and r2["answer"] == "normal"
    assert r0["question"] == "What is the diagnosis in ACRIMA_0000?" and round(_grey(r2)) == 110
    assert {(r["split"], r["task_type"], r["answer_type"]) for r in rows.values()} == \
        {("test", "multiple-choice", "multiple-choice")}
    assert r0["modality"] == "Fundus Photography"    # each question's own modality_type (Fig. 3(b) groups by it)
    reasons = {(rj.source_path, rj.row, rj.field): rj.reason for rj in rejects}
    assert set(reasons) == {("omnimedvqa/QA_information/Restricted-access/R.json", "0", "gt_answer"),
                            ("omnimedvqa/QA_information/Restricted-access/R.json", "1", "option_B")}
    assert "R.json row 0 field 'gt_answer': expected an answer equal to one of the options ['nevus', 'keratosis']" \
           in reasons[("omnimedvqa/QA_information/Restricted-access/R.json", "0", "gt_answer")]


# --- csv_images: split lists (ids, row indexes), per-split tables, split folders ----------------------------------

def test_split_list_of_ids_chestxray14(tmp_path):
    card = get_card("chestxray14")
    d = tmp_path / card.raw.dir
    table = [{"Image Index": f"0000{k}_000.png", "Finding Labels": lab, "Patient ID": str(k)}
             for k, lab in enumerate(["No Finding", "Effusion|Mass", "Hernia", "Atelectasis"])]
    _csv(d / "Data_Entry_2017.csv", table)
    for k in range(4):
        _img(d / "images" / f"0000{k}_000.png", 60 * k)
    _text(d / "train_val_list.txt", ["00000_000.png", "00001_000.png"])
    _text(d / "test_list.txt", ["00002_000.png", "", "09999_000.png"])   # 00003 is in no list: not loaded
    rows, rejects = _load(card, tmp_path)
    got = {sid: (r["split"], r["labels"], round(_grey(r))) for sid, r in rows.items()}
    assert got == {"chestxray14:00000_000.png": ("train", ["No Finding"], 0),
                   "chestxray14:00001_000.png": ("train", ["Effusion", "Mass"], 60),
                   "chestxray14:00002_000.png": ("test", ["Hernia"], 120)}
    assert [(rj.source_path, rj.row, rj.field) for rj in rejects] == [("chestxray14/test_list.txt", "2", "id")]
    assert "test_list.txt row 2 field 'id': expected an id present in column 'Image Index'" in rejects[0].reason


def test_split_lists_of_row_indexes_derm7pt(tmp_path):
    card = get_card("derm7pt")
    d = tmp_path / card.raw.dir / "release_v0"
    diags = ["basal cell carcinoma", "clark nevus", "melanoma (in situ)", "lentigo", "seborrheic keratosis"]
    _csv(d / "meta" / "meta.csv", [{"case_num": str(k + 1), "diagnosis": g, "clinic": f"A/c{k}.jpg",
                                    "derm": f"A/d{k}.jpg"} for k, g in enumerate(diags)])
    for k in range(5):
        _img(d / "images" / "A" / f"d{k}.jpg", 20 + 40 * k, "JPEG")
        _img(d / "images" / "A" / f"c{k}.jpg", 255, "JPEG")
    _csv(d / "meta" / "train_indexes.csv", [{"indexes": "0"}, {"indexes": "1"}, {"indexes": "4"}])
    _csv(d / "meta" / "valid_indexes.csv", [{"indexes": "7"}])
    _csv(d / "meta" / "test_indexes.csv", [{"indexes": "2"}, {"indexes": "3"}])
    rows, rejects = _load(card, tmp_path)
    got = {sid: (r["split"], r["labels"][0]) for sid, r in rows.items()}
    assert got == {"derm7pt:1": ("train", "basal cell carcinoma"), "derm7pt:2": ("train", "nevus"),
                   "derm7pt:5": ("train", "seborrheic keratosis"), "derm7pt:3": ("test", "melanoma"),
                   "derm7pt:4": ("test", "miscellaneous")}
    assert abs(_grey(rows["derm7pt:3"]) - 100) < 3       # the dermoscopic image ("derm"), not the clinical one
    assert [(rj.source_path, rj.row, rj.field) for rj in rejects] == [
        ("derm7pt/release_v0/meta/valid_indexes.csv", "0", "indexes")]
    assert "expected a 0-based row number of derm7pt/release_v0/meta/meta.csv (0..4), got '7'" in rejects[0].reason


def test_split_lists_listing_a_row_twice_keep_the_first_listing(tmp_path):
    card = get_card("derm7pt")
    d = tmp_path / card.raw.dir / "release_v0" / "meta"
    _csv(d / "meta.csv", [{"case_num": "1", "diagnosis": "nevus", "derm": "x.jpg"}])
    _img(d.parent / "images" / "x.jpg", 50, "JPEG")
    _csv(d / "train_indexes.csv", [{"indexes": "0"}])
    _csv(d / "valid_indexes.csv", [{"indexes": "0"}])
    _csv(d / "test_indexes.csv", [{"indexes": "0"}])
    rows, rejects = _load(card, tmp_path)
    assert {sid: r["split"] for sid, r in rows.items()} == {"derm7pt:1": "train"}
    m = "derm7pt/release_v0/meta"
    assert [rj.reason for rj in rejects] == [
        f"{m}/{f} row 0 field 'indexes': expected each row of {m}/meta.csv in one split only, got '0' again (its "
        "listing for 'train' is kept)" for f in ("valid_indexes.csv", "test_indexes.csv")]


def test_one_table_per_split_with_split_folders_rfmid2(tmp_path):
    card = get_card("rfmid2")
    d = tmp_path / card.raw.dir
    cols = list(card.raw.onehot_columns)
    header = ",".join("ON\xa0" if c == "ON" else c for c in ["ID", *cols]) + ","   # as in one known copy
    files = {"train": ("RFMiD_2_Training_labels.csv", "Training_set"),
             "val": ("RFMiD_2_Validation_labels.csv", "Validation_set"),
             "test": ("RFMiD_2_Testing_labels.csv", "Test_set")}
    grey = {"train": 30, "val": 130, "test": 230}
    for split, (table, folder) in files.items():
        lines = [header]
        for k in (1, 2):   # ids restart at 1 in every split
            flags = ["0"] * len(cols)
            flags[cols.index("ON" if k == 1 else "DR")] = "1"
            if k == 2:
                flags[cols.index("WNL")] = "1"
            lines.append(",".join([str(k), *flags]) + ",")
            _img(d / folder / f"{k}.jpg", grey[split] + k, "JPEG")
        _text(d / table, lines)
    rows, rejects = _load(card, tmp_path)
    assert not rejects and len(rows) == 6
    for split in files:
        r1, r2 = rows[f"rfmid2:{split}:1"], rows[f"rfmid2:{split}:2"]
        assert r1["split"] == r2["split"] == split
        assert r1["labels"] == ["ON"] and r2["labels"] == ["WNL", "DR"]
        assert abs(_grey(r1) - grey[split] - 1) < 3 and r1["source_path"] == f"rfmid2/{files[split][0]}#row=0"


def test_one_table_per_split_chexpert_only_ones_positive(tmp_path):
    card = get_card("chexpert")
    d = tmp_path / card.raw.dir
    cols = list(card.raw.onehot_columns)

    def rec(path, **pos):
        r = {"Path": path, "Sex": "F", "Age": "50", "Frontal/Lateral": "Frontal", "AP/PA": "AP"}
        r.update({c: pos.get(c.replace(" ", "_"), "") for c in cols})
        return r

    train = [rec("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", Edema="1.0", Cardiomegaly="-1.0",
                 Pneumonia="0.0"),
             rec("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", No_Finding="1.0"),
             rec("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", Edema="-1.0")]
    valid = [rec("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", Support_Devices="1.0",
                 Pleural_Effusion="1.0")]
    _csv(d / "CheXpert-v1.0-small" / "train.csv", train)
    _csv(d / "CheXpert-v1.0-small" / "valid.csv", valid)
    for k, r in enumerate(train + valid):
        _img(d / r["Path"], 40 + 50 * k, "JPEG")
    rows, rejects = _load(card, tmp_path)
    assert {sid: (r["split"], r["labels"]) for sid, r in rows.items()} == {
        "chexpert:train:0": ("train", ["Edema"]), "chexpert:train:1": ("train", ["No Finding"]),
        "chexpert:val:0": ("val", ["Pleural Effusion", "Support Devices"])}
    assert abs(_grey(rows["chexpert:val:0"]) - 190) < 3
    assert [(rj.source_path, rj.row, rj.field) for rj in rejects] == [
        ("chexpert/CheXpert-v1.0-small/train.csv", "2", "one-hot columns")]   # only an uncertain finding


# --- csv_images: list-literal labels, options, image templates ----------------------------------------------------

def test_label_list_literal_odir(tmp_path):
    card = get_card("odir")
    d = tmp_path / card.raw.dir
    _csv(d / "full_df.csv", [{"ID": "0", "filename": "0_left.jpg", "labels": "['N']", "N": "1"},
                             {"ID": "0", "filename": "0_right.jpg", "labels": "['D', 'C']", "N": "1"},
                             {"ID": "1", "filename": "1_left.jpg", "labels": "['N'", "N": "0"}])
    for k, n in enumerate(["0_left.jpg", "0_right.jpg", "1_left.jpg"]):
        _img(d / "preprocessed_images" / n, 60 * k, "JPEG")
    rows, rejects = _load(card, tmp_path)
    assert {sid: r["labels"] for sid, r in rows.items()} == {"odir:0_left.jpg": ["normal"],
                                                             "odir:0_right.jpg": ["diabetes", "cataract"]}
    assert [(rj.row, rj.field) for rj in rejects] == [("2", "labels")]
    assert rejects[0].reason.startswith("odir/full_df.csv row 2 field 'labels': expected a Python list literal")


def test_option_columns_pmc_vqa(tmp_path):
    card = get_card("pmc_vqa")
    d = tmp_path / card.raw.dir
    base = {"Question": "Which plane is shown?", "Answer": "Axial", "Choice A": " A:Axial ",
            "Choice B": " B:Coronal ", "Choice C": " C:Sagittal ", "Choice D": " D:Oblique ", "Answer_label": "A"}
    _csv(d / "train.csv", [{"Figure_path": "PMC1_F1.jpg", **base},
                           {"Figure_path": "PMC2_F2.jpg", **base, "Question": "Is it a CT?", "Answer": "Yes",
                            "Choice C": "", "Choice D": " D:No "}])
    _csv(d / "test.csv", [{"Figure_path": "PMC3_F1.jpg", **base, "Answer": "Sagittal"}])
    for k in (1, 2, 3):
        _img(d / "images" / f"PMC{k}_F{1 if k != 2 else 2}.jpg", 70 * k, "JPEG")
    rows, rejects = _load(card, tmp_path)
    assert set(rows) == {"pmc_vqa:train:0", "pmc_vqa:test:0"}
    r = rows["pmc_vqa:train:0"]
    assert (r["question"], r["answer"], r["answer_type"], r["task_type"]) == ("Which plane is shown?", "Axial",
                                                                              "open", "open")
    assert r["label_set"] == ["Axial", "Coronal", "Sagittal", "Oblique"] and r["labels"] == []
    assert rows["pmc_vqa:test:0"]["split"] == "test" and rows["pmc_vqa:test:0"]["answer"] == "Sagittal"
    assert abs(_grey(rows["pmc_vqa:test:0"]) - 210) < 3
    assert [(rj.source_path, rj.row, rj.field) for rj in rejects] == [("pmc_vqa/train.csv", "1", "Choice C")]
    assert "expected options filled in letter order, 'Choice C' is empty but 'Choice D' is not" in rejects[0].reason


def test_image_template_with_list_cell_pmc_casereport(tmp_path):
    card = get_card("pmc_casereport")
    d = tmp_path / card.raw.dir
    _csv(d / "train.csv", [
        {"PMC_id": "PMC100", "img_ref": "['F2', 'F3']", "context": "A 50-year-old man with cough.",
         "question": "What does the CT show?", "answer": "A mass in the right lung."},
        {"PMC_id": "PMC200", "img_ref": "['F1']", "context": "", "question": "Which sign is seen?",
         "answer": "Air bronchogram."},
        {"PMC_id": "PMC300", "img_ref": "['F1']", "context": "x", "question": "Q?", "answer": "A."}])
    _img(d / "images" / "PMC100_F2.jpg", 90, "JPEG")
    _img(d / "images" / "PMC100_F3.jpg", 250, "JPEG")
    _img(d / "images" / "PMC200_F1.jpg", 160, "JPEG")
    rows, rejects = _load(card, tmp_path)
    r0, r1 = rows["pmc_casereport:train:0"], rows["pmc_casereport:train:1"]
    assert abs(_grey(r0) - 90) < 3 and r0["source_path"] == "pmc_casereport/train.csv#row=0"   # the first figure
    assert (r0["question"], r0["answer"], r0["text"]) == ("What does the CT show?", "A mass in the right lung.",
                                                          "A 50-year-old man with cough.")
    assert r1["text"] is None and r1["answer_type"] == "open" and r1["split"] == "train"
    assert [(rj.row, rj.field) for rj in rejects] == [("2", "image_template")]
    assert "pmc_casereport/train.csv row 2 field 'image_template': expected an existing image file" in \
           rejects[0].reason and "images/PMC300_F1.jpg" in rejects[0].reason


def _mammo_table(d: Path, suffix: str) -> None:
    rows = [("s1", "i1", "['Mass']", "BI-RADS 4", "DENSITY C", "training"),
            ("s1", "i1", "['Suspicious Calcification', 'Mass']", "BI-RADS 4", "DENSITY C", "training"),
            ("s1", "i2", "['No Finding']", "BI-RADS 1", "DENSITY A", "test"),
            ("s2", "i3", "['Asymmetry']", "BI-RADS 2", "DENSITY B", "training"),
            ("s2", "i3", "['Asymmetry']", "BI-RADS 2", "DENSITY B", "test"),
            ("s2", "i4", "['Mass']", "BI-RADS 7", "DENSITY B", "test")]
    _csv(d / "finding_annotations.csv", [
        {"study_id": s, "series_id": "x", "image_id": i, "laterality": "L", "view_position": "CC",
         "breast_birads": b, "breast_density": dens, "finding_categories": f, "finding_birads": "",
         "xmin": "1", "ymin": "1", "xmax": "2", "ymax": "2", "split": sp} for s, i, f, b, dens, sp in rows])


def _check_mammo(rows, rejects):
    assert {sid: (r["split"], r["labels"]) for sid, r in rows.items()} == {
        "vindr_mammo:i1": ("train", ["Breast heterogeneously density", "Birads suspicious malignant", "Mass",
                                     "Suspicious Calcification"]),
        "vindr_mammo:i2": ("test", ["Birads negative", "Breast almost entirely fatty", "No Finding"])}
    reasons = {(rj.row, rj.field): rj.reason for rj in rejects}
    assert set(reasons) == {("4", "split"), ("5", "breast_birads")}
    assert "finding_annotations.csv row 4 field 'split': expected the split 'train' of the other rows with " \
           "image_id 'i3'" in reasons[("4", "split")]
    assert "row 5 field 'breast_birads': expected a label in the label set of vindr_mammo" in \
           reasons[("5", "breast_birads")]


def test_grouped_rows_template_extra_labels_vindr_mammo_png(tmp_path):
    """The card's fields with PNG conversions of the DICOM files (the card's notes allow them): suffix changed only."""
    card = get_card("vindr_mammo")
    card = card.model_copy(update={"raw": card.raw.model_copy(
        update={"image_template": card.raw.image_template.replace(".dicom", ".png")})})
    d = tmp_path / card.raw.dir
    _mammo_table(d, ".png")
    for s, i in [("s1", "i1"), ("s1", "i2"), ("s2", "i3"), ("s2", "i4")]:
        _img(d / "images" / s / f"{i}.png", 100)
    rows, rejects = _load(card, tmp_path)
    _check_mammo(rows, rejects)
    assert rows["vindr_mammo:i1"]["source_path"] == "vindr_mammo/finding_annotations.csv#row=0"


# --- DICOM --------------------------------------------------------------------------------------------------------

@needs_pydicom
def test_dicom_vindr_mammo_as_is(tmp_path):
    card = get_card("vindr_mammo")
    d = tmp_path / card.raw.dir
    _mammo_table(d, ".dicom")
    for s, i in [("s1", "i1"), ("s1", "i2"), ("s2", "i3"), ("s2", "i4")]:
        _flat_dicom(d / "images" / s / f"{i}.dicom", 3000)
    rows, rejects = _load(card, tmp_path)
    _check_mammo(rows, rejects)
    px = np.asarray(Image.open(io.BytesIO(rows["vindr_mammo:i1"]["image"])))
    assert rows["vindr_mammo:i1"]["image_format"] == "PNG" and px.dtype == np.uint8 and px.shape == (8, 8)
    assert (px[:, :4] == 0).all() and (px[:, 4:] == 255).all()


@needs_pydicom
def test_dicom_group_by_id_split_folders_vindr_spinexr(tmp_path):
    card = get_card("vindr_spinexr")
    d = tmp_path / card.raw.dir
    _csv(d / "annotations" / "train.csv", [{"image_id": "a", "study_id": "s", "lesion_type": "Osteophytes"},
                                           {"image_id": "a", "study_id": "s", "lesion_type": "Surgical implant"},
                                           {"image_id": "b", "study_id": "s", "lesion_type": "No finding"}])
    _csv(d / "annotations" / "test.csv", [{"image_id": "c", "study_id": "s", "lesion_type": "Other lesions"}])
    for folder, i in [("train_images", "a"), ("train_images", "b"), ("test_images", "c")]:
        _flat_dicom(d / folder / f"{i}.dicom", 1000)
    (d / "train_images" / "b.dicom").write_bytes(b"\0" * 64)   # truncated / not DICOM
    rows, rejects = _load(card, tmp_path)
    assert {sid: r["labels"] for sid, r in rows.items()} == {"vindr_spinexr:train:a": ["Osteophytes",
                                                                                       "Surgical implant"],
                                                             "vindr_spinexr:test:c": ["Other lesions"]}
    assert rows["vindr_spinexr:test:c"]["split"] == "test"
    assert [(rj.row, rj.field) for rj in rejects] == [("2", "image_id")]
    assert "vindr_spinexr/annotations/train.csv row 2 field 'image_id': expected a readable DICOM image" in \
           rejects[0].reason and "b.dicom" in rejects[0].reason


@needs_pydicom
def test_dicom_per_split_tables_cbis_ddsm(tmp_path):
    card = get_card("cbis_ddsm_calc")
    d = tmp_path / card.raw.dir
    path = "Calc-Training_P_00005_RIGHT_CC/1.3.6.1.4.1.9590.100.1.2.1/1.3.6.1.4.1.9590.100.1.2.2/000000.dcm"
    tpath = "Calc-Test_P_00038_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.3/1.3.6.1.4.1.9590.100.1.2.4/000000.dcm"
    _csv(d / "csv" / "calc_case_description_train_set.csv", [
        {"patient_id": "P_00005", "pathology": "BENIGN_WITHOUT_CALLBACK", "image file path": path + "\n"}])
    _csv(d / "csv" / "calc_case_description_test_set.csv", [
        {"patient_id": "P_00038", "pathology": "MALIGNANT", "image file path": tpath}])
    _flat_dicom(d / path, 500)
    _flat_dicom(d / tpath, 500)
    rows, rejects = _load(card, tmp_path)
    assert not rejects
    assert {sid: r["labels"] for sid, r in rows.items()} == {"cbis_ddsm_calc:train:0": ["benign"],
                                                             "cbis_ddsm_calc:test:0": ["malignant"]}


@needs_pydicom
def test_dicom_rescale_window_and_monochrome1(tmp_path):
    import pydicom

    from tasks.ingest.loaders.dicom import dicom_to_uint8

    px = np.array([[0, 400, 1000, 1100], [1150, 1200, 2000, 4095]], dtype=np.uint16)
    # modality value = 2 * px - 2000: -2000, -1200, 0, 200, 300, 400, 2000, 6190; window 200 +- 100 (LINEAR)
    ds = pydicom.dcmread(_dicom(tmp_path / "w.dcm", px, slope=2, intercept=-2000, center=200, width=200))
    out = dicom_to_uint8(ds)
    assert out.dtype == np.uint8 and out.shape == (2, 4)
    assert out[0, :3].tolist() == [0, 0, 0] and out[1, 1:].tolist() == [255, 255, 255]
    assert 120 <= out[0, 3] <= 135    # the window's centre maps to mid-grey
    inv = dicom_to_uint8(pydicom.dcmread(_dicom(tmp_path / "m1.dcm", px, photometric="MONOCHROME1", slope=2,
                                                intercept=-2000, center=200, width=200)))
    assert (inv == 255 - out).all()
    mm = dicom_to_uint8(pydicom.dcmread(_dicom(tmp_path / "mm.dcm", px)))   # no window: min-max
    assert mm.min() == 0 and mm.max() == 255 and mm[0, 2] == round(1000 / 4095 * 255)


@needs_pydicom
def test_dicom_voi_lut_sequence(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    from tasks.ingest.loaders.dicom import dicom_to_uint8

    px = np.array([[1000, 1600, 2000, 4095]], dtype=np.uint16)
    ds = pydicom.dcmread(_dicom(tmp_path / "lut.dcm", px, center=100, width=10))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]     # 8-bit entries, more than 256 of them
    item.LUTData = [min(v // 8, 255) for v in range(4096)]   # saturates at stored value 2040
    ds.VOILUTSequence = [item]
    out = dicom_to_uint8(ds)   # the LUT wins over the window; grey levels come from the LUT's range, not min-max
    assert out.tolist() == [[125, 200, 250, 255]]


def test_dicom_without_pydicom_names_the_file(tmp_path, monkeypatch):
    card = get_card("vindr_spinexr")
    d = tmp_path / card.raw.dir
    _csv(d / "annotations" / "train.csv", [{"image_id": "a", "lesion_type": "Osteophytes"}])
    _csv(d / "annotations" / "test.csv", [{"image_id": "c", "lesion_type": "Other lesions"}])
    (d / "train_images").mkdir(parents=True)
    (d / "train_images" / "a.dicom").write_bytes(b"\0" * 200)
    monkeypatch.setitem(sys.modules, "pydicom", None)   # makes `import pydicom` raise ImportError
    with pytest.raises(DataError, match=r"vindr_spinexr/annotations/train.csv row 0 field 'image_id': expected "
                                        r"pydicom installed .*required to read DICOM images; cannot read .*a\.dicom"):
        _load(card, tmp_path)


# --- image_folder: split_folders keyed by split, as the cards write them -----------------------------------------

def test_image_folder_split_keyed_folders_retinal_oct(tmp_path):
    card = get_card("retinal_oct_c8")
    d = tmp_path / card.raw.dir / "RetinalOCT_Dataset"
    for k, split in enumerate(["train", "val", "test"]):
        _img(d / split / "CNV" / f"cnv{k}.png", 10 + k)
        _img(d / split / "NORMAL" / f"n{k}.png", 100 + k)
    rows, rejects = _load(card, tmp_path)
    assert not rejects
    got = sorted((r["split"], r["labels"][0], round(_grey(r))) for r in rows.values())
    assert got == [("test", "Choroidal neovascularization", 12), ("test", "Normal", 102),
                   ("train", "Choroidal neovascularization", 10), ("train", "Normal", 100),
                   ("val", "Choroidal neovascularization", 11), ("val", "Normal", 101)]


# --- report_table: R2Gen's IU-Xray split (annotation.json), random fallback without it ----------------------------

def _iu_xray(root: Path, uids=(1, 2, 3, 4, 5)) -> Path:
    """Kaggle IU-Xray layout: reports, projections (frontal + lateral per uid) and images (grey level 40 * uid)."""
    d = root / "iu_xray"
    _csv(d / "indiana_reports.csv", [{"uid": str(u), "findings": f"Finding {u}.", "impression": f"Impression {u}."}
                                     for u in uids])
    proj = []
    for u in uids:
        for projection, code in (("Frontal", 4001), ("Lateral", 3001)):
            name = f"{u}_IM-{u:04d}-{code}.dcm.png"
            proj.append({"uid": str(u), "filename": name, "projection": projection})
            _img(d / "images" / name, 40 * u if projection == "Frontal" else 255)
    _csv(d / "indiana_projections.csv", proj)
    return d


def _r2gen(d: Path, splits: dict[str, list]) -> None:
    ann = {s: [r if isinstance(r, dict) else {"id": r, "report": "x", "image_path": [f"{r}/0.png"], "split": s}
               for r in recs] for s, recs in splits.items()}
    (d / "r2gen_annotation.json").write_text(json.dumps(ann))


def test_iu_xray_r2gen_split_assigns_the_listed_ids(tmp_path):
    from tasks.ingest.loaders.common import collect_warnings

    card = get_card("iu_xray")
    d = _iu_xray(tmp_path)
    _r2gen(d, {"train": ["CXR1_1_IM-0001", "CXR2_IM-0002"], "val": ["CXR3_IM-0003"], "test": ["CXR4_IM-0004"]})
    with collect_warnings() as warnings:
        rows, rejects = _load(card, tmp_path)
    assert {sid: r["split"] for sid, r in rows.items()} == {       # uid 5 is not in R2Gen's split: left out
        "iu_xray:1": "train", "iu_xray:2": "train", "iu_xray:3": "val", "iu_xray:4": "test"}
    assert rows["iu_xray:3"]["text"] == "Findings: Finding 3.\nImpression: Impression 3."
    assert round(_grey(rows["iu_xray:3"])) == 120                   # the frontal image of uid 3
    assert rejects == [] and warnings == []


def test_iu_xray_r2gen_ids_that_map_to_no_report_are_rejects(tmp_path):
    from data_contracts.errors import ContractError
    from tasks.ingest.dataset import ingest_dataset

    card = get_card("iu_xray")
    d = _iu_xray(tmp_path, uids=(1, 2))
    _r2gen(d, {"train": ["CXR1_1_IM-0001", "CXR99_IM-0099", {"report": "no id"}], "val": ["IM-0002"],
               "test": ["CXR2_IM-0002"]})
    rows, rejects = _load(card, tmp_path)
    assert {sid: r["split"] for sid, r in rows.items()} == {"iu_xray:1": "train", "iu_xray:2": "test"}
    f = "iu_xray/r2gen_annotation.json"
    assert [(rj.source_path, rj.row, rj.field, rj.reason) for rj in rejects] == [
        (f, "train[1]", "id", f"{f} row train[1] field 'id': expected an id naming a uid of indiana_reports.csv, "
                              "got 'CXR99_IM-0099' (uid '99' is absent)"),
        (f, "train[2]", "id", f"{f} row train[2] field 'id': expected a record with a non-empty 'id'"),
        (f, "val[0]", "id", f"{f} row val[0] field 'id': expected an id matching split.id_pattern '^CXR(\\\\d+)_', "
                            "got 'IM-0002'")]
    with pytest.raises(ContractError) as e:
        ingest_dataset(card, tmp_path, tmp_path / "tables", policy="fail")
    assert str(e.value) == rejects[0].reason
    q = ingest_dataset(card, tmp_path, tmp_path / "tables", policy="quarantine")
    assert q.rejects == 3 and {s: e["rows"] for s, e in q.splits.items()} == {"train": 1, "test": 1}


def test_iu_xray_r2gen_id_in_two_splits_keeps_the_first_listing(tmp_path):
    card = get_card("iu_xray")
    d = _iu_xray(tmp_path, uids=(1,))
    _r2gen(d, {"train": ["CXR1_1_IM-0001"], "val": [], "test": ["CXR1_IM-0001"]})
    rows, rejects = _load(card, tmp_path)
    assert {sid: r["split"] for sid, r in rows.items()} == {"iu_xray:1": "train"}
    assert [rj.reason for rj in rejects] == [
        "iu_xray/r2gen_annotation.json row test[0] field 'id': expected each uid in one split only, got "
        "'CXR1_IM-0001' again (its listing under 'train' is kept)"]


def test_iu_xray_without_the_split_file_falls_back_to_the_seeded_random_split(tmp_path):
    from tasks.ingest.dataset import ingest_dataset
    from tasks.ingest.loaders.common import collect_warnings, random_split

    card = get_card("iu_xray")
    uids = tuple(range(1, 21))
    d = _iu_xray(tmp_path, uids=uids)
    with collect_warnings() as warnings:
        rows, rejects = _load(card, tmp_path)
    expected = {f"iu_xray:{u}": random_split(card.raw.split, str(u)) for u in uids}
    assert {sid: r["split"] for sid, r in rows.items()} == expected and rejects == []
    assert [u for u in uids if expected[f"iu_xray:{u}"] != "train"] == [2, 7, 8, 9, 11, 14, 15, 17]   # all "test"
    assert warnings == [
        f"iu_xray: no split file r2gen_annotation.json in {d.resolve()}, so rows are split at random (seeded train "
        "0.7 / val 0.1 / test 0.2, seed 0); the standard split is R2Gen's annotation.json (Chen et al. 2020, "
        "github.com/zhjohnchan/R2Gen), the split the paper follows: place it there as r2gen_annotation.json"]
    first = ingest_dataset(card, tmp_path, tmp_path / "tables")
    assert first.warnings == warnings and sum(e["rows"] for e in first.splits.values()) == 20
    _r2gen(d, {"train": [f"CXR{u}_IM-{u:04d}" for u in uids[:10]], "val": ["CXR11_IM-0011"],
               "test": [f"CXR{u}_IM-{u:04d}" for u in uids[11:14]]})
    second = ingest_dataset(card, tmp_path, tmp_path / "tables")   # the split file appeared: re-ingested
    assert second.status == "written" and second.cache_key != first.cache_key and second.warnings == []
    assert {s: e["rows"] for s, e in second.splits.items()} == {"train": 10, "val": 1, "test": 3}


def test_split_spec_json_ids_and_fallback_are_checked():
    from pydantic import ValidationError

    from data_contracts.cards import RawSpec, SplitSpec

    base = {"source": "file", "files": {"test": "a.json"}, "file_content": "json_ids"}
    with pytest.raises(ValidationError, match="split.fallback=random needs split.fractions summing to 1"):
        SplitSpec(**base, fallback="random", fractions={"train": 0.5})
    with pytest.raises(ValidationError, match="needs a group capturing the id_column value"):
        SplitSpec(**base, id_pattern="^CXR")
    with pytest.raises(ValidationError, match="split.id_field / split.id_pattern need split.file_content=json_ids"):
        SplitSpec(source="file", files={"test": "a.txt"}, file_content="ids", id_pattern="^(x)")
    with pytest.raises(ValidationError, match="split.file_content / split.list_column / split.fallback need"):
        SplitSpec(source="random", fractions={"test": 1.0}, fallback="random")
    with pytest.raises(ValidationError, match="are read by raw.format report_table only"):
        RawSpec(format="csv_images", dir="x", table="t.csv", id_column="id", split=base)
    with pytest.raises(ValidationError, match="report_table reads split files with split.file_content=json_ids only"):
        RawSpec(format="report_table", dir="x", table="t.csv", id_column="id",
                split={"source": "file", "files": {"test": "t.txt"}, "file_content": "ids"})
