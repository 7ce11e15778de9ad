"""MedDr fine-tuning on the tiny profile: answer-only labels, the masked-answer check, LoRA on the LM only, a killed
DeepSpeed ZeRO-3 run resumed from its checkpoint, the loss going down, adapter and merged model.

    OMP_NUM_THREADS=1 pytest -q tests/test_finetune.py
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from data_contracts.errors import ContractError
from data_contracts.instructions import INSTRUCTIONS_SCHEMA, image_digest, validate_instructions
from data_contracts.io import DatasetWriter
from data_contracts.layout import FinetuneFiles
from data_contracts.samples import SAMPLES_SCHEMA
from infra.profiles import load_profile
from tasks.generalist.finetune.adapter import check_adapter
from tasks.generalist.finetune.config import FinetuneConfig, resolve_deepspeed_config
from tasks.generalist.finetune.data import AnswerMaskedError, IGNORE_INDEX, InstructionData, SampleEncoder, collate
from tasks.generalist.finetune.training import load_training_model, read_marker, result_payload, train
from tasks.generalist.backends import TransformersGeneralist
from tasks.generalist.settings import GenerationSettings
from tasks.generalist.tiny_internvl import build_tiny_internvl
from tests.helpers import process_cmdlines

REPO = Path(__file__).resolve().parents[1]
LABELS = ["normal", "pneumonia", "effusion", "nodule"]
COLORS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
INSTRUCTION = ("You are a helpful medical assistant. Your task is disease diagnosis. You are given a chest x-ray "
               "image. The possible diagnoses are: normal, pneumonia, effusion, nodule.")


def _png(color) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (24, 24), color).save(b, "PNG")
    return b.getvalue()


def _rows(n_train=24, n_val=8) -> list[dict]:
    """Each image's colour determines its diagnosis, so the answer is learnable from the image alone."""
    rows = []
    for i in range(n_train + n_val):
        k = i % len(LABELS)
        rows.append({"sample_id": f"tinycxr:{i:03d}", "image": _png(COLORS[k]), "instruction": INSTRUCTION,
                     "answer": LABELS[k], "source_dataset": "tinycxr", "task_kind": "diagnosis",
                     "split": "train" if i < n_train else "val"})
    return rows


def _write_shards(rows: list[dict], folder: Path, per_shard: int = 16) -> Path:
    """`folder`/tables: the rows' images as a samples table; `folder`/shards: the rows as instruction shards that
    refer to them (what the corpus stage writes). Returns `folder`/shards (a run's data_dir)."""
    with DatasetWriter(folder / "tables", "tinycxr") as w:
        for split in ("train", "val"):
            samples = [{"sample_id": r["sample_id"], "dataset": "tinycxr", "split": split, "task_kind": "diagnosis",
                        "task_type": "multiclass", "modality": "chest x-ray", "image": r["image"],
                        "image_format": "PNG", "image_width": 24, "image_height": 24,
                        "labels": [r["answer"] if r["answer"] in LABELS else LABELS[0]],
                        "label_set": LABELS, "question": None, "answer": None, "answer_type": None, "text": None,
                        "source_path": f"{r['sample_id']}.png"} for r in rows if r["split"] == split]
            if samples:
                w.write_split(split, pl.from_arrow(pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA)))
    refs = [{**{k: v for k, v in r.items() if k != "image"}, "image_sample_id": r["sample_id"],
             "image_digest": image_digest(r["image"])} for r in rows]
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    for s in range(0, len(rows), per_shard):
        pq.write_table(pa.Table.from_pylist(refs[s:s + per_shard], schema=INSTRUCTIONS_SCHEMA),
                       folder / "shards" / f"part-{s // per_shard:05d}.parquet", row_group_size=8)
    return folder / "shards"


def _data(rows: list[dict], folder: Path) -> InstructionData:
    return InstructionData(_write_shards(rows, folder), folder / "tables")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    model = build_tiny_internvl(root / "tiny-internvl", [INSTRUCTION, *LABELS],
                                load_profile("tiny").generalist.tiny_model)
    _write_shards(_rows(), root / "corpus")
    return {"root": root, "model": model, "data": root / "corpus", "tables": root / "corpus" / "tables"}


