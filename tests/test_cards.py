"""Data cards agree with SPEC §3 and the paper's tables, and bad cards fail loudly.

    cd /work/main && OMP_NUM_THREADS=1 /root/.cache/gsco-venv-dev/bin/pytest -q tests/test_cards.py

The expected values below are transcribed from SPEC §3 and the paper (Tables A10, A14, A15; §4 dataset
descriptions), and the MedMNIST label names from the medmnist package's INFO dict, so that a card edited away from
them fails here.
"""
from __future__ import annotations

import copy
import string
from pathlib import Path

import pytest
import yaml

from data_contracts.cards import CARDS_DIR, DataCard, load_card, load_cards, registry

NO_FINDING = {"No finding", "No Finding"}

# SPEC §3 diagnosis benchmark: name -> (domain, task type, label count without "No finding" or None, test size)
DIAGNOSIS_BENCHMARK = {
    "pcam200": ("in-domain", "binary", 2, 17932),
    "dermnet": ("in-domain", "multiclass", 23, 4045),
    "ham10000": ("in-domain", "multiclass", 7, 1511),
    "retinal_oct_c8": ("in-domain", "multiclass", 8, 2800),
    "chestmnist": ("in-domain", "multilabel", 14, 22433),
    "vindr_spinexr": ("in-domain", "multilabel", None, 2077),
    "vindr_pcxr": ("in-domain", "multilabel", None, 1397),
    "vindr_mammo": ("in-domain", "multilabel", None, 4000),
    "pneumoniamnist": ("out-of-domain", "binary", 2, 624),
    "breastmnist": ("out-of-domain", "binary", 2, 156),
    "organamnist": ("out-of-domain", "multiclass", 11, 17778),
    "pathmnist": ("out-of-domain", "multiclass", 9, 7180),
    "octmnist": ("out-of-domain", "multiclass", 4, 1000),
    "cbis_ddsm_calc": ("out-of-domain", "binary", 2, 326),
    "cbis_ddsm_mass": ("out-of-domain", "binary", 2, 378),
    "fmc_colon": ("out-of-domain", "binary", 2, 4355),
    "fmc_endo": ("out-of-domain", "multiclass", 4, 2055),
    "fmc_chest": ("out-of-domain", "multilabel", 19, 2708),
    "derm7pt": ("out-of-domain", "multiclass", None, 395),
    "brset": ("out-of-domain", "multilabel", None, 3254),
}
# SPEC §3 VQA and MRG benchmark: name -> (domain, test size the paper gives or None)
VQA_BENCHMARK = {
    "vqa_rad": ("in-domain", None), "slake": ("in-domain", None), "path_vqa": ("in-domain", None),
    "pmc_vqa": ("in-domain", None), "vqa_med_2019": ("out-of-domain", 500), "omnimedvqa": ("out-of-domain", 51977),
}
REPORT_BENCHMARK = {"mimic_cxr": ("in-domain", None), "iu_xray": ("in-domain", None)}
BENCHMARK = {**DIAGNOSIS_BENCHMARK, **VQA_BENCHMARK, **REPORT_BENCHMARK}

# SPEC §3 training corpus: name -> training size
TRAINING_SIZES = {
    "slake": 4919, "vqa_rad": 3064, "path_vqa": 19755, "pmc_vqa": 152603, "pmc_casereport": 254105,
    "mimic_cxr": 337292, "iu_xray": 4730,
    "vindr_spinexr": 6129, "vindr_pcxr": 4585, "vindr_mammo": 6047, "vindr_cxr": 45000, "chexpert": 223414,
    "chestxray14": 86524, "pcam200": 28539, "pad_ufes_20": 2298, "dermnet": 15557, "ham10000": 10015,
    "isic2020": 33126, "kvasir": 8000, "kvasir_capsule": 47238, "wce": 3200, "gastrovision": 8000, "odir": 6392,
    "fundus1000": 1000, "rfmid2": 455, "retinal_oct_c8": 18000, "ultrabreast": 45896,
}
TRAINING = set(TRAINING_SIZES) | {"openi_cases"}   # OpenI case studies feed DES (245,371 rewritten)

DGB_SOURCES = {"vindr_spinexr", "vindr_pcxr", "vindr_mammo", "vindr_cxr", "chestxray14", "pad_ufes_20", "dermnet",
               "kvasir", "wce", "kvasir_capsule", "odir", "fundus1000", "rfmid2"}

