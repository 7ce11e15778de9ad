"""The fine-tuning data path: instruction rows (data_contracts/instructions.py) -> chat-formatted token ids with the
loss on answer tokens only -> deterministic micro-batches.

Text columns are held in memory (Arrow); a row's image is resolved from the samples tables it refers to, read one
Parquet row group at a time with a few row groups cached. Every training sample's answer is checked to survive
tokenisation and truncation before any model loads: a sample whose answer is masked away entirely fails the run,
naming it (InternVL's "tokenization mismatch" trap trains such samples on zero loss).
"""
from __future__ import annotations

from pathlib import Path

from data_contracts.errors import ContractError

IGNORE_INDEX = -100


class AnswerMaskedError(ContractError):
    """A training sample would contribute no answer token to the loss (truncated away or not tokenised)."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id}: answer is masked away entirely ({reason}); it would train on zero "
                         "loss. Raise max_length, shorten the instruction, or drop the sample from the corpus.")
        self.sample_id = sample_id


class InstructionData:
    """The instruction rows of every Parquet shard under `data_dir`: text columns in memory, images on demand from
    the samples tables under `tables_dir` (data_contracts/image_refs.py).

    Each row's image reference is located once, up front (an unresolved one fails before any model loads); images
    are read one samples row group at a time and a few row groups are cached, so memory holds the text of the corpus
    and two ints per row, not its images. Every image read is checked against the row's content digest.
    """

    def __init__(self, data_dir: str | Path, tables_dir: str | Path, cache_row_groups: int = 8):
        import polars as pl
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from data_contracts.image_refs import SampleImages
        from data_contracts.instructions import COLUMNS, INSTRUCTIONS_SCHEMA, validate_instructions

        root = Path(data_dir)
        self.files = sorted(p for p in root.rglob("*.parquet")
                            if not any(s.startswith(".") for s in p.relative_to(root).parts))
        if not self.files:
            raise FileNotFoundError(f"{root}: no instruction Parquet shards (*.parquet) found")
        tables = []
        for f in self.files:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise ContractError(f"{f}: instructions shard lacks column(s) {missing}"
                                    + (" (it holds image bytes inline: a corpus of schema version 1; rebuild it)"
                                       if "image" in names else ""))
            for c in COLUMNS:
                want, got = INSTRUCTIONS_SCHEMA.field(c).type, pf.schema_arrow.field(c).type
                if not (got == want or (pa.types.is_large_string(got) and pa.types.is_string(want))
                        or (pa.types.is_string_view(got) and pa.types.is_string(want))):
                    raise ContractError(f"{f}: column '{c}' has type {got}, expected {want}")
            t = pf.read(columns=list(COLUMNS)).cast(INSTRUCTIONS_SCHEMA)
            validate_instructions(pl.from_arrow(t), str(f))
            tables.append(t)
        self.table = pa.concat_tables(tables).combine_chunks()
        ids = self.table.column("sample_id")
        if pc.count_distinct(ids).as_py() != self.table.num_rows:
            import collections

            dup = [k for k, n in collections.Counter(ids.to_pylist()).items() if n > 1][:5]
            raise ContractError(f"{root}: duplicate sample_id across shards: {dup}")
        self.images = SampleImages(tables_dir, cache_row_groups)
        self._file, self._row = self.images.locate(
            pl.from_arrow(self.table.select(["sample_id", "source_dataset", "split", "image_sample_id"])), str(root))

    def __len__(self) -> int:
        return self.table.num_rows

    def indices(self, split: str) -> list[int]:
        """Row numbers of `split`, in file order."""
        return [i for i, s in enumerate(self.table.column("split").to_pylist()) if s == split]

    def text(self, i: int) -> dict:
        """sample_id, instruction, answer, source_dataset, task_kind, split (and the image reference) of row `i`."""
        return {c: self.table.column(c)[i].as_py() for c in self.table.column_names}

    def image(self, i: int) -> bytes:
        """The encoded image of row `i`, read from the samples tables; a digest mismatch fails, naming the row."""
        from data_contracts.instructions import image_digest

        data = self.images.read(int(self._file[i]), int(self._row[i]))
        want = self.table.column("image_digest")[i].as_py()
        if image_digest(data) != want:
            raise ContractError(f"sample {self.table.column('sample_id')[i].as_py()}: its image at "
                                f"{self.images.where(int(self._file[i]), int(self._row[i]))} has digest "
                                f"{image_digest(data)}, the corpus recorded {want}: the samples table changed after "
                                "the corpus was built; rebuild the corpus")
        return data


class SampleEncoder:
    """Token ids and labels of one (instruction, answer) pair in the model's chat format, image tokens expanded.

    The prompt is the chat template's generation prompt (what the model sees at inference), the answer part is the
    rest of the rendered conversation (answer + end-of-turn). Their ids are concatenated, never re-tokenised
    together, so the supervised span is exactly the answer whatever the tokenizer does at the boundary.
    """

    def __init__(self, processor, max_length: int):
        from tasks.generalist.chat import chat_text

        for attr in ("start_image_token", "end_image_token", "image_token", "image_seq_length"):
            if not hasattr(processor, attr):
                raise ValueError(f"{type(processor).__name__} lacks `{attr}`: fine-tuning supports InternVL-family "
                                 "processors (transformers InternVLProcessor)")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self._chat_text = chat_text
        # One 448x448 tile per image (paper): a fixed number of image tokens per sample.
        self.image_tokens = (processor.start_image_token + processor.image_token * processor.image_seq_length
                             + processor.end_image_token)

    def texts(self, instruction: str, answer: str, sample_id: str) -> tuple[str, str]:
        """(prompt text with image tokens expanded, answer text incl. end-of-turn)."""
        prompt = self._chat_text(self.processor, instruction)
        full = self._chat_text(self.processor, instruction, answer)
        if not full.startswith(prompt):
            raise AnswerMaskedError(sample_id, "the chat template renders the conversation with a different prefix "
                                               "than the generation prompt, so prompt and answer cannot be split")
        if self.processor.image_token not in prompt:
            raise ValueError(f"sample {sample_id}: the chat prompt has no image placeholder")
        return prompt.replace(self.processor.image_token, self.image_tokens, 1), full[len(prompt):]

    def encode_many(self, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) per row; raises AnswerMaskedError naming the first row with no supervised token."""
        pairs = [self.texts(r["instruction"], r["answer"], r["sample_id"]) for r in rows]
        p_ids = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        a_ids = self.tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
        out = []
        for r, (_, answer_text), pi, ai in zip(rows, pairs, p_ids, a_ids):
            if not ai:
                raise AnswerMaskedError(r["sample_id"], f"the answer {answer_text!r} tokenises to nothing")
            if len(pi) >= self.max_length:
                raise AnswerMaskedError(r["sample_id"], f"the prompt alone is {len(pi)} tokens (incl. "
                                        f"{self.processor.image_seq_length} image tokens) >= max_length "
                                        f"{self.max_length}: the whole answer is truncated away")
            ids = (pi + ai)[:self.max_length]
            labels = ([IGNORE_INDEX] * len(pi) + ai)[:self.max_length]
            out.append((ids, labels))
        return out

    def check_all(self, data: InstructionData, indices: list[int], chunk: int = 1024) -> dict:
        """Encode every row of `indices` (text only); raises on the first masked answer. Returns token statistics."""
        n_tok = n_ans = truncated = 0
        longest = 0
        for start in range(0, len(indices), chunk):
            rows = [data.text(i) for i in indices[start:start + chunk]]
            for ids, labels in self.encode_many(rows):
                n_tok += len(ids)
                n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
                n_ans += n_sup
                longest = max(longest, len(ids))
                if len(ids) == self.max_length:
                    truncated += 1
        return {"samples": len(indices), "tokens": n_tok, "answer_tokens": n_ans, "longest": longest,
                "truncated_samples": truncated}


