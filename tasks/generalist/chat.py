"""The InternVL chat format (SPEC §4): the image placeholder first, then a newline, then the instruction.

    text = chat_text(processor, "You are a helpful medical assistant. ...")          # generation prompt
    text = chat_text(processor, instruction, answer)                                   # a training conversation

Generation (tasks/generalist/backends.py) and fine-tuning (tasks/generalist/finetune/data.py) both render through
`chat_text`, so they see the same prompt tokens. A checkpoint's own chat template wins; ChatML (the format of
InternVL's Qwen2-based chat models) is used for the tiny model and for checkpoints that ship none.
"""
from __future__ import annotations

# ChatML, the format of InternVL's Qwen2-based chat models: user turn = image placeholder, newline, instruction.
# Used for the tiny model and for checkpoints that ship no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Named special tokens InternVLProcessor reads from its tokenizer (attribute name -> token).
INTERNVL_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                           "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
CHATML_TOKENS = {"pad": "<|endoftext|>", "bos": "<|im_start|>", "eos": "<|im_end|>"}


def chat_messages(instruction: str, answer: str | None = None) -> list[dict]:
    """The conversation for one sample: a user turn with the image first, then the instruction; optional answer."""
    msgs: list[dict] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def chat_text(processor, instruction: str, answer: str | None = None) -> str:
    """The chat-formatted text with one image placeholder; a generation prompt when `answer` is None.

    Uses the processor's own chat template when it has one (a real checkpoint's), else ChatML (SPEC §4 format).
    """
    template = getattr(processor, "chat_template", None) or CHATML_TEMPLATE
    return processor.apply_chat_template(chat_messages(instruction, answer), chat_template=template,
                                         add_generation_prompt=answer is None, tokenize=False)