# Tables A14 / A15 "Access" column (OpenI cases: not in the tables; OpenI is open)
ACCESS = {
    "slake": "open", "vqa_rad": "open", "path_vqa": "open", "pmc_vqa": "open", "pmc_casereport": "open",
    "mimic_cxr": "credentialed", "iu_xray": "open", "vindr_spinexr": "credentialed", "vindr_pcxr": "credentialed",
    "vindr_mammo": "credentialed", "vindr_cxr": "credentialed", "chexpert": "restricted",
    "chestxray14": "credentialed", "pcam200": "open", "pad_ufes_20": "open", "dermnet": "open", "ham10000": "open",
    "isic2020": "open", "kvasir": "open", "kvasir_capsule": "open", "wce": "open", "gastrovision": "open",
    "odir": "open", "fundus1000": "open", "rfmid2": "open", "retinal_oct_c8": "open", "ultrabreast": "private",
    "vqa_med_2019": "open", "omnimedvqa": "credentialed", "chestmnist": "open", "pneumoniamnist": "open",
    "breastmnist": "open", "organamnist": "open", "pathmnist": "open", "octmnist": "open",
    "cbis_ddsm_mass": "open", "cbis_ddsm_calc": "open", "fmc_colon": "credentialed", "fmc_endo": "credentialed",
    "fmc_chest": "credentialed", "derm7pt": "credentialed", "brset": "credentialed", "openi_cases": "open",
}

# Table A10 label sets (in-domain diagnosis), as printed with the line-break hyphens removed
TABLE_A10 = {
    "pcam200": ["Normal", "Tumor"],
    "dermnet": [
        "Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions", "Atopic Dermatitis",
        "Warts Molluscum and other Viral Infections", "Vascular Tumors", "Seborrheic Keratoses and other Benign Tumors",
        "Urticaria Hives", "Light Diseases and Disorders of Pigmentation", "Exanthems and Drug Eruptions",
        "Scabies Lyme Disease and other Infestations and Bites", "Psoriasis pictures Lichen Planus and related diseases",
        "Eczema", "Poison Ivy and other Contact Dermatitis", "Acne and Rosacea", "Bullous Disease",
        "Hair Loss Alopecia and other Hair Diseases", "Tinea Ringworm Candidiasis and other Fungal Infections",
        "Vasculitis", "Lupus and other Connective Tissue diseases", "Cellulitis Impetigo and other Bacterial Infections",
        "Melanoma Skin Cancer Nevi and Moles", "Systemic Disease", "Herpes HPV and other STDs",
        "Nail Fungus and other Nail Disease"],
    "ham10000": ["Actinic keratoses and intraepithelial carcinoma", "Basal cell carcinoma",
                 "Benign keratosis-like lesions", "Dermatofibroma", "Melanoma", "Melanocytic nevi", "Vascular lesions"],
    "retinal_oct_c8": ["Age-related macular degeneration", "Choroidal neovascularization", "Central serous retinopathy",
                       "Diabetic macular edema", "Macular hole", "Drusen", "Diabetic retinopathy", "Normal"],
    "vindr_spinexr": ["Osteophytes", "Vertebral collapse", "Disc space narrowing", "Surgical implant", "Other lesions",
                      "Foraminal stenosis", "Spondylolysthesis", "No finding"],
    "vindr_pcxr": ["Pneumonia", "Bronchiolitis", "Other disease", "Bronchitis", "Brocho-pneumonia", "Tuberculosis",
                   "Pleuro-pneumonia", "Situs inversus", "Mediastinal tumor", "Diagphramatic hernia",
                   "Hyaline membrane disease", "Lung tumor", "Congenital emphysema", "CPAM", "No finding"],
    "vindr_mammo": ["Birads negative", "Breast heterogeneously density", "Breast scattered areas of fibroglandular",
                    "Birads suspicious malignant", "Mass", "Breast extremely density", "Birads benign",
                    "Birads highly suggestive of malignant", "Suspicious Calcification", "Breast almost entirely fatty",
                    "Suspicious Lymph Node", "Focal Asymmetry", "Birads probably benign", "Asymmetry",
                    "Architectural Distortion", "Skin Thickening", "Global Asymmetry", "Nipple Retraction",
                    "Skin Retraction", "No Finding"],
}