def _config(tiny, out: Path, **kw) -> FinetuneConfig:
    d = dict(model_path=str(tiny["model"]), data_dir=str(tiny["data"] / "shards"), tables_dir=str(tiny["tables"]),
             output_dir=str(out),
             deepspeed_config=str(REPO / "infra" / "deepspeed" / "zero3_cpu.json"), lora_r=8, lora_alpha=16,
             lora_dropout=0.0, max_steps=24, per_device_batch_size=4, gradient_accumulation_steps=1,
             learning_rate=5e-3, weight_decay=0.0, warmup_ratio=0.1, max_length=128, bf16=False,
             gradient_checkpointing=True, save_steps=4, seed=0)
    d.update(kw)
    return FinetuneConfig(**d)


def test_config_and_deepspeed_config_resolution(tiny, tmp_path):
    cfg = _config(tiny, tmp_path / "out")
    assert FinetuneConfig.model_validate(json.loads(json.dumps(cfg.model_dump()))) == cfg
    with pytest.raises(ValueError, match=r"lora_rank\n.*Extra inputs are not permitted"):
        FinetuneConfig.model_validate({**cfg.model_dump(), "lora_rank": 4})
    with pytest.raises(ValueError, match=r"data_dir\n.*Field required"):
        FinetuneConfig.model_validate({"model_path": "m", "output_dir": "o"})
    full = FinetuneConfig(model_path="m", data_dir="d", tables_dir="t", output_dir="o")  # SPEC §5 recipe
    assert (full.lora_r, full.lora_alpha, full.lora_dropout, full.learning_rate, full.weight_decay,
            full.warmup_ratio, full.max_length, full.num_epochs, full.bf16, full.gradient_checkpointing) == \
        (16, 32, 0.05, 1e-5, 0.05, 0.03, 2048, 2.0, True, True)
    ds = resolve_deepspeed_config(full.deepspeed_config, full, world_size=16)
    assert ds["train_batch_size"] == 128 and ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["bf16"]["enabled"] is True and ds["optimizer"]["params"]["lr"] == 1e-5
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["overlap_comm"] and z["contiguous_gradients"]
    assert z["stage3_gather_16bit_weights_on_model_save"] and z["stage3_param_persistence_threshold"] == 1e5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="contradicts the run config"):
        resolve_deepspeed_config(bad, full, world_size=1)
    # a changed recipe cannot resume another recipe's checkpoints; a moved output dir can
    assert cfg.training_digest() == _config(tiny, tmp_path / "elsewhere", save_steps=9).training_digest()
    assert cfg.training_digest() != _config(tiny, tmp_path / "out", learning_rate=1e-4).training_digest()


