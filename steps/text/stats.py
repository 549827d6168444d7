"""The statistics step for text: token-length statistics of the training rows (no normalization).

``compute_text_stats`` tokenizes the training rows exactly as training will (chat template, answer
masking, truncation or the max-length error, packing) and writes ``{"text_stats": {...}, "metadata":
{...}}``: row and token counts, sequence / answer-token length mean, min, max, p50, p95. The flow logs
them to MLflow; the trainer keeps the file with every checkpoint and the export.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from steps.errors import UserError


def compute_text_stats(
    ct,
    dataset: str,
    rows_idx: Sequence[int] | None,
    *,
    out_path: str | os.PathLike,
    tokenizer: str | None = None,
    revision: str | None = None,
) -> dict:
    """Token-length statistics of ``rows_idx`` (None = all rows); written to ``out_path`` and returned."""
    from steps.text import data as text_data
    from steps.text.train_task import load_tokenizer

    source = tokenizer or ct.tokenizer or ct.model
    if not source:
        raise UserError(
            "tokenizer: no tokenizer or model given (pass --pretrained or set model in the config type)"
        )
    tok = load_tokenizer(source)
    rows = text_data.load_rows(dataset, revision=revision or ct.dataset_revision)
    examples = text_data.tokenize_rows(tok, rows, None if rows_idx is None else list(rows_idx),
                                       max_seq_len=ct.max_seq_len, truncation=ct.truncation, source=dataset)  # fmt: skip
    stats = text_data.token_length_stats(examples)
    if ct.packing:
        stats["packed_sequences"] = float(len(text_data.pack(examples, ct.max_seq_len)))
    data = {"text_stats": stats, "metadata": {"dataset": dataset, "tokenizer": source,
                                              "max_seq_len": ct.max_seq_len, "rows": len(examples)}}  # fmt: skip
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return data
