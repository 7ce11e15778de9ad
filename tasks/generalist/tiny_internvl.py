"""The tiny profile's base model: the real InternVL architecture (InternViT + Qwen2) at toy sizes, random-initialised,
with a byte-level BPE tokenizer trained offline on the benchmark's own texts.

    build_tiny_internvl(Path("outputs/tiny/models/generalist-base"), texts, profile.generalist.tiny_model)

Nothing is downloaded: transformers builds `InternVLForConditionalGeneration` from sub-configs (SPEC §5). The folder
reloads through `TransformersGeneralist` like any checkpoint. Same texts and config give byte-identical files.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_contracts.files import swap_in, temporary_sibling
from tasks.generalist.chat import CHATML_TEMPLATE, CHATML_TOKENS, INTERNVL_SPECIAL_TOKENS
from tasks.generalist.settings import TinyInternVLConfig


def build_tiny_internvl(out_dir: str | Path, corpus_texts: list[str], config: TinyInternVLConfig) -> Path:
    """The folder of a saved random-initialised InternVL model + processor, reloadable by `TransformersGeneralist`.

    Vision: InternVLVisionConfig at `image_size` px with `patch_size` patches; language model: Qwen2Config; tokenizer:
    byte-level BPE trained on `corpus_texts` plus ChatML and InternVL image tokens. Same texts, config and seed give
    byte-identical files. Written to a folder beside `out_dir` and swapped into place.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, GotOcr2ImageProcessor, InternVLConfig,
                              InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor,
                              InternVLVisionConfig, PreTrainedTokenizerFast, Qwen2Config)

    cfg = config.model_dump()
    texts = [t for t in corpus_texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("build_tiny_internvl: corpus_texts must hold at least one non-empty text for the tokenizer")
    image_seq_length = (cfg["image_size"] // cfg["patch_size"] // int(round(1 / cfg["downsample_ratio"]))) ** 2

    specials = [CHATML_TOKENS["pad"], CHATML_TOKENS["bos"], CHATML_TOKENS["eos"], *INTERNVL_SPECIAL_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"], special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=CHATML_TOKENS["pad"], eos_token=CHATML_TOKENS["eos"],
        extra_special_tokens=dict(INTERNVL_SPECIAL_TOKENS), padding_side="left")
    size = {"height": cfg["image_size"], "width": cfg["image_size"]}
    processor = InternVLProcessor(image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
                                  video_processor=InternVLVideoProcessor(size=size), tokenizer=tokenizer,
                                  image_seq_length=image_seq_length, chat_template=CHATML_TEMPLATE)

    vision = InternVLVisionConfig(hidden_size=cfg["vision_hidden_size"], num_hidden_layers=cfg["vision_layers"],
                                  num_attention_heads=cfg["vision_heads"],
                                  intermediate_size=cfg["vision_intermediate_size"], image_size=cfg["image_size"],
                                  patch_size=cfg["patch_size"])
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg["text_hidden_size"],
                       num_hidden_layers=cfg["text_layers"], num_attention_heads=cfg["text_heads"],
                       num_key_value_heads=cfg["text_kv_heads"], intermediate_size=cfg["text_intermediate_size"],
                       max_position_embeddings=cfg["max_position_embeddings"], tie_word_embeddings=False,
                       initializer_range=cfg["initializer_range"],
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.convert_tokens_to_ids(CHATML_TOKENS["bos"]))
    model_config = InternVLConfig(vision_config=vision, text_config=text,
                                  image_token_id=tokenizer.context_image_token_id, image_seq_length=image_seq_length,
                                  downsample_ratio=cfg["downsample_ratio"], tie_word_embeddings=False)
    torch.manual_seed(cfg["seed"])
    model = InternVLForConditionalGeneration(model_config).eval()
    if cfg.get("output_initializer_range") is not None:
        with torch.no_grad():
            model.lm_head.weight.normal_(0.0, cfg["output_initializer_range"])
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    out = Path(out_dir)
    tmp = temporary_sibling(out)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "gsco_tiny.json").write_text(json.dumps({"builder": "build_tiny_internvl", "config": cfg,
                                                        "corpus_texts": len(texts)}, indent=2, sort_keys=True))
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
