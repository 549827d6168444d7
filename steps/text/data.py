"""Text SFT data: rows from jsonl / parquet / the Hub, tokenized with the loss on the answer only.

Rows are either chat (``messages``: a list of ``{"role", "content"}``) or ``prompt`` / ``completion``.

- Chat rows are rendered with the tokenizer's chat template. Each assistant turn's span is found by
  rendering the conversation up to that turn with ``add_generation_prompt=True`` (where the answer
  starts) and including it (where it ends); the text is cut at those offsets and each piece tokenized on
  its own, so the labels are exactly the assistant tokens (-100 elsewhere).
- Prompt/completion rows: ``[bos] prompt`` masked, ``completion [eos]`` learned.
- Longer than ``max_seq_len``: cut when ``truncation`` is on, else an error naming the row.
- ``packing`` concatenates rows (in order) into sequences of at most ``max_seq_len`` tokens.

The train / validation split is a seeded permutation of row indices (``split_rows``); the trainer's
resumable sampler (``steps.train.data_loader``) draws from the tokenized examples by stream position.

A dataset that cannot be used as it is raises ``TextDatasetError`` (a user error: every step shows it as
"Dataset error" and one line naming the file, line or row, never a traceback); a tokenizer that cannot
render the rows raises ``UserError`` naming the tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steps.errors import UserError, one_line

IGNORE = -100
CHAT_FIELDS = ("messages",)
PROMPT_FIELDS = ("prompt", "completion")
_SUFFIXES = (".jsonl", ".json", ".parquet")


class TextDatasetError(UserError):
    """A text dataset that is not what it claims (the message names the file, line or row)."""

    headline = "Dataset error"


def locate(source: str, *, revision: str | None = None) -> tuple[Path, str | None]:
    """The dataset's local file or folder, and for a Hub dataset the commit it resolved to.

    A Hub id is downloaded (or found in the Hub cache) at ``revision``; the commit is the snapshot's
    folder name, so a branch or tag read once can be read again at exactly that commit.
    """
    path = Path(source).expanduser()
    if path.exists():
        return path, None
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise TextDatasetError(f"dataset: {source} does not exist (a local file/folder or a Hub id org/name)")
    from huggingface_hub import snapshot_download

    from steps.progress import hub_progress_class

    path = Path(snapshot_download(repo_id=source, repo_type="dataset", revision=revision,
                                  allow_patterns=["*.jsonl", "*.json", "*.parquet"],
                                  tqdm_class=hub_progress_class()))  # fmt: skip
    return path, path.name


def load_rows(source: str, *, revision: str | None = None, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a local .jsonl/.json/.parquet file or folder, or of a Hub dataset (its ``split`` files)."""
    return read_rows(locate(source, revision=revision)[0], source, split=split)


def read_rows(path: Path, source: str, *, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a located dataset (``source`` names it in errors)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES)
    if path.is_dir():
        named = [p for p in files if split in p.relative_to(path).as_posix()]
        files = named or files
    if not files:
        raise TextDatasetError(f"dataset: {source} has no .jsonl, .json or .parquet files")
    rows: list[dict[str, Any]] = []
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                rows += pq.read_table(file).to_pylist()
            except (pa.ArrowException, OSError) as err:  # cut short, not parquet at all, unreadable
                raise TextDatasetError(f"dataset: {file} cannot be read as parquet: {one_line(err)}") from err
        elif file.suffix == ".json":
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as err:
                raise TextDatasetError(f"dataset: {file} is not valid JSON: {err}") from None
            rows += data if isinstance(data, list) else [data]
        else:
            for n, line in enumerate(file.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise TextDatasetError(f"dataset: {file} line {n} is not valid JSON: {err}") from None
    if not rows:
        raise TextDatasetError(f"dataset: {source} has no rows")
    return rows


def row_format(rows: Sequence[dict], source: str = "dataset") -> str:
    """'chat' or 'prompt_completion', from the first row's fields (every row must have them)."""
    first = rows[0] if isinstance(rows[0], dict) else {}
    fmt = "chat" if "messages" in first else "prompt_completion"
    needed = CHAT_FIELDS if fmt == "chat" else PROMPT_FIELDS
    for i, row in enumerate(rows):
        missing = [f for f in needed if not isinstance(row, dict) or f not in row]
        if missing:
            have = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise TextDatasetError(
                f"dataset: {source} row {i} has no field(s) {missing}: expected 'messages' (chat) or "
                f"'prompt' and 'completion'; the row has {have}"
            )
    return fmt


def split_rows(num_rows: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) row indices; at least one training row, val empty when fraction is 0."""
    import numpy as np

    if num_rows < 1:
        raise TextDatasetError("dataset: no rows to split")
    n_val = min(int(round(num_rows * val_fraction)), num_rows - 1)
    if val_fraction > 0 and num_rows > 1:
        n_val = max(n_val, 1)
    perm = np.random.default_rng([seed, 9]).permutation(num_rows)
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)


def encode_chat(tokenizer, messages: Sequence[dict], *, row: int, source: str) -> Example:
    """Chat template rendering with labels only on assistant turns (exact, by text offsets)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"tokenizer: has no chat template, but {source} has chat rows ('messages'); use a tokenizer with "
            "a chat_template, or prompt/completion rows"
        )
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TextDatasetError(
                f"dataset: {source} row {row}: each message needs 'role' and 'content', got {m!r}"
            )
    full = _render(tokenizer, messages)
    cuts: list[tuple[int, int]] = []  # (start, end) character spans of assistant answers
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], add_generation_prompt=True)) if i else 0
        end_text = _render(tokenizer, messages[: i + 1])
        if not full.startswith(end_text):
            raise UserError(
                f"tokenizer: the chat template does not render {source} row {row} turn by turn as a prefix of the "
                "whole conversation, so the assistant tokens cannot be located"
            )
        cuts.append((start, len(end_text)))
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end in cuts:
        pre = _encode(tokenizer, full[pos:start])
        ans = _encode(tokenizer, full[start:end])
        ids += pre + ans
        labels += [IGNORE] * len(pre) + ans
        pos = end
    rest = _encode(tokenizer, full[pos:])
    return Example(ids + rest, labels + [IGNORE] * len(rest))