# medmnist INFO[flag]["label"] (medmnist 2.x/3.x), verbatim
MEDMNIST_INFO = {
    "chestmnist": ["atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
    "organamnist": ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"],
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                  "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
}

TABLE_FORMATS = {"csv_images", "report_table", "case_studies", "slake_json", "vqa_rad_json", "vqa_med_txt",
                 "medfmc_txt", "hf_parquet", "omnimedvqa_json"}


@pytest.fixture(scope="module")
def cards() -> dict[str, DataCard]:
    return registry()


def _disease_labels(card: DataCard) -> list[str]:
    return [label for label in card.labels if label not in NO_FINDING]


def _raw_problems(card: DataCard) -> list[str]:
    """What a loader could not do with this card's raw mapping (empty when the mapping is usable)."""
    raw, problems = card.raw, []
    if not raw.files:
        problems.append("raw.files is empty (nothing for `validate` to check)")
    if raw.format == "medmnist_npz":
        if not (raw.flag and raw.npz_file) or raw.split.source != "npz_keys":
            problems.append("medmnist_npz needs flag, npz_file and split.source=npz_keys")
    elif raw.format == "image_folder":
        if not raw.split_folders or raw.split.source != "folder":
            problems.append("image_folder needs split_folders and split.source=folder")
    elif raw.format in TABLE_FORMATS:
        tables_per_split = raw.split.source == "file" and raw.split.file_content == "rows"
        if not (raw.table or tables_per_split):
            problems.append(f"{raw.format} needs raw.table or per-split tables (split.source=file)")
        # a medfmc_txt line starts with the image file name, so the format itself says where the image is
        if not (raw.image_column or raw.image_template or raw.format == "medfmc_txt"):
            problems.append(f"{raw.format} needs raw.image_column or raw.image_template")
        if raw.format == "vqa_med_txt":
            missing = {raw.image_column, raw.question_column, raw.answer_column} - set(raw.fields)
            if missing:
                problems.append(f"vqa_med_txt fields lack {sorted(missing, key=str)}")
    if raw.image_template:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(raw.image_template) if f is not None]
        except ValueError as e:
            problems.append(f"image_template is not a format string: {e}")
        else:
            if not fields or any(not f for f in fields):
                problems.append("image_template needs named {column} fields")
    if card.task_kind == "diagnosis" and raw.format not in {"medmnist_npz", "image_folder"}:
        if not (raw.label_column or raw.onehot_columns or (raw.format == "medfmc_txt" and raw.label_map)):
            problems.append("diagnosis card needs label_column or onehot_columns")
    if card.task_kind == "vqa" and not (raw.question_column and raw.answer_column):
        problems.append("vqa card needs question_column and answer_column")
    if card.task_kind in {"report", "description"} and not raw.text_columns:
        problems.append(f"{card.task_kind} card needs text_columns")
    return problems


def test_registry_holds_exactly_the_spec_datasets(cards):
    expected = set(BENCHMARK) | TRAINING
    assert set(cards) == expected, (f"missing: {sorted(expected - set(cards))}, "
                                    f"unexpected: {sorted(set(cards) - expected)}")
    assert len(DIAGNOSIS_BENCHMARK) == 20 and len(VQA_BENCHMARK) == 6 and len(REPORT_BENCHMARK) == 2


def test_every_card_file_validates_and_is_named_after_its_file():
    paths = sorted(CARDS_DIR.glob("*.yaml"))
    assert len(paths) == len(set(BENCHMARK) | TRAINING)
    for path in paths:
        card = load_card(path)
        assert card.name == path.stem


def test_roles_match_spec(cards):
    for name, card in cards.items():
        assert ("benchmark" in card.roles) == (name in BENCHMARK), name
        assert ("training" in card.roles) == (name in TRAINING), name
        assert len(set(card.roles)) == len(card.roles), name


def test_benchmark_domains_and_task_kinds_match_spec(cards):
    for name, (domain, task_type, _, _) in DIAGNOSIS_BENCHMARK.items():
        card = cards[name]
        assert (card.domain, card.task_kind, card.task_type) == (domain, "diagnosis", task_type), name
    for name, (domain, _) in VQA_BENCHMARK.items():
        assert (cards[name].domain, cards[name].task_kind) == (domain, "vqa"), name
    assert cards["omnimedvqa"].task_type == "multiple-choice"
    for name, (domain, _) in REPORT_BENCHMARK.items():
        assert (cards[name].domain, cards[name].task_kind) == (domain, "report"), name
    for name, card in cards.items():
        if name not in BENCHMARK:
            assert card.domain is None, f"{name}: training-only sets have no benchmark domain"


