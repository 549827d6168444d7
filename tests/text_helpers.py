"""Offline text-SFT assets: a tiny word-level tokenizer with a chat template, a tiny random Llama, chat rows."""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
WORDS = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rock"]


def chat_rows(n: int = 24) -> list[dict]:
    """``repeat X`` -> ``X X``: learnable in a few steps; every third row has a system turn and two rounds."""
    rows = []
    for i in range(n):
        w, v = WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
        messages = [{"role": "user", "content": f"repeat {w}"}, {"role": "assistant", "content": f"{w} {w}"}]
        if i % 3 == 0:
            messages = [{"role": "system", "content": "be brief"}, *messages,
                        {"role": "user", "content": f"repeat {v}"}, {"role": "assistant", "content": f"{v} {v}"}]  # fmt: skip
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL, "repeat", "be", "brief", "say", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    kwargs = {"chat_template": chat_template} if chat_template else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                   eos_token="<eos>", **kwargs)  # fmt: skip


def make_model_folder(folder: Path, *, chat_template: str | None = CHAT_TEMPLATE) -> Path:
    """A tiny random LlamaForCausalLM + tokenizer saved as safetensors (what a Hub model folder holds)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(chat_template)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_text_yaml(path: Path, *, model: Path, dataset: Path, **extra) -> Path:
    import yaml

    data = {"kind": "text", "name": path.stem, "model": str(model), "dataset": str(dataset), "max_seq_len": 48,
            "val_fraction": 0.25, **extra}  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    return path
