"""The tiny benchmark's text-bearing sets: SLAKE question-answer pairs, IU-Xray reports and OpenI case studies, each
written from the same drawn findings as its images (so text and image agree). OpenI case texts carry invented patient
names, ages, dates and record numbers (listed per case in `planted`) for the DES de-identification filter to remove.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np

from data_contracts.cards import DataCard
from tasks.ingest.tiny_images import (IU_PX, OPENI_PX, SLAKE_PX, chest, csv_bytes, ct_abdomen, encode, finish,
                                      mri_brain, skin_photo)

SLAKE_QA, IU_XRAY_REPORTS, OPENI_CASES = 60, 60, 40
IU_REPORT_COLUMNS = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression"]
IU_PROJECTION_COLUMNS = ["uid", "filename", "projection"]


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


def build_slake(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
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
                img = ct_abdomen(rng, abnormal)
            elif modality == "MRI":
                img = mri_brain(rng, abnormal)
            else:
                img = chest(SLAKE_PX, rng, {"opacity": ["right", "left"][rng.integers(2)]} if abnormal else {})
            img_name = f"xmlab{img_id}/source.jpg"
            files[f"{raw.image_dir}/{img_name}"] = encode(finish(img, rng, 0.03), "JPEG")
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


def build_iu_xray(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
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
            files[f"{raw.image_dir}/{filename}"] = encode(finish(chest(IU_PX, rng, shown, lateral), rng, 0.03),
                                                           "PNG")
    files[raw.table] = csv_bytes(IU_REPORT_COLUMNS, reports)
    files[raw.join_table] = csv_bytes(IU_PROJECTION_COLUMNS, projections)
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
        return chest(OPENI_PX, rng, {kind: side}), "png"
    if kind == "liver_lesion":
        return ct_abdomen(rng, True), "png"
    if kind == "brain_tumor":
        return mri_brain(rng, True), "png"
    return skin_photo(rng, "mel", dermoscopy=False), "jpg"


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


def build_openi_cases(card: DataCard, rng: np.random.Generator, sizes: dict[str, int], scale: float) -> dict:
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
        files[f"{raw.image_dir}/{image}"] = encode(finish(img, rng, 0.03), "PNG" if ext == "png" else "JPEG")
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
