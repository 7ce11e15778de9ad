"""Data cards: one YAML file per dataset in `data_contracts/datasets/`, validated by `DataCard`.

    gsco datasets list
    gsco datasets show ham10000

A card says what a dataset is in the paper (role, task, label set, split sizes), where it comes from (access level,
source link) and how its raw files, as the user downloaded them, map onto the canonical `samples` table (`raw`).
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CARDS_DIR = Path(__file__).parent / "datasets"

TaskKind = Literal["diagnosis", "vqa", "report", "description"]
TaskType = Literal["binary", "multiclass", "multilabel", "open", "closed", "open+closed", "multiple-choice"]
Role = Literal["training", "benchmark"]
Domain = Literal["in-domain", "out-of-domain"]
Access = Literal["open", "registration", "restricted", "credentialed", "private"]
RawFormat = Literal["medmnist_npz", "image_folder", "csv_images", "slake_json", "vqa_rad_json", "vqa_med_txt",
                    "report_table", "case_studies",
                    # MedFM annotation lists: "<image file> <labels>" per line (class index, or 0/1 flags)
                    "medfmc_txt",
                    # Hugging Face `datasets` parquet shards with the image bytes in a column (Path-VQA)
                    "hf_parquet",
                    # OmniMedVQA QA_information/*/*.json: lists of multiple-choice questions
                    "omnimedvqa_json"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitSpec(_Strict):
    """How rows get their split: a column / folder / npz key from the raw data, or a seeded random split."""
    source: Literal["npz_keys", "folder", "column", "file", "random"]
    column: str | None = None                 # source=column: the CSV/JSON field that holds the split
    values: dict[str, str] = Field(default_factory=dict)   # raw split value -> train/val/test
    files: dict[str, str] = Field(default_factory=dict)    # source=file: split -> file (or glob) under the dataset dir
    fractions: dict[str, float] = Field(default_factory=dict)  # random split (or fallback): split -> fraction, sum 1
    seed: int = 0
    val_fraction: float = 0.0                 # carve a val split from train (seeded on sample id) when raw has none
    # source=file: what each split file holds. "rows": that split's table; "ids": the id_column values of its
    # samples (one per line, or list_column of a CSV); "row_indexes": 0-based row numbers into raw.table;
    # "json_ids": a JSON object {split: [records]} whose records' id_field name the split's samples (one file may
    # serve every split: R2Gen's IU-Xray annotation.json); rows listed in no split are left out.
    file_content: Literal["rows", "ids", "row_indexes", "json_ids"] = "rows"
    list_column: str | None = None            # CSV column holding the ids / indexes (absent: one value per line)
    id_field: str = "id"                      # json_ids: the record field holding the id
    id_pattern: str | None = None             # json_ids: regex on that id; group 1 is the raw.id_column value
    # source=file: with no split file present, split at random (fractions, seed) and warn instead of failing
    fallback: Literal["random"] | None = None
    file_origin: str | None = None            # where users get the split file, named in the fallback warning

    @model_validator(mode="after")
    def _check(self) -> "SplitSpec":
        if self.source == "column" and not self.column:
            raise ValueError("split.source=column needs split.column")
        if self.source == "file" and not self.files:
            raise ValueError("split.source=file needs split.files")
        if self.source != "file" and (self.file_content != "rows" or self.list_column or self.fallback):
            raise ValueError("split.file_content / split.list_column / split.fallback need split.source=file")
        if self.file_content != "json_ids" and (self.id_pattern or self.id_field != "id"):
            raise ValueError("split.id_field / split.id_pattern need split.file_content=json_ids")
        if self.id_pattern:
            try:
                groups = re.compile(self.id_pattern).groups
            except re.error as e:
                raise ValueError(f"split.id_pattern {self.id_pattern!r} is not a regular expression: {e}") from None
            if groups < 1:
                raise ValueError(f"split.id_pattern {self.id_pattern!r} needs a group capturing the id_column value")
        if self.source == "random" or self.fallback == "random":
            if not self.fractions or abs(sum(self.fractions.values()) - 1.0) > 1e-6:
                raise ValueError(f"split.{'source' if self.source == 'random' else 'fallback'}=random needs "
                                 "split.fractions summing to 1")
        bad = set(self.values.values()) | set(self.files) | set(self.fractions)
        bad -= {"train", "val", "test"}
        if bad:
            raise ValueError(f"split names must be train/val/test, got {sorted(bad)}")
        return self


class RawSpec(_Strict):
    """Where the raw files lie under `<data_root>/<dir>` and how the loader maps them (see tasks/ingest/loaders)."""
    format: RawFormat
    dir: str                                   # folder under the data root, e.g. "ham10000"
    files: list[str] = Field(default_factory=list)  # files / globs that must exist (relative to dir), for `validate`
    # medmnist_npz
    # the 28-px "pneumoniamnist.npz"; "{flag}_224.npz" (MedMNIST+, the paper's size), then _128, _64 are preferred
    npz_file: str | None = None
    flag: str | None = None
    # image_folder: <dir>/<split folder>/<class folder>/<image>; folder names map via label_map.
    # csv / json sets: when set, image paths are relative to the split's folder instead of image_dir.
    split_folders: dict[str, str] = Field(default_factory=dict)
    # csv_images / report_table / json sets
    table: str | None = None                   # CSV / JSON / txt file relative to dir
    image_dir: str | None = None               # image folder relative to dir
    id_column: str | None = None
    image_column: str | None = None            # column holding the image file name / relative path
    image_suffix: str = ""                     # appended to the image column's value when it lacks an extension
    label_column: str | None = None            # single-label column, or multi-label column with label_separator
    label_separator: str | None = None
    onehot_columns: dict[str, str] = Field(default_factory=dict)  # column -> label name (multi-label one-hot)
    label_map: dict[str, str] = Field(default_factory=dict)       # raw value -> label name (identity if absent)
    question_column: str | None = None
    answer_column: str | None = None
    answer_type_column: str | None = None
    text_columns: list[str] = Field(default_factory=list)         # report/case text, joined with a blank line
    filters: dict[str, str] = Field(default_factory=dict)         # keep rows whose column equals the value (q_lang: en)
    fields: list[str] = Field(default_factory=list)               # vqa_med_txt: names of the '|'-separated fields
    join_table: str | None = None              # report_table: second CSV joined on join_on (IU-Xray projections)
    join_on: str | None = None
    join_filters: dict[str, str] = Field(default_factory=dict)    # keep joined rows whose column equals the value
    empty_means: str | None = None             # multilabel: label name for rows with no positive label ("No finding")
    # Layouts the fields above cannot express (all optional; absent = the behaviour above).
    image_template: str | None = None          # image path relative to dir, str.format over the row ("{a}/{b}.dicom")
    group_by_id: bool = False                  # several rows per id_column (one per box / finding): labels are the union
    extra_label_columns: list[str] = Field(default_factory=list)  # more single-value label columns, through label_map
    label_list_literal: bool = False           # label_column holds a Python list literal, e.g. "['Mass', 'Asymmetry']"
    option_columns: dict[str, str] = Field(default_factory=dict)  # multiple choice: option letter -> column
    modality_column: str | None = None         # per-row modality (OmniMedVQA's modality_type), else card.modality
    split: SplitSpec

    @model_validator(mode="after")
    def _check_new_fields(self) -> "RawSpec":
        if self.group_by_id and not self.id_column:
            raise ValueError("raw.group_by_id needs raw.id_column (the key rows are grouped on)")
        if (self.label_list_literal or self.extra_label_columns) and not self.label_column:
            raise ValueError("raw.label_list_literal / raw.extra_label_columns need raw.label_column")
        if self.option_columns and not self.answer_column:
            raise ValueError("raw.option_columns needs raw.answer_column")
        json_ids = self.split.file_content == "json_ids"
        if (json_ids or self.split.fallback) and self.format != "report_table":
            raise ValueError("split.file_content=json_ids / split.fallback are read by raw.format report_table only")
        if self.format == "report_table" and self.split.source == "file" and not json_ids:
            raise ValueError("raw.format report_table reads split files with split.file_content=json_ids only")
        if json_ids and not self.id_column:
            raise ValueError("split.file_content=json_ids needs raw.id_column (the column listed ids refer to)")
        return self


class PaperSizes(_Strict):
    """Split sizes the paper reports (Tables A10, A14, A15; §4). Absent = the paper gives none."""
    train: int | None = None
    val: int | None = None
    test: int | None = None
    total: int | None = None
    note: str | None = None


class DataCard(_Strict):
    name: str                                  # registry key, lowercase, [a-z0-9_]
    title: str
    roles: list[Role]
    domain: Domain | None = None               # benchmark sets only
    task_kind: TaskKind
    task_type: TaskType
    modality: str                              # in the words the prompts use ("chest X-ray", "dermoscopy", ...)
    labels: list[str] = Field(default_factory=list)
    labels_source: str | None = None           # "paper Table A10", "medmnist INFO", "dataset documentation (not in paper)"
    # label -> other names an answer may use for it (answers are mapped onto the label set by tasks/evaluation/parsing)
    synonyms: dict[str, list[str]] = Field(default_factory=dict)
    # report sets: the section of the report text that is the reference (MultiMedEval scores findings only)
    reference_section: Literal["findings", "impression", "full"] | None = None
    paper_sizes: PaperSizes = PaperSizes()
    access: Access
    source: str
    citation: str | None = None
    dgb_source: bool = False                   # feeds diagnosis-guided bootstrapping (SPEC §3)
    raw: RawSpec
    notes: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.replace("_", "").isalnum() or v.lower() != v:
            raise ValueError(f"card name must be lowercase [a-z0-9_], got {v!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "DataCard":
        if self.task_kind == "diagnosis":
            if len(self.labels) < 2:
                raise ValueError(f"{self.name}: a diagnosis card needs a label set of at least 2 names")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"{self.name}: label set has duplicates")
            if self.task_type == "binary" and len(self.labels) != 2:
                raise ValueError(f"{self.name}: binary task needs exactly 2 labels, has {len(self.labels)}")
            unknown = set(self.raw.label_map.values()) | set(self.raw.onehot_columns.values())
            unknown -= set(self.labels)
            if unknown:
                raise ValueError(f"{self.name}: raw mapping targets labels outside the label set: {sorted(unknown)}")
            unknown_syn = sorted(set(self.synonyms) - set(self.labels))
            if unknown_syn:
                raise ValueError(f"{self.name}: synonyms given for labels outside the label set: {unknown_syn}")
            if self.raw.empty_means and self.raw.empty_means not in self.labels:
                raise ValueError(f"{self.name}: raw.empty_means {self.raw.empty_means!r} is not in the label set")
        elif self.synonyms:
            raise ValueError(f"{self.name}: synonyms are for diagnosis label sets only")
        if self.reference_section is not None and self.task_kind != "report":
            raise ValueError(f"{self.name}: reference_section is for report sets only")
        if "benchmark" in self.roles and self.domain is None:
            raise ValueError(f"{self.name}: a benchmark card needs domain in-domain/out-of-domain")
        if self.dgb_source and self.task_kind != "diagnosis":
            raise ValueError(f"{self.name}: only diagnosis sets can feed DGB")
        return self


def load_card(path: Path) -> DataCard:
    """Parse and validate one card file; errors name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        return DataCard.model_validate(data)
    except Exception as e:  # pydantic / yaml errors get the file name in front
        raise ValueError(f"{path}: invalid data card: {e}") from e


def load_cards(cards_dir: Path) -> dict[str, DataCard]:
    """All cards in `cards_dir` (*.yaml), by name; errors name the offending file."""
    cards: dict[str, DataCard] = {}
    for p in sorted(Path(cards_dir).glob("*.yaml")):
        card = load_card(p)
        if card.name != p.stem:
            raise ValueError(f"{p}: card name {card.name!r} must equal the file name {p.stem!r}")
        cards[card.name] = card
    return cards


@lru_cache(maxsize=1)
def registry() -> dict[str, DataCard]:
    """All cards shipped in data_contracts/datasets, by name."""
    return load_cards(CARDS_DIR)


def get_card(name: str) -> DataCard:
    """The card for `name`, or a KeyError listing the known names."""
    cards = registry()
    if name not in cards:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(cards))}")
    return cards[name]
