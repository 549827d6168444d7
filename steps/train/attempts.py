"""Retries of the ``train`` step: a pause before each retry, and no retry for an error a retry cannot fix.

Metaflow's ``@retry`` retries any failure, and waits ``minutes_between_retries`` only on remote schedulers.
So each failed attempt records what happened next to the lineage's checkpoints
(``<checkpoint_dir>/train_attempts/attempt-<n>.json``, local or S3, where every node and every later
attempt can read it), and each retry first reads the previous attempt's record:

- an error a retry cannot fix (bad input, a corrupt dataset, a bad checkpoint file, a config error:
  ``steps.errors.is_user_error``) fails the retry at once with the same one-line message, before any
  training starts (local runs do not even start the retry: the step exits with Metaflow's no-retry code);
- anything else (a killed or preempted node, a tracking or storage outage) is retried after
  ``retry_backoff_s`` seconds (cluster Config): slept here in local runs, waited by the scheduler remotely.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

RECORDS = "train_attempts"


def _location(checkpoint_dir: str, attempt: int) -> str:
    return f"{checkpoint_dir.rstrip('/')}/{RECORDS}/attempt-{attempt}.json"


def record_failure(
    checkpoint_dir: str, attempt: int, *, retryable: bool, headline: str, message: str
) -> None:
    """Write attempt ``attempt``'s failure (atomically; a record that cannot be written is only reported)."""
    body = json.dumps({"attempt": attempt, "retryable": retryable, "headline": headline, "message": message})
    uri = _location(checkpoint_dir, attempt)
    try:
        if uri.startswith("s3://"):
            from steps.fetch.s3 import parse_s3_uri, s3_client

            bucket, key = parse_s3_uri(uri, "checkpoint_dir")
            s3_client(attempts=2).put_object(Bucket=bucket, Key=key, Body=body.encode())
        else:
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(body + "\n")
            os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - the failure being recorded is what matters
        print(f"could not record the failure of train attempt {attempt} at {uri}: {exc}", file=sys.stderr)


def read_failure(checkpoint_dir: str, attempt: int) -> dict | None:
    """The record of attempt ``attempt``, or None (none written, or unreadable)."""
    uri = _location(checkpoint_dir, attempt)
    try:
        if uri.startswith("s3://"):
            from steps.fetch.s3 import parse_s3_uri, s3_client

            bucket, key = parse_s3_uri(uri, "checkpoint_dir")
            text = s3_client(attempts=2).get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        else:
            text = Path(uri).read_text()
        record = json.loads(text)
        return record if isinstance(record, dict) else None
    except Exception:  # noqa: BLE001 - no record: the previous attempt died without writing one (a kill)
        return None


class NotRetried(RuntimeError):
    """The previous attempt failed with an error a retry cannot fix; this attempt stops before training."""

    def __init__(self, headline: str, message: str) -> None:
        super().__init__(message)
        self.headline = headline


def before_attempt(
    checkpoint_dir: str, attempt: int, *, backoff_s: float, remote: bool, sleep=time.sleep
) -> None:
    """Run at the start of every ``train`` attempt: raise NotRetried after a deterministic failure; pause
    ``backoff_s`` before a retry in a local run (the scheduler has waited already in a remote one)."""
    if attempt == 0:
        return
    previous = read_failure(checkpoint_dir, attempt - 1)
    if previous is not None and not previous.get("retryable", True):
        raise NotRetried(previous.get("headline") or "Error", previous.get("message") or "")
    if not remote and backoff_s > 0:
        print(f"train attempt {attempt + 1}: waiting {backoff_s:g} s before retrying (cluster retry_backoff_s)",
              file=sys.stderr, flush=True)  # fmt: skip
        sleep(backoff_s)
