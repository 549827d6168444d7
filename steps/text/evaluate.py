"""Evaluate an exported text model: validation loss, perplexity and a few sampled completions.

Same loss as training's validation (summed next-token cross-entropy over answer tokens / their count),
so ``val_loss`` is comparable with ``val/loss``; ``perplexity = exp(val_loss)``. Completions are greedy
generations for the first held-out prompts, returned in ``details["completions"]`` and logged as an
MLflow table by ``log_completions``. Only the export folder is read. torch / transformers lazily.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from steps.errors import UserError

COMPLETIONS_TABLE = "eval/completions.json"


def prompt_and_reference(tokenizer, row: dict) -> tuple[str, str]:
    """The text a generation starts from and the answer it should give (the row's last answer)."""
    if "messages" in row:
        messages = list(row["messages"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        return prompt, str(messages[last]["content"])
    return (tokenizer.bos_token or "") + str(row["prompt"]), str(row["completion"])


def evaluate_text_export(
    export_dir: str | os.PathLike,
    dataset: str,
    rows: Sequence[int],
    *,
    revision: str | None = None,
    max_samples: int = 256,
    batch_size: int = 8,
    num_completions: int = 3,
    max_new_tokens: int = 32,
    device: str = "cpu",
    progress_every_s: float | None = None,
):
    """``progress_every_s``: a progress line at most this often (default 10 s, ``steps.progress``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steps.evaluate.export_eval import EvalResult
    from steps.progress import DEFAULT_EVERY_S, Progress
    from steps.text import data as text_data
    from steps.text.train_task import causal_lm_loss_sum
    from steps.train.data_loader import evenly_spaced

    started = time.perf_counter()
    export_dir = Path(export_dir)
    rows = [int(r) for r in rows]
    if not rows:
        raise UserError("rows: no held-out rows to evaluate on (raise val_fraction)")
    ct_dict = json.loads((export_dir / "config_type.json").read_text())
    max_len, truncation = int(ct_dict["max_seq_len"]), bool(ct_dict["truncation"])
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir, use_safetensors=True).to(device).eval()
    all_rows = text_data.load_rows(dataset, revision=revision)
    chosen = [rows[i] for i in evenly_spaced(len(rows), max_samples)]
    examples = text_data.tokenize_rows(tokenizer, all_rows, chosen, max_seq_len=max_len, truncation=truncation,
                                       source=dataset)  # fmt: skip
    collate = text_data.TextCollator(tokenizer.pad_token_id)
    total, count = 0.0, 0.0
    every = DEFAULT_EVERY_S if progress_every_s is None else progress_every_s
    progress = Progress("offline eval", len(examples), unit="rows", every_s=every)
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            items = [
                {"input_ids": e.input_ids, "labels": e.labels} for e in examples[start : start + batch_size]
            ]
            batch = {k: v.to(device) for k, v in collate(items).items()}
            loss, n = causal_lm_loss_sum(model, batch)
            total, count = total + float(loss), count + n
            progress.advance(len(items))
    val_loss = total / max(count, 1.0)
    progress.finish(f"val_loss {val_loss:.4f}")
    completions = []
    sampled = Progress("completions", len(chosen[:num_completions]), unit="rows", every_s=every)
    for r in chosen[:num_completions]:
        prompt, reference = prompt_and_reference(tokenizer, all_rows[r])
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        completions.append({"row": r, "prompt": prompt, "reference": reference, "completion": text})
        sampled.advance(1)
    metrics = {"val_loss": val_loss, "perplexity": math.exp(min(val_loss, 50.0)), "val_tokens": count,
               "val_samples": float(len(examples))}  # fmt: skip
    return EvalResult(metrics=metrics, num_samples=len(examples), episodes=chosen,
                      seconds=time.perf_counter() - started, details={"completions": completions})  # fmt: skip


def log_completions(tracking_uri: str, run_id: str, completions: list[dict]) -> None:
    """The sampled completions as an MLflow table artifact of the run."""
    import mlflow

    from steps.registry.tracking import configure_mlflow_env

    configure_mlflow_env()
    mlflow.set_tracking_uri(tracking_uri)
    columns = ("row", "prompt", "reference", "completion")
    mlflow.log_table({c: [x[c] for x in completions] for c in columns}, COMPLETIONS_TABLE, run_id=run_id)
