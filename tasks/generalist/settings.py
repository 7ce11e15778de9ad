"""The generalist side's typed settings: decoding, the base model, DGB/DES synthesis, the corpus, the LoRA recipe.

    GenerationSettings(max_new_tokens=24)                       # every field that changes an answer
    FinetuneRecipe()                                            # SPEC §5: the paper's LoRA recipe as defaults

Profile sections `generalist`, `synthesis`, `corpus` and `finetune` are these models (infra/profiles.py); pure
pydantic, so loading a profile imports no model library.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, StrictBool, model_validator

from tasks.ingest.settings import DatasetNames
from tasks.secrets import redact, url_credentials
from tasks.settings import Settings


class GenerationSettings(Settings):
    """Explicit decoding settings; part of every cache key, so every field that changes an answer is here."""
    max_new_tokens: PositiveInt = 256
    do_sample: StrictBool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    num_beams: PositiveInt = 1
    seed: int = 0


class TinyInternVLConfig(Settings):
    """The tiny profile's base model: the real InternVL architecture (InternViT + Qwen2) at toy sizes, random init.
    Every value comes from the profile (infra/profiles/tiny.yaml `generalist.tiny_model`)."""
    seed: int
    vocab_size: PositiveInt
    image_size: PositiveInt
    patch_size: PositiveInt
    vision_hidden_size: PositiveInt
    vision_layers: PositiveInt
    vision_heads: PositiveInt
    vision_intermediate_size: PositiveInt
    text_hidden_size: PositiveInt
    text_layers: PositiveInt
    text_heads: PositiveInt
    text_kv_heads: PositiveInt
    text_intermediate_size: PositiveInt
    max_position_embeddings: PositiveInt
    downsample_ratio: float = Field(gt=0, le=1)
    # the std of the random init (the tiny profile: 0.02; wider attention weights saturate at random positions and
    # LoRA never learns to look at the image tokens)
    initializer_range: float = Field(gt=0)
    # the output head's own std (null: initializer_range): at 0.02 a frozen random head of width 64 caps every logit
    # near 1, so no LoRA update could make any answer likely (fine-tuning would see a loss floor at ~ln(vocab))
    output_initializer_range: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _grid(self) -> "TinyInternVLConfig":
        grid, scale = self.image_size // self.patch_size, int(round(1 / self.downsample_ratio))
        if self.image_size % self.patch_size or grid % scale:
            raise ValueError(f"image_size/patch_size = {self.image_size}/{self.patch_size} must give a whole patch "
                             f"grid divisible by 1/downsample_ratio = {scale}")
        return self


class GeneralistSettings(Settings):
    """Where MedDr's base comes from and how it answers: local weights (transformers) or an OpenAI-compatible server."""
    backend: Literal["transformers", "openai"] = "transformers"
    model: str | None = None                  # hub id (local Hugging Face cache only) or folder; openai: served name
    tiny_model: TinyInternVLConfig | None = None   # model null: build this tiny model instead
    revision: str | None = None
    local_files_only: bool = True
    trust_remote_code: bool = False
    batch_size: PositiveInt = 8
    dtype: Literal["bfloat16", "float16", "float32"] | None = None
    # openai backend
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"    # the variable holding the key: the key itself is never in a profile
    timeout_s: float = Field(120.0, gt=0)
    max_retries: NonNegativeInt = 3
    concurrency: PositiveInt = 4
    model_revision: str = ""                  # what the endpoint serves, stated by the operator (part of the id)

    @model_validator(mode="after")
    def _source(self) -> "GeneralistSettings":
        if self.backend == "transformers" and self.model is None and self.tiny_model is None:
            raise ValueError("generalist: set `model` (hub id or folder) or `tiny_model` (the tiny profile's build)")
        if self.backend == "openai" and (not self.base_url or not self.model):
            raise ValueError("generalist: backend openai needs `base_url` and `model`")
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"generalist.base_url: expected an http(s) URL, got {redact(self.base_url)!r}")
        if self.base_url is not None and url_credentials(self.base_url):
            raise ValueError("generalist.base_url: a password in the URL is not accepted (it would be recorded with "
                             "the run); put the key in the environment variable named by generalist.api_key_env")
        return self