def encode_prompt_completion(tokenizer, prompt: str, completion: str) -> Example:
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    pre = bos + _encode(tokenizer, str(prompt))
    ans = _encode(tokenizer, str(completion)) + eos
    return Example(pre + ans, [IGNORE] * len(pre) + ans)


def tokenize_rows(
    tokenizer,
    rows: Sequence[dict],
    indices: Sequence[int] | None = None,
    *,
    max_seq_len: int,
    truncation: bool,
    source: str = "dataset",
) -> list[Example]:
    """Tokenize the chosen rows (all when ``indices`` is None); errors name the row."""
    fmt = row_format(rows, source)
    out = []
    for i in range(len(rows)) if indices is None else indices:
        row = rows[i]
        if fmt == "chat":
            ex = encode_chat(tokenizer, row["messages"], row=i, source=source)
        else:
            ex = encode_prompt_completion(tokenizer, row["prompt"], row["completion"])
        if len(ex.input_ids) > max_seq_len:
            if not truncation:
                raise TextDatasetError(
                    f"dataset: {source} row {i} has {len(ex.input_ids)} tokens, more than max_seq_len "
                    f"{max_seq_len}; raise max_seq_len or set truncation: true"
                )
            ex = Example(ex.input_ids[:max_seq_len], ex.labels[:max_seq_len])
        out.append(ex)
    return out


def pack(examples: Sequence[Example], max_seq_len: int) -> list[Example]:
    """Greedy in-order packing: rows are concatenated until the next one would not fit."""
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_seq_len:
            packed.append(Example(ids, labels))
            ids, labels = [], []
        ids, labels = ids + ex.input_ids, labels + ex.labels
    if ids:
        packed.append(Example(ids, labels))
    return packed


class TextCollator:
    """Right-pads a list of examples: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        import torch

        length = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            ids[b, :n] = torch.tensor(it["input_ids"])
            labels[b, :n] = torch.tensor(it["labels"])
            mask[b, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "position" in items[0]:
            out["position"] = torch.tensor([it["position"] for it in items])
        return out


def token_length_stats(examples: Sequence[Example]) -> dict[str, float]:
    """What the statistics step reports for text: sequence and answer-token lengths."""
    import numpy as np

    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.float64)
    answer = np.array([sum(1 for x in e.labels if x != IGNORE) for e in examples], dtype=np.float64)
    out = {"count": float(len(examples)), "tokens_total": float(lengths.sum()),
           "label_tokens_total": float(answer.sum())}  # fmt: skip
    for name, arr in (("seq_len", lengths), ("label_tokens", answer)):
        out.update({f"{name}_mean": float(arr.mean()), f"{name}_min": float(arr.min()),
                    f"{name}_max": float(arr.max()), f"{name}_p50": float(np.percentile(arr, 50)),
                    f"{name}_p95": float(np.percentile(arr, 95))})  # fmt: skip
    return out
