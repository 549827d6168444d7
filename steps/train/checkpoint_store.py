"""Where checkpoints live: a local folder or an S3 prefix, with atomic commit and retention.

Atomicity: locally every file goes into ``.tmp-step_...`` next to the final folder, which is renamed
with ``os.replace`` once ``COMPLETE`` is in it (a rename is atomic on one filesystem). S3 objects cannot be
renamed, so files are uploaded under the final prefix and the ``COMPLETE`` object is put last; on
delete the marker goes first. A run killed halfway leaves a folder/prefix without a marker, which
``complete_steps`` ignores and ``clean_incomplete`` removes.

Retention: the last ``keep_last`` complete checkpoints plus the one with the lowest validation loss
recorded in its ``trainer_state.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

COMPLETE = "COMPLETE"
STEP_DIR_RE = re.compile(r"^step_(\d{9})$")
# Called with each file name once it is durably written/uploaded (fault injection in tests).
FileHook = Callable[[str], None]


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


# ---------------------------------------------------------------------------------------------
# Stores: where checkpoints live
# ---------------------------------------------------------------------------------------------


class LocalStore:
    """Checkpoints in a local (or shared network) folder."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def complete_steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        steps = []
        for child in self.root.iterdir():
            match = STEP_DIR_RE.match(child.name)
            if match and (child / COMPLETE).is_file():
                steps.append(int(match.group(1)))
        return sorted(steps)

    def staging_dir(self, step: int) -> Path:
        """Where every rank writes the files of ``step`` (same path on every rank: shared folder)."""
        return self.root / f".tmp-{step_dir_name(step)}"

    def prepare(self, step: int) -> Path:
        staging = self.staging_dir(step)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int, staging: Path, rank_files: list[str], *, is_main: bool,
               hook: FileHook | None = None) -> None:  # fmt: skip
        """Seal the staged folder (rank 0): marker, fsync, rename into place."""
        del rank_files  # every rank already wrote into the shared staging folder
        if not is_main:
            return
        write_text_durable(staging / COMPLETE, "ok\n")
        _fsync_dir(staging)
        final = self.root / step_dir_name(step)
        if final.exists():  # re-saving a step (e.g. best and last coincide): swap atomically enough
            trash = self.root / f".trash-{step_dir_name(step)}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
            os.replace(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, final)
        _fsync_dir(self.root)

    def fetch(self, step: int, *, rank: int = 0) -> Path:
        del rank
        return self.root / step_dir_name(step)

    def read_json(self, step: int, name: str) -> dict:
        return json.loads((self.root / step_dir_name(step) / name).read_text())

    def delete(self, step: int) -> None:
        folder = self.root / step_dir_name(step)
        marker = folder / COMPLETE
        if marker.exists():
            marker.unlink()  # from now on it is not a checkpoint, even if the delete stops halfway
        shutil.rmtree(folder, ignore_errors=True)

    def clean_incomplete(self) -> list[str]:
        removed = []
        if not self.root.is_dir():
            return removed
        for child in self.root.iterdir():
            incomplete = STEP_DIR_RE.match(child.name) and not (child / COMPLETE).is_file()
            if child.name.startswith((".tmp-", ".trash-")) or incomplete:
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child.name)
        return removed


# Keys per listing request (S3's maximum); tests lower it to exercise pagination.
LIST_PAGE_SIZE = 1000


class S3Store:
    """Checkpoints under ``s3://bucket/prefix/``; completeness is the ``COMPLETE`` object, put last."""

    def __init__(self, uri: str, client=None, cache_dir: str | os.PathLike | None = None) -> None:
        from steps.fetch.s3 import parse_s3_uri

        self.uri = uri
        self.bucket, self.prefix = parse_s3_uri(uri, "checkpoint_dir")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="vla-sft-ckpt-"))

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _list(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kwargs)
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return keys
            token = page["NextContinuationToken"]

    def _step_keys(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        base = self._key("") + "/" if self.prefix else ""
        for key in self._list(base):
            first = key[len(base) :].split("/", 1)[0]
            match = STEP_DIR_RE.match(first)
            if match:
                out.setdefault(int(match.group(1)), []).append(key)
        return out

    def complete_steps(self) -> list[int]:
        return sorted(
            step for step, keys in self._step_keys().items()
            if self._key(step_dir_name(step), COMPLETE) in keys
        )  # fmt: skip

    def staging_dir(self, step: int) -> Path:
        return self.cache_dir / "staging" / step_dir_name(step)

    def prepare(self, step: int) -> Path:
        staging = self.staging_dir(step)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int, staging: Path, rank_files: list[str], *, is_main: bool,
               hook: FileHook | None = None) -> None:  # fmt: skip
        """Upload ``rank_files`` (paths relative to ``staging``) of this rank; rank 0 then puts the marker.

        The caller puts a barrier between the uploads of all ranks and ``seal``.
        """
        for rel in rank_files:
            self.client.upload_file(str(staging / rel), self.bucket, self._key(step_dir_name(step), rel))
            if hook is not None:
                hook(rel)

    def seal(self, step: int) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(step_dir_name(step), COMPLETE), Body=b"ok\n")

    def fetch(self, step: int, *, rank: int = 0) -> Path:
        """Download the checkpoint into a per-rank cache folder and return it."""
        dest = self.cache_dir / f"rank{rank}" / step_dir_name(step)
        if (dest / COMPLETE).is_file():
            return dest
        base = self._key(step_dir_name(step)) + "/"
        for key in self._list(base):
            target = dest / key[len(base) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, key, str(target))
        return dest

    def read_json(self, step: int, name: str) -> dict:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(step_dir_name(step), name))["Body"]
        return json.loads(body.read())

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})

    def delete(self, step: int) -> None:
        marker = self._key(step_dir_name(step), COMPLETE)
        self.client.delete_object(Bucket=self.bucket, Key=marker)  # marker first: never half-complete
        self._delete_keys(self._list(self._key(step_dir_name(step)) + "/"))

    def clean_incomplete(self) -> list[str]:
        removed = []
        for step, keys in self._step_keys().items():
            if self._key(step_dir_name(step), COMPLETE) not in keys:
                self._delete_keys(keys)
                removed.append(step_dir_name(step))
        return removed


def open_store(uri: str, *, s3_client=None) -> LocalStore | S3Store:
    return S3Store(uri, client=s3_client) if uri.startswith("s3://") else LocalStore(uri)


# ---------------------------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------------------------


def steps_to_keep(store, keep_last: int) -> tuple[list[int], int | None]:
    """The last ``keep_last`` complete steps plus the best one by recorded validation loss."""
    steps = store.complete_steps()
    keep = steps[-keep_last:] if keep_last > 0 else []
    best = best_step(store, steps)
    if best is not None and best not in keep:
        keep = sorted([*keep, best])
    return keep, best


def best_step(store, steps: list[int] | None = None) -> int | None:
    best, best_loss = None, float("inf")
    for step in steps if steps is not None else store.complete_steps():
        loss = store.read_json(step, "trainer_state.json").get("val_loss")
        if loss is not None and loss < best_loss:
            best, best_loss = step, loss
    return best


def prune(store, keep_last: int) -> list[int]:
    keep, _ = steps_to_keep(store, keep_last)
    removed = [s for s in store.complete_steps() if s not in keep]
    for step in removed:
        store.delete(step)
    return removed


# ---------------------------------------------------------------------------------------------
# Small file helpers
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_durable(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: Path, data: dict) -> None:
    write_text_durable(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