def test_lora_goes_on_the_language_model_only(tiny, tmp_path):
    model, processor, trainable, total = load_training_model(_config(tiny, tmp_path / "o"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("language_model" in n and "lora_" in n for n in names)
    targeted = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in names}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # the vision tower has q/k/v projections too: they must stay frozen
    vision_qkv = [n for n, _ in model.named_modules() if "vision_tower" in n and n.endswith("q_proj")]
    assert vision_qkv and not any("vision_tower" in n or "multi_modal_projector" in n for n in names)
    assert 0 < trainable < total


def test_labels_cover_the_answer_only_and_match_generation_tokens(tiny):
    gen = TransformersGeneralist(str(tiny["model"]))
    enc = SampleEncoder(gen.processor, max_length=128)
    row = _rows()[1]
    (ids, labels), = enc.encode_many([row])
    n_prompt = next(i for i, x in enumerate(labels) if x != IGNORE_INDEX)
    # the prompt part is exactly what the generalist feeds the model at inference
    gen_ids = gen.processor_inputs([row["image"]], [row["instruction"]])["input_ids"][0].tolist()
    assert ids[:n_prompt] == gen_ids
    tok = gen.processor.tokenizer
    assert tok.decode(ids[n_prompt:]) == "pneumonia<|im_end|>\n"
    assert labels[n_prompt:] == ids[n_prompt:] and set(labels[:n_prompt]) == {IGNORE_INDEX}
    batch = collate([(ids, labels), (ids[:-3], labels[:-3])], torch.zeros(2, 3, 24, 24), pad_id=tok.pad_token_id)
    assert batch["attention_mask"][1].sum() == len(ids) - 3
    assert (batch["labels"][1, len(ids) - 3:] == IGNORE_INDEX).all()


def test_masked_answer_fails_naming_the_sample(tiny, tmp_path):
    gen = TransformersGeneralist(str(tiny["model"]))
    rows = _rows(8, 0)
    (ids, _), = SampleEncoder(gen.processor, 128).encode_many([rows[0]])
    n_answer = len(SampleEncoder(gen.processor, 128).tokenizer("normal<|im_end|>\n")["input_ids"])
    n_prompt = len(ids) - n_answer
    # max_length exactly the prompt: the answer is truncated away entirely -> the run must not train on zero loss
    enc = SampleEncoder(gen.processor, max_length=n_prompt)
    with pytest.raises(AnswerMaskedError, match="sample tinycxr:000: answer is masked away") as e:
        enc.encode_many([rows[0]])
    assert e.value.sample_id == "tinycxr:000"
    # one token of room keeps one supervised token: not an error
    (_, labels), = SampleEncoder(gen.processor, n_prompt + 1).encode_many([rows[0]])
    assert sum(x != IGNORE_INDEX for x in labels) == 1
    # a planted long instruction in a Parquet corpus is found by the pre-training check, by sample id
    rows[5] = {**rows[5], "instruction": INSTRUCTION + " Consider also: " + "nodule, " * 40}
    data = _data(rows, tmp_path / "corpus")
    with pytest.raises(AnswerMaskedError, match="tinycxr:005"):
        SampleEncoder(gen.processor, max_length=n_prompt + 20).check_all(data, data.indices("train"))


def test_run_fails_before_training_on_a_masked_answer(tiny, tmp_path, monkeypatch):
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(k, v)
    rows = _rows(8, 0)
    rows[6] = {**rows[6], "instruction": INSTRUCTION + " Consider also: " + "nodule, " * 60}
    cfg = _config(tiny, tmp_path / "out", data_dir=str(_write_shards(rows, tmp_path / "corpus")),
                  tables_dir=str(tmp_path / "corpus" / "tables"), max_length=100)
    with pytest.raises(AnswerMaskedError, match="sample tinycxr:006: answer is masked away"):
        train(cfg)
    assert not (tmp_path / "out" / "loss.jsonl").exists()  # nothing trained, nothing written


def test_corpus_contract_rejects_bad_rows(tmp_path):
    rows = _rows(4, 0)
    rows[2] = {**rows[2], "answer": "  "}
    rows[3] = {**rows[3], "split": "test"}
    with pytest.raises(ContractError) as e:
        _data(rows, tmp_path / "c1")
    assert "tinycxr:002" in str(e.value) and "'answer'" in str(e.value) and "tinycxr:003" in str(e.value)
    good = {**{k: v for k, v in _rows(1, 0)[0].items() if k != "image"}, "image_sample_id": "tinycxr:000",
            "image_digest": "0" * 32}
    with pytest.raises(ContractError, match="sample tinycxr:000\\): field 'image_digest': expected a 32-digit"):
        validate_instructions(pl.DataFrame([{**good, "image_digest": "ABC"}]), "mem")
    with pytest.raises(FileNotFoundError, match="no instruction Parquet shards"):
        InstructionData(tmp_path / "empty", tmp_path / "c1" / "tables")
    # a corpus written before rows referred to their images (schema version 1, bytes inline) is refused, named
    (tmp_path / "v1").mkdir()
    pq.write_table(pa.Table.from_pylist([{**_rows(1, 0)[0]}]), tmp_path / "v1" / "part-00000.parquet")
    with pytest.raises(ContractError, match=r"part-00000.parquet: instructions shard lacks column\(s\) "
                                            r"\['image_sample_id', 'image_digest'\] \(it holds image bytes inline"):
        InstructionData(tmp_path / "v1", tmp_path / "c1" / "tables")


def test_image_references_resolve_from_the_samples_tables(tmp_path):
    """Each row's image comes from the samples table it names, byte for byte; a reference to a sample that is not
    there fails before training, and an image changed since the corpus was built fails when read, naming the row."""
    rows = _rows(8, 0)
    data = _data(rows, tmp_path / "c")
    assert [data.image(i) for i in range(len(data))] == [r["image"] for r in rows]
    assert len(data.images.files) == 1   # one samples shard, located once

    shards = tmp_path / "c" / "shards"
    t = pq.read_table(shards / "part-00000.parquet")
    ids = t.column("image_sample_id").to_pylist()
    ids[3] = "tinycxr:999"
    pq.write_table(t.set_column(1, "image_sample_id", pa.array(ids)), shards / "part-00000.parquet")
    with pytest.raises(ContractError, match=r"row 3 \(sample tinycxr:003\): field 'image_sample_id': expected a "
                                            r"sample of .*tinycxr/train, got 'tinycxr:999'"):
        InstructionData(shards, tmp_path / "c" / "tables")

    # the samples table re-ingested with another image for tinycxr:002: the old corpus no longer matches it
    changed = [dict(r) for r in rows]
    changed[2]["image"] = _png((1, 2, 3))
    _write_shards(changed, tmp_path / "d")
    stale = InstructionData(_write_shards(rows, tmp_path / "e"), tmp_path / "d" / "tables")
    assert stale.image(1) == rows[1]["image"]
    with pytest.raises(ContractError, match=r"sample tinycxr:002: its image at .*part-00000.parquet row 2 has digest "
                                            r"[0-9a-f]{32}, the corpus recorded [0-9a-f]{32}: the samples table "
                                            r"changed after the corpus was built"):
        stale.image(2)


def _launch(cfg: FinetuneConfig, path: Path) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(cfg.model_dump()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "recipes.finetune", "--config", str(path)]
    # cwd is not the repo: the recipe must find its imports and the config's paths
    return subprocess.run(cmd, cwd=path.parent, env=env, capture_output=True, text=True, timeout=300)


def _curve(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "loss.jsonl").read_text().splitlines() if ln]