def collate(encoded: list[tuple[list[int], list[int]]], pixel_values, pad_id: int) -> dict:
    """A right-padded micro-batch: input_ids, attention_mask, labels (-100 on prompt and padding), pixel_values."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, (ids, lab) in enumerate(encoded):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(lab)] = torch.tensor(lab)
        attention[b, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}


class Batches:
    """Deterministic micro-batches: batch (step, micro, rank) depends only on the seed, so a resumed run continues
    with exactly the samples the killed run would have seen next."""

    def __init__(self, n_rows: int, per_device: int, accumulation: int, world: int, seed: int):
        self.n, self.per_device, self.accum, self.world, self.seed = n_rows, per_device, accumulation, world, seed
        self.rows_per_step = per_device * accumulation * world
        self.steps_per_epoch = n_rows // self.rows_per_step  # the incomplete tail of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n_rows} training rows are fewer than one optimizer step needs "
                             f"({per_device} per device x {accumulation} accumulation x {world} ranks)")
        self._perm: tuple[int, list[int]] | None = None

    def rows(self, step: int, micro: int, rank: int) -> list[int]:
        """Positions (into the training index list) of one rank's micro-batch."""
        import numpy as np

        epoch, j = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.n).tolist())
        base = (j * self.accum + micro) * self.world * self.per_device + rank * self.per_device
        return self._perm[1][base:base + self.per_device]


def pixel_values_for(processor, images: list[bytes], sample_ids: list[str]):
    """The single-tile pixel values of a micro-batch's images, shape (B, 3, H, W)."""
    from tasks.generalist.backends import decode_image

    pil = [decode_image(b, f"sample {sid}: image") for b, sid in zip(images, sample_ids)]
    return processor.image_processor(pil, crop_to_patches=False, return_tensors="pt")["pixel_values"]