def test_label_counts_match_spec(cards):
    for name, (_, task_type, n_labels, _) in DIAGNOSIS_BENCHMARK.items():
        card = cards[name]
        if n_labels is not None:
            assert len(_disease_labels(card)) == n_labels, (name, card.labels)
        if task_type == "binary":
            assert len(card.labels) == 2, name
    assert "No finding" in cards["chestmnist"].labels
    assert len(cards["chestmnist"].labels) == 15


def test_in_domain_label_sets_are_table_a10(cards):
    for name, labels in TABLE_A10.items():
        assert sorted(cards[name].labels) == sorted(labels), name
        assert "Table A10" in cards[name].labels_source, name
    assert [len(TABLE_A10[n]) for n in ("vindr_spinexr", "vindr_pcxr", "vindr_mammo")] == [8, 15, 20]


def test_labels_source_never_claims_table_a10_for_other_sets(cards):
    in_domain_diagnosis = set(TABLE_A10) | {"chestmnist"}
    for name, card in cards.items():
        assert card.labels_source, f"{name}: labels_source is required"
        if card.task_kind == "diagnosis" and name not in in_domain_diagnosis:
            assert "Table A10" not in card.labels_source, name


def test_medmnist_cards_use_info_labels_verbatim(cards):
    for flag, info_labels in MEDMNIST_INFO.items():
        card = cards[flag]
        assert card.raw.format == "medmnist_npz" and card.raw.flag == flag and card.raw.dir == "medmnist"
        assert card.raw.label_map == {str(i): label for i, label in enumerate(info_labels)}, flag
        assert _disease_labels(card) == info_labels, flag
        assert card.labels_source.startswith("medmnist INFO"), flag
    assert cards["chestmnist"].raw.empty_means == "No finding"


def test_paper_sizes_match_spec(cards):
    for name, (*_, test_size) in DIAGNOSIS_BENCHMARK.items():
        assert cards[name].paper_sizes.test == test_size, name
    for name, (_, test_size) in {**VQA_BENCHMARK, **REPORT_BENCHMARK}.items():
        assert cards[name].paper_sizes.test == test_size, name
    for name, train_size in TRAINING_SIZES.items():
        assert cards[name].paper_sizes.train == train_size, name
    assert cards["openi_cases"].paper_sizes.total == 245371


def test_dgb_sources_are_the_spec_list(cards):
    assert {name for name, card in cards.items() if card.dgb_source} == DGB_SOURCES
    assert all("training" in cards[name].roles for name in DGB_SOURCES)


def test_access_matches_tables_a14_a15(cards):
    assert {name: card.access for name, card in cards.items()} == ACCESS


def test_label_mapping_targets_lie_in_the_label_set(cards):
    for name, card in cards.items():
        if card.task_kind != "diagnosis":
            assert not card.labels and not card.raw.label_map and not card.raw.onehot_columns, name
            continue
        labels = set(card.labels)
        assert set(card.raw.label_map.values()) <= labels, name
        assert set(card.raw.onehot_columns.values()) <= labels, name
        assert card.raw.empty_means is None or card.raw.empty_means in labels, name
        assert len(labels) == len(card.labels), f"{name}: duplicate labels"


def test_every_label_is_reachable_from_the_raw_mapping(cards):
    for name, card in cards.items():
        raw = card.raw
        if card.task_kind != "diagnosis":
            continue
        if raw.onehot_columns or raw.format == "medmnist_npz":
            reachable = set(raw.onehot_columns.values()) | set(raw.label_map.values()) | ({raw.empty_means} - {None})
            assert reachable == set(card.labels), (name, sorted(set(card.labels) - reachable))
        if card.task_type == "multilabel" and NO_FINDING & set(card.labels) and raw.onehot_columns:
            nf = NO_FINDING & set(card.labels)
            assert nf & set(raw.onehot_columns.values()) or raw.empty_means in nf, \
                f"{name}: 'No finding' is neither a column nor raw.empty_means"


def test_raw_mappings_are_usable_by_a_loader(cards):
    problems = {name: _raw_problems(card) for name, card in cards.items()}
    assert {name: p for name, p in problems.items() if p} == {}