class SynthesisKindSettings(Settings):
    """One synthesis kind (DGB reports or DES descriptions): which rows it reads and how it decodes."""
    datasets: DatasetNames = None             # null: every eligible dataset ingested
    splits: list[Literal["train", "val", "test"]] = ["train"]
    batch_size: PositiveInt = 8
    generation: GenerationSettings = GenerationSettings()


class SynthesisSettings(Settings):
    dgb: SynthesisKindSettings | None = None  # null: the kind is not generated
    des: SynthesisKindSettings | None = None


class CollaborationSettings(Settings):
    """GSCo-format instructions in the corpus (off in the paper, whose GSCo is training-free): per training / val
    diagnosis sample, the Fig. A4 prompt with the specialists' predictions on that sample as MoED and the labels of
    its nearest *other* training cases as RAD, answered with the true label."""
    enabled: StrictBool = False
    arms: list[Literal["MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo"]] = Field(default_factory=lambda: ["GSCo"],
                                                                           min_length=1)
    rad_k: PositiveInt = 5
    paraphrase: int = Field(0, ge=0, le=3)
    # which diagnosis sets give rows: "corpus" = those whose CLS rows are in the corpus; "specialists" = every set a
    # specialist trained on (their train/val splits; the out-of-domain sets then are not out-of-domain for MedDr)
    datasets: Literal["corpus", "specialists"] = "corpus"
    # "all": one row per (sample, arm); "rotate": the plain "MedDr" arm (when listed) for every sample and one of the
    # reference arms in turn, so that the corpus is not mostly reference-copying rows
    per_sample: Literal["all", "rotate"] = "all"


class CorpusSettings(Settings):
    rows_per_shard: PositiveInt = 50_000
    export_internvl: bool = False             # also write InternVL's fine-tuning format (images/, jsonl, meta.json)
    # CLS rows' instruction: "paper" = Fig. A3's CLS template; "evaluation" = the Fig. A4 diagnosis prompt without
    # references, i.e. the form the MedDr arm is asked in at evaluation
    cls_prompt: Literal["paper", "evaluation"] = "paper"
    # in-domain benchmark sets with no training card of their own (ChestMNIST: its source ChestX-ray14 is the
    # training set) give their train/val splits as CLS rows, standing in for the source set a profile lacks
    in_domain_train: StrictBool = False
    collaboration: CollaborationSettings = CollaborationSettings()


class FinetuneRecipe(Settings):
    """One LoRA fine-tuning recipe. Defaults are SPEC §5 (paper + authors' train.sh): global batch 128."""
    lora_r: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    # short names (q, k, v, o, gate, up, down) or the language model's module names
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"],
                                           min_length=1)
    num_epochs: float = Field(2.0, gt=0)
    max_steps: PositiveInt | None = None      # overrides num_epochs when set
    per_device_batch_size: PositiveInt = 4
    gradient_accumulation_steps: PositiveInt = 2
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    max_length: PositiveInt = 2048
    bf16: bool = True
    gradient_checkpointing: bool = True
    save_steps: PositiveInt = 500
    save_total_limit: PositiveInt = 2
    seed: int = 0
    eval_max_samples: NonNegativeInt = 256    # val rows scored at the end (0: none)
    image_cache_row_groups: PositiveInt = 8   # Parquet row groups of images kept decoded in memory per rank
    trust_remote_code: bool = False
    local_files_only: bool = True
    merge: bool = True


class FinetuneSettings(FinetuneRecipe):
    """The profile's `finetune` section: the recipe plus how it is launched on this node."""
    launcher: Literal["deepspeed", "torchrun"] = "torchrun"
    num_gpus: NonNegativeInt = 0              # 0: one CPU process (gloo)
    deepspeed_config: str = "infra/deepspeed/zero3.json"   # relative paths resolve against the repository
    env: dict[str, str] = Field(default_factory=dict)      # extra environment of the launched processes

    def recipe(self) -> FinetuneRecipe:
        """The training recipe alone (what changes the trained adapter)."""
        return FinetuneRecipe(**self.model_dump(include=set(FinetuneRecipe.model_fields)))
