"""The offline text demo: a tiny causal LM and its tokenizer, built locally, and the shipped chat rows.

``python flows/sft_flow.py run --config_type text_sft --demo`` names no model and no dataset; then

- the model is ``DEMO_MODEL`` (``demo://tiny_chat_lm``): a 2-layer Llama-style decoder with random
  weights (seeded) and a byte-level BPE tokenizer trained with the ``tokenizers`` library on the shipped
  chat rows, wrapped as a ``PreTrainedTokenizerFast`` with a chat template. ``build_demo_model`` writes
  both with ``save_pretrained`` (safetensors) into one folder, so the trainer, the statistics step and
  the export load it exactly like a ``--pretrained`` Hugging Face model folder;
- the dataset is ``DEMO_DATASET`` (``demo://chat_demo``): ``data_adapters/demo_data/chat_demo.jsonl``,
  40 chat rows written for this project.

The folder is cached under ``$VLA_SFT_CACHE/demo_models/`` by a key of everything that shapes it (model
config, tokenizer settings, the rows' bytes, ``DEMO_BUILD_VERSION``) and written atomically, so every
step and node of a run, and every later run, reads the same files. No network is used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

DEMO_MODEL = "demo://tiny_chat_lm"
DEMO_DATASET = "demo://chat_demo"
DEMO_ROWS = Path(__file__).resolve().parents[2] / "data_adapters" / "demo_data" / "chat_demo.jsonl"
DEMO_BUILD_VERSION = 1  # bump when the build changes for the same inputs

SPECIAL_TOKENS = ("<pad>", "<bos>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")
# Each turn is "<|role|>\n content <|end|>\n"; the generation prompt is "<|assistant|>\n". Rendering the
# conversation up to a turn is a prefix of rendering all of it (steps.text.data locates answers that way).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
VOCAB_SIZE = 1024
MODEL_CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True}  # fmt: skip
SEED = 0


def is_demo_model(source: str | None) -> bool:
    return source == DEMO_MODEL


def resolve_model_source(source: str) -> str:
    """``source`` itself, or for ``DEMO_MODEL`` the local folder of the built demo model."""
    return str(build_demo_model()) if is_demo_model(source) else source


def resolve_dataset(source: str) -> str:
    """``source`` itself, or for ``DEMO_DATASET`` the shipped rows file."""
    return str(DEMO_ROWS) if source == DEMO_DATASET else source


def _build_key() -> str:
    shape = {"version": DEMO_BUILD_VERSION, "model": MODEL_CONFIG, "vocab_size": VOCAB_SIZE, "seed": SEED,
             "special": SPECIAL_TOKENS, "template": CHAT_TEMPLATE,
             "rows": hashlib.sha256(DEMO_ROWS.read_bytes()).hexdigest()}  # fmt: skip
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def build_demo_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """The demo model folder (config.json, model.safetensors, tokenizer files), built on first use."""
    from model_zoo.files import write_dir_atomically
    from steps.cache import default_cache_root

    root = Path(cache_dir or default_cache_root()) / "demo_models" / f"tiny_chat_lm-{_build_key()}"
    if (root / "config.json").is_file():
        return root
    # replace=False: a concurrent builder (another node's step) that finished first wrote the same folder.
    return write_dir_atomically(root, _write_demo_model, replace=False)


def build_demo_tokenizer():
    """A byte-level BPE tokenizer trained on the demo rows' text, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [json.loads(line) for line in DEMO_ROWS.read_text().splitlines() if line.strip()]
    texts = [m["content"] for row in rows for m in row["messages"]]
    tok = Tokenizer(models.BPE())
    # Byte level: any text encodes (no unknown token), not just the words of the demo rows.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    # eos = the end-of-turn token: generation stops where an answer ends.
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<|end|>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=MODEL_CONFIG["max_position_embeddings"])  # fmt: skip


def _write_demo_model(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_demo_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **MODEL_CONFIG)  # fmt: skip
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