def _yields_test_split(card: DataCard) -> bool:
    split = card.raw.split
    if split.source == "npz_keys":
        return True
    if split.source == "folder":
        return "test" in card.raw.split_folders
    return "test" in split.values.values() or "test" in split.files or "test" in split.fractions


def test_split_specs_name_only_train_val_test(cards):
    for name, card in cards.items():
        split = card.raw.split
        assert set(split.values.values()) | set(split.files) | set(split.fractions) <= {"train", "val", "test"}, name
        assert set(card.raw.split_folders) <= {"train", "val", "test"}, name
        if name in BENCHMARK:
            assert _yields_test_split(card), f"{name}: a benchmark card must yield a test split"


# --- malformed cards ------------------------------------------------------------------------------------------

def _base_card() -> dict:
    return yaml.safe_load((CARDS_DIR / "breastmnist.yaml").read_text())


def _write(tmp_path: Path, data: dict | str, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _mutations() -> dict[str, tuple[dict, str]]:
    """Broken variants of a valid card, each with a fragment its error message must contain."""
    cases = {}
    d = _base_card(); d["labels"] = ["malignant", "normal, benign", "other"]
    cases["binary_with_3_labels"] = (d, "binary task needs exactly 2 labels")
    d = _base_card(); d["modalty"] = "typo"
    cases["unknown_card_field"] = (d, "modalty")
    d = _base_card(); d["raw"]["npz_filename"] = "x.npz"
    cases["unknown_raw_field"] = (d, "npz_filename")
    d = _base_card(); d["raw"]["label_map"]["1"] = "benign"
    cases["label_map_outside_label_set"] = (d, "outside the label set")
    d = _base_card(); d["domain"] = None
    cases["benchmark_without_domain"] = (d, "needs domain")
    d = _base_card(); d["raw"]["split"] = {"source": "random", "fractions": {"train": 0.8, "test": 0.1}}
    cases["fractions_not_summing_to_1"] = (d, "summing to 1")
    d = _base_card(); d["raw"]["split"] = {"source": "column", "column": "s", "values": {"tr": "training"}}
    cases["split_name_not_train_val_test"] = (d, "train/val/test")
    d = _base_card(); d["raw"]["group_by_id"] = True
    cases["group_by_id_without_id_column"] = (d, "group_by_id needs raw.id_column")
    d = _base_card(); d["raw"]["split"] = {"source": "npz_keys", "file_content": "ids"}
    cases["file_content_without_file_split"] = (d, "need split.source=file")
    d = _base_card(); d["task_type"] = "multilabel"; d["raw"]["empty_means"] = "No finding"
    cases["empty_means_outside_label_set"] = (d, "empty_means")
    d = _base_card(); d["dgb_source"] = True; d["task_kind"] = "vqa"; d["task_type"] = "open"; d["labels"] = []
    d["raw"]["label_map"] = {}
    d.pop("synonyms", None)
    cases["dgb_from_vqa"] = (d, "only diagnosis sets can feed DGB")
    d = _base_card(); d["paper_sizes"]["test"] = "many"
    cases["size_not_an_int"] = (d, "paper_sizes")
    return cases


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_malformed_card_raises_error_naming_the_file(tmp_path, case):
    data, fragment = _mutations()[case]
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as err:
        load_card(path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)


def test_invalid_yaml_raises_error_naming_the_file(tmp_path):
    path = _write(tmp_path, "name: broken\nlabels: [a, b\n")
    with pytest.raises(ValueError, match="invalid data card") as err:
        load_card(path)
    assert str(path) in str(err.value)


def test_card_named_unlike_its_file_is_rejected(tmp_path):
    _write(tmp_path, _base_card(), "pneumoniamnist.yaml")
    with pytest.raises(ValueError, match="must equal the file name") as err:
        load_cards(tmp_path)
    assert str(tmp_path / "pneumoniamnist.yaml") in str(err.value)


def test_load_cards_reads_a_directory_of_valid_cards(tmp_path):
    good = _base_card()
    other = copy.deepcopy(good)
    other["name"] = "breastmnist_copy"
    _write(tmp_path, good, "breastmnist.yaml")
    _write(tmp_path, other, "breastmnist_copy.yaml")
    loaded = load_cards(tmp_path)
    assert sorted(loaded) == ["breastmnist", "breastmnist_copy"]
    assert loaded["breastmnist"] == registry()["breastmnist"]
