"""``TrainTask`` for supervised fine-tuning of a Hugging Face causal LM (see ``steps.train.task``).

What the ``TrainConfig`` fields mean for text:

- ``dataset_root``: the dataset (local .jsonl/.parquet file or folder, or a Hub dataset id);
- ``train_episodes`` / ``val_episodes``: row indices (``steps.text.data.split_rows``);
- ``norm_stats_path``: the token-length statistics JSON of ``steps.text.stats`` (kept with checkpoints);
- ``tokenizer_path``: a tokenizer folder or Hub id ("" = the model's own);
- ``pretrained``: the model (Hub id or local folder; default the config type's ``model``);
- ``lora``: rank / alpha / dropout; target modules come from the config type or the common LM names.

Weights load with ``use_safetensors=True`` and never with remote code. The loss is the summed
next-token cross-entropy over label tokens (answers only); the trainer divides by the label-token count
of the whole global batch, so accumulation and world size do not change the update.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

from steps.errors import UserError
from steps.text.data import TextDatasetError
from steps.train.config import TrainConfig

# Linear layers that get LoRA adapters when the config type names none (Llama/Qwen/Mistral/Gemma, GPT-2,
# GPT-NeoX/Falcon, OPT, Phi).
COMMON_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                       "c_attn", "c_proj", "c_fc", "query_key_value", "dense", "dense_h_to_4h",
                       "dense_4h_to_h", "out_proj", "fc1", "fc2", "Wqkv")  # fmt: skip
EXPORT_META = "vla_sft_export.json"
TEXT_STATS_FILE = "text_stats.json"


def model_source(cfg: TrainConfig, ct) -> str:
    from steps.text.demo import resolve_model_source

    source = cfg.pretrained or ct.model
    if not source:
        raise UserError("pretrained: no model given (the config type names none): pass a Hub id or folder")
    return resolve_model_source(source)  # the --demo model: its locally built folder


def tokenizer_source(cfg: TrainConfig, ct) -> str:
    return cfg.tokenizer_path or ct.tokenizer or model_source(cfg, ct)


def load_tokenizer(source: str, revision: str | None = None):
    from transformers import AutoTokenizer

    from steps.text.demo import resolve_model_source

    source = resolve_model_source(source)
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer_path: cannot load a tokenizer from {source}: {exc}") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def lora_targets(model, ct) -> list[str]:
    import torch

    if ct.lora_target_modules:
        return list(ct.lora_target_modules)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    found = sorted(names & set(COMMON_LORA_TARGETS))
    if not found:
        raise UserError(f"lora: none of the usual projection names {COMMON_LORA_TARGETS} are in this model's "
                         f"linear layers {sorted(names)[:20]}; set lora_target_modules in the config type")  # fmt: skip
    return found


class TextTask:
    """A causal LM on chat or prompt/completion rows, loss on the answers."""

    def __init__(self, cfg: TrainConfig, ct) -> None:
        self.cfg, self.ct = cfg, ct
        self.tokenizer = None
        self.train_examples = self.val_examples = None

    # --- inputs and data ------------------------------------------------------------------------
    def check_inputs(self) -> None:
        from steps.text import data as text_data

        cfg, ct = self.cfg, self.ct
        source = model_source(cfg, ct)
        if not Path(cfg.norm_stats_path).is_file():
            raise ValueError(
                f"norm_stats_path: {cfg.norm_stats_path} does not exist (run steps.text.stats first)"
            )
        self.tokenizer = load_tokenizer(
            tokenizer_source(cfg, ct), ct.model_revision if not cfg.tokenizer_path else None
        )
        if Path(source).exists() and not (Path(source) / "config.json").is_file():
            raise UserError(f"pretrained: {source} is not a Hugging Face model folder (no config.json)")
        rows = text_data.load_rows(cfg.dataset_root, revision=cfg.dataset_revision or ct.dataset_revision)
        n = len(rows)
        for name, indices in (
            ("train_episodes", cfg.train_episodes or ()),
            ("val_episodes", cfg.val_episodes),
        ):
            bad = [i for i in indices if not 0 <= i < n]
            if bad:
                raise TextDatasetError(f"{name}: row indices {bad[:5]} are outside the dataset's {n} rows")
        train_rows = list(range(n)) if cfg.train_episodes is None else list(cfg.train_episodes)

        def encode(indices):
            examples = text_data.tokenize_rows(self.tokenizer, rows, indices, max_seq_len=ct.max_seq_len,
                                               truncation=ct.truncation, source=cfg.dataset_root)  # fmt: skip
            return text_data.pack(examples, ct.max_seq_len) if ct.packing else examples

        self.train_examples = encode(train_rows)
        self.val_examples = encode(list(cfg.val_episodes)) if cfg.val_episodes and cfg.val_every else []

    def build_loaders(self, *, ctx, start_position: int, pin_memory: bool):
        import torch

        from steps.text.data import TextCollator
        from steps.train.data_loader import Loaders, ResumableSampler, evenly_spaced

        cfg = self.cfg
        collate = TextCollator(self.tokenizer.pad_token_id)
        train_set = _TrainStream(self.train_examples, cfg.seed)
        sampler = ResumableSampler(global_batch=cfg.global_batch, world_size=ctx.world_size, rank=ctx.rank,
                                   start_position=start_position)  # fmt: skip
        common = dict(num_workers=0, collate_fn=collate, pin_memory=pin_memory)  # tokenized in memory
        train = torch.utils.data.DataLoader(train_set, batch_size=cfg.micro_batch, sampler=sampler, **common)
        val = None
        if self.val_examples:
            chosen = evenly_spaced(len(self.val_examples), cfg.val_samples)
            # Every rank runs as many batches (FSDP's forward is collective).
            chosen = chosen[: len(chosen) // ctx.world_size * ctx.world_size] or chosen[:1] * ctx.world_size
            items = [_item(self.val_examples[i], i) for i in chosen[ctx.rank :: ctx.world_size]]
            val = torch.utils.data.DataLoader(items, batch_size=cfg.micro_batch, shuffle=False, **common)
        return Loaders(train=train, val=val, num_train_frames=len(self.train_examples),
                       num_val_frames=len(self.val_examples))  # fmt: skip

    # --- model ----------------------------------------------------------------------------------
    def build_model(self, precision: str, *, load_weights: bool = True):
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg, ct = self.cfg, self.ct
        source = model_source(cfg, ct)
        revision = cfg.pretrained_revision if cfg.pretrained else ct.model_revision
        try:
            if load_weights:
                model = AutoModelForCausalLM.from_pretrained(source, revision=revision, use_safetensors=True,
                                                             trust_remote_code=False, dtype="float32")  # fmt: skip
            else:  # the FSDP export path: the trained weights are loaded into it afterwards
                config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
                model = AutoModelForCausalLM.from_config(config, dtype="float32")
        except (OSError, ValueError) as exc:
            raise ValueError(f"pretrained: cannot load a safetensors causal LM from {source}: {exc}") from exc
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if cfg.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = cfg.lora
            settings = LoraConfig(r=lora.rank, lora_alpha=lora.alpha or lora.rank, lora_dropout=lora.dropout,
                                  target_modules=lora_targets(model, ct), task_type="CAUSAL_LM")  # fmt: skip
            with warnings.catch_warnings():
                # peft reads transformers' deprecated `is_gradient_checkpointing` (transformers 5 warns on every
                # LoRA run); peft's to fix, nothing a user can act on.
                warnings.filterwarnings(
                    "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
                )
                model = get_peft_model(model, settings)
        model.train()
        return model

    def build_model_for_weights(self, precision: str):
        # A real (randomly initialised) model: Hugging Face models keep non-persistent buffers (rotary
        # frequencies) that a state dict does not restore, so a meta-device build would leave them empty.
        return self.build_model(precision, load_weights=False)

    def shard_units(self, model):
        """The decoder blocks: children of the outermost ModuleLists (``model.layers``, ``transformer.h``)."""
        import torch

        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
        outer = [m for n, m in lists if not any(n.startswith(f"{o}.") for o, _ in lists if o != n)]
        return [block for m in outer for block in m]

    # --- loss -----------------------------------------------------------------------------------
    def static_count(self) -> float | None:
        return None  # the number of answer tokens varies per batch

    def count(self, batch) -> float:
        return float((batch["labels"][:, 1:] != -100).sum())

    def loss_sum(self, module, batch):
        bf16 = self.cfg.precision == "bf16" or (
            self.cfg.precision == "auto" and batch["input_ids"].device.type == "cuda"
        )
        return causal_lm_loss_sum(module, batch, bf16=bf16)

    def flops_per_sample(self, model) -> float:
        n = sum(p.numel() for p in model.parameters())
        return 6.0 * n * self.ct.max_seq_len

    # --- export ---------------------------------------------------------------------------------
    def write_export(self, model, export_dir, *, step: int, source: str, ema_weights):
        """``save_pretrained`` folder (safetensors, LoRA merged) + tokenizer + configs, renamed into place."""

        cfg = self.cfg
        from model_zoo.files import write_dir_atomically
        from steps.train.ema import copy_weights_into

        def write(folder: Path) -> None:
            nonlocal model
            copy_weights_into(model, ema_weights)
            lora = hasattr(model, "peft_config")
            if lora:
                model.save_pretrained(folder / "adapter", safe_serialization=True)
                model = model.merge_and_unload()
            model.config.use_cache = True
            model.save_pretrained(folder, safe_serialization=True)
            self.tokenizer.save_pretrained(folder)
            shutil.copyfile(cfg.norm_stats_path, folder / TEXT_STATS_FILE)
            cfg.to_json(folder / "train_config.json")
            (folder / "config_type.json").write_text(json.dumps(self.ct.to_dict(), indent=2) + "\n")
            meta = {"format": "vla-sft export v1", "kind": "text", "config_type": self.ct.name,
                    "model_type": "causal_lm", "base_model": cfg.pretrained or self.ct.model, "step": step,
                    "weights_from": source, "ema": ema_weights is not None, "finetune": "lora" if lora else "full",
                    "adapter": "adapter" if lora else None, "text_stats": TEXT_STATS_FILE}  # fmt: skip
            (folder / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

        return write_dir_atomically(export_dir, write)


def causal_lm_loss_sum(module, batch: dict, *, bf16: bool = False):
    """(summed next-token cross-entropy over label tokens, their count) for one padded batch."""
    import contextlib

    import torch
    import torch.nn.functional as F

    batch.pop("position", None)
    ids = batch["input_ids"]
    autocast = torch.autocast(ids.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with autocast:
        logits = module(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]  # position i predicts token i + 1
    logits = logits[:, :-1].float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")  # fmt: skip
    return loss, float((labels != -100).sum())


def _item(example, position: int) -> dict:
    return {"input_ids": example.input_ids, "labels": example.labels, "position": position}


class _TrainStream:
    """Global stream position -> a training example (a fresh seeded permutation per epoch)."""

    def __init__(self, examples, seed: int) -> None:
        from steps.train.data_loader import ShuffledStream

        self.examples = examples
        self.stream = ShuffledStream(len(examples), seed)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, position: int) -> dict:
        return _item(self.examples[self.stream.index(position)], position)