def test_killed_run_resumes_lowers_loss_and_merges(tiny, tmp_path):
    out = tmp_path / "run"
    killed = _launch(_config(tiny, out, stop_after_steps=7), tmp_path / "run1.json")
    assert killed.returncode != 0, killed.stdout[-2000:] + killed.stderr[-3000:]
    assert read_marker(FinetuneFiles(out))["step"] == 4  # save_steps=4: steps 5..7 were lost with the process
    lost = _curve(out)
    assert [r["step"] for r in lost] == list(range(1, 8))
    assert not (out / "adapter").exists() and not FinetuneFiles(out).result.exists()

    done = _launch(_config(tiny, out), tmp_path / "run2.json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(FinetuneFiles(out).result.read_text())
    assert result["start_step"] == 4 and result["resumed_from_step"] == 4 and result["total_steps"] == 24
    curve = _curve(out)
    assert [r["step"] for r in curve] == list(range(1, 25))
    # the resumed run saw exactly the batches the killed one saw: the retrained steps reproduce its losses
    for a, b in zip(lost[4:7], curve[4:7]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    losses = [r["loss"] for r in curve]
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    assert curve[0]["lr"] == 0.0 and max(r["lr"] for r in curve) == pytest.approx(5e-3)  # warmup, then cosine
    assert curve[-1]["lr"] < 1e-3
    assert all(r["tokens"] > r["answer_tokens"] > 0 for r in curve)

    stats = check_adapter(out / "adapter")
    assert stats["lora_B_norm"] > 0 and stats["params"] == result["trainable_params"]
    assert result["merged"]["merged_max_abs_delta"] > 0
    payload = result_payload(FinetuneFiles(out))
    assert payload["metrics"]["final_loss"] == losses[-1]
    assert {"adapter", "merged", "loss_curve"} <= set(payload["artifacts"])
    assert len([h for h in payload["metric_history"] if h["key"] == "loss"]) == 24

    # the merged model reloads through the generalist loader, generates, and equals base + adapter
    from peft import PeftModel
    from transformers import InternVLForConditionalGeneration

    merged = TransformersGeneralist(str(out / "merged"), batch_size=4)
    rows = _rows()
    val = [r for r in rows if r["split"] == "val"][:4]
    answers = merged.generate([r["image"] for r in val], [r["instruction"] for r in val],
                              GenerationSettings(max_new_tokens=4))
    hits = sum(a == r["answer"] for a, r in zip(answers, val))
    assert hits >= 3, (answers, [r["answer"] for r in val])  # val images: colours seen in training
    inputs = merged.processor_inputs([r["image"] for r in val], [r["instruction"] for r in val])
    base = InternVLForConditionalGeneration.from_pretrained(str(tiny["model"])).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        peft_logits = PeftModel.from_pretrained(base, str(out / "adapter")).eval()(**inputs).logits
        merged_logits = merged.model(**inputs).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)
    shutil.rmtree(out / "checkpoints")


# Recorded with the code before corpus rows referred to their images (commit ea3d4e9, image bytes inline in the
# corpus), on the same inputs and by the same steps as the test below, on the 2-core CPU machine this repository is
# developed on: the rows the fine-tuning loader yields, in order (text and image bytes), and the per-step losses.
BEFORE_CONTENT = "b0758ee0e6e5ee4cbc8a16cd22b34d7a9ec8ec5301e4525a2bbc209f0d6ac8bd"
BEFORE_LOSSES = [9.122243881225586, 8.828700065612793, 8.484674453735352, 7.931819438934326, 7.590527534484863,
                 7.34913969039917]


def test_the_corpus_by_reference_trains_the_same_adapter_as_before(tiny_tables, tiny_generalist_dir, tmp_path):
    """The tiny corpus (every source kind: CLS/VQA/MRG rows, DES outputs, collaboration rows, 6 duplicates among
    them) built by reference feeds fine-tuning exactly the rows, images and order the inline corpus did, so six LoRA
    steps give the same losses."""
    import hashlib

    from data_contracts.io import read_samples
    from data_contracts.layout import CorpusFiles, SynthesisFiles
    from tasks.generalist.collaboration import collaboration_rows
    from tasks.generalist.corpus import assemble_corpus
    from tasks.generalist.stage import corpus_sources
    from tasks.generalist.synthesis import synthesize
    from tasks.ingest.tiny_benchmark import TINY_DATASETS
    from tests.test_synthesis import SETTINGS, EchoCase

    des = synthesize("des", read_samples(tiny_tables, "openi_cases", "train"), EchoCase(), SETTINGS,
                     SynthesisFiles(tmp_path / "synthesis" / "des"), batch_size=16)
    ham = read_samples(tiny_tables, "ham10000", "train").head(6)
    refs = {s: ["Melanoma"] for s in ham["sample_id"].to_list()}
    collaboration_rows(ham, refs, refs, ["MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo"], per_sample="rotate") \
        .write_parquet(tmp_path / "collab.parquet")
    res = assemble_corpus(corpus_sources(tiny_tables, list(TINY_DATASETS), in_domain_train=True),
                          {"des": (tmp_path / "synthesis" / "des", des.digest)}, CorpusFiles(tmp_path / "corpus"),
                          rows_per_shard=100, cls_prompt="evaluation",
                          extra={"collaboration": (tmp_path / "collab.parquet", "x")})
    assert (res.rows, res.duplicates_removed) == (496, 6)
    data = InstructionData(tmp_path / "corpus" / "shards", tiny_tables)
    h = hashlib.sha256()
    for i in range(len(data)):
        t = data.text(i)
        for c in ("sample_id", "instruction", "answer", "source_dataset", "task_kind", "split"):
            h.update(t[c].encode() + b"\0")
        h.update(hashlib.sha256(data.image(i)).digest())
    assert h.hexdigest() == BEFORE_CONTENT

    cfg = FinetuneConfig(model_path=str(tiny_generalist_dir), data_dir=str(tmp_path / "corpus" / "shards"),
                         tables_dir=str(tiny_tables), output_dir=str(tmp_path / "ft"),
                         deepspeed_config=str(REPO / "infra" / "deepspeed" / "zero3_cpu.json"), lora_r=8,
                         lora_alpha=16, lora_dropout=0.0, max_steps=6, per_device_batch_size=4,
                         gradient_accumulation_steps=1, learning_rate=5e-3, weight_decay=0.0, warmup_ratio=0.1,
                         max_length=1024, bf16=False, gradient_checkpointing=False, save_steps=100, seed=0,
                         eval_max_samples=4, merge=False)
    done = _launch(cfg, tmp_path / "run.json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [r["loss"] for r in _curve(tmp_path / "ft")] == pytest.approx(BEFORE_LOSSES, rel=1e-6)


def _processes_mentioning(text: str) -> list[int]:
    return [pid for pid, cmd in process_cmdlines().items() if text in cmd]


def test_killed_run_leaves_no_worker_behind_and_the_rerun_resumes_once(tiny, tmp_path):
    """kill -9 of the process that launched fine-tuning (a run) takes the launcher and its workers with it, frees the
    folder, and the rerun resumes from the last checkpoint: every step's loss is logged exactly once."""
    from data_contracts.files import folder_lock_holder

    out = tmp_path / "run"
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text(json.dumps(_config(tiny, out, max_steps=40, save_steps=4).model_dump()))
    # launched the way the generalist stage launches it: from a thread of the run's process
    code = ("import subprocess, sys, threading\n"
            "from pathlib import Path\n"
            "from tasks.generalist.stage import launch_command\n"
            "from tasks.processes import dying_with_this_process\n"
            f"cmd = dying_with_this_process(launch_command('torchrun', 0, Path({str(cfg_path)!r})))\n"
            "t = threading.Thread(target=subprocess.run, args=(cmd,))\n"
            "t.start(); t.join()\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    run = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None:
        if (out / "loss.jsonl").exists() and len(_curve(out)) >= 9:
            break
        time.sleep(0.1)
    assert run.poll() is None, "fine-tuning ended before it could be killed"
    assert len(_processes_mentioning(str(cfg_path))) >= 2   # the launcher and its worker
    run.kill()
    run.wait()
    deadline = time.time() + 30
    # a SIGKILLed process drops its memory (and with it its /proc cmdline) before its files: its flock goes a moment
    # after it stops being listed, so wait for both
    while time.time() < deadline and (_processes_mentioning(str(cfg_path))
                                      or folder_lock_holder(FinetuneFiles(out).run_lock) is not None):
        time.sleep(0.2)
    assert not _processes_mentioning(str(cfg_path)), "a fine-tuning process outlived the run that launched it"
    assert folder_lock_holder(FinetuneFiles(out).run_lock) is None
    killed_at = len(_curve(out))
    checkpoint = read_marker(FinetuneFiles(out))["step"]
    assert 4 <= checkpoint < 40 and killed_at < 40

    done = _launch(FinetuneConfig.model_validate_json(cfg_path.read_text()), tmp_path / "rerun.json")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(FinetuneFiles(out).result.read_text())
    assert result["resumed_from_step"] == checkpoint
    assert [r["step"] for r in _curve(out)] == list(range(1, 41))   # each step once: no second writer


def test_a_checkpoint_file_changed_after_it_was_written_is_not_unpickled(tiny, tmp_path):
    """DeepSpeed loads its checkpoints with torch.load(weights_only=False): a resume loads only the files whose
    digests the run's own marker recorded; a changed or added file is refused, named, before anything is loaded."""
    out = tmp_path / "run"
    killed = _launch(_config(tiny, out, max_steps=8, stop_after_steps=5), tmp_path / "run1.json")
    assert killed.returncode != 0
    marker = read_marker(FinetuneFiles(out))
    folder = out / "checkpoints" / marker["tag"]
    assert marker["step"] == 4 and marker["files"] and all(len(v) == 64 for v in marker["files"].values())
    victim = folder / sorted(marker["files"])[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    refused = _launch(_config(tiny, out, max_steps=8), tmp_path / "run2.json")
    assert refused.returncode != 0
    assert f"{victim}: changed since this run wrote it; refusing to unpickle it" in refused.stderr
    assert not (out / "adapter").exists()
