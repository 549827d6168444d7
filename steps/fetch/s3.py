"""LeRobot datasets under an ``s3://bucket/prefix`` URI: pinned, cached snapshots on each machine.

S3 has no commits, so a snapshot is named by its content: the digest of the listing (every key under
the prefix with its ETag and size). ``fetch_s3_dataset`` downloads a listing it has not seen into
``$VLA_SFT_CACHE/datasets/s3/<bucket>/<prefix digest>/<snapshot>/`` (into a temporary folder, renamed
into place once complete, so a killed download leaves nothing that looks finished) and reuses it
afterwards without downloading anything. The snapshot digest plays the role of a Hub revision: every
node of a run fetches the revision that ``fetch_data`` saw, and a dataset changed in between is an
error rather than silently different data.

Credentials and endpoint come from boto3's usual sources (environment, ``~/.aws``, instance or pod
role; ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores), never from flow parameters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

INFO_KEY = "meta/info.json"
# Keys per listing request (S3's maximum); tests lower it to exercise pagination.
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class S3Snapshot:
    path: Path  # local folder holding the dataset
    revision: str  # digest of the listing (keys, ETags, sizes)
    downloaded: int  # objects downloaded by this call (0: the cached snapshot was reused)


def parse_s3_uri(uri: str, what: str = "dataset") -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without surrounding slashes); errors name ``what``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{what} {uri!r}: not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{what} {uri!r}: no bucket name")
    return bucket, prefix.strip("/")


def s3_client(*, connect_timeout: float = 10.0, attempts: int = 3):
    """A boto3 S3 client with bounded timeouts and retries (checks in ``start`` pass small values)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout, read_timeout=max(connect_timeout, 30.0),
                    retries={"max_attempts": attempts, "mode": "standard"})  # fmt: skip
    return boto3.client("s3", config=config)


def list_dataset(uri: str, client=None) -> list[dict]:
    """Every object under the URI's prefix: [{"key": relative key, "etag", "size"}], sorted by key."""
    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    base = f"{prefix}/" if prefix else ""
    objects, token = [], None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": base, "MaxKeys": LIST_PAGE_SIZE}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3_call(uri, client.list_objects_v2, **kwargs)
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(base) :]
            if rel and not rel.endswith("/"):  # "folder" placeholder objects carry no data
                objects.append({"key": rel, "etag": obj["ETag"].strip('"'), "size": int(obj["Size"])})
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    objects.sort(key=lambda o: o["key"])
    if not any(o["key"] == INFO_KEY for o in objects):
        found = f"{len(objects)} objects" if objects else "no objects"
        raise ValueError(f"dataset {uri}: {found} under the prefix and no {INFO_KEY}: not a LeRobot dataset")
    return objects


def listing_revision(objects: list[dict]) -> str:
    digest = hashlib.sha256()
    for o in objects:
        digest.update(f"{o['key']}\0{o['etag']}\0{o['size']}\n".encode())
    return digest.hexdigest()[:16]


def fetch_s3_dataset(
    uri: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None, client=None
) -> S3Snapshot:
    """Download (once) the dataset under ``uri``; ``revision`` pins the snapshot a run expects.

    Raises:
        ValueError: bad URI, no credentials, bucket or prefix missing or not a LeRobot dataset, an
            object changed during the download, or ``revision`` given and the data no longer match it.
    """
    from model_zoo.files import write_dir_atomically
    from steps.cache import cache_dir_for

    bucket, prefix = parse_s3_uri(uri)
    client = client or s3_client()
    objects = list_dataset(uri, client)
    current = listing_revision(objects)
    if revision is not None and revision != current:
        raise ValueError(
            f"dataset {uri}: its objects changed since revision {revision} was recorded (now {current}); "
            "rerun from fetch_data (a new run) to train on the new data"
        )
    prefix_dir = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    target = cache_dir_for("datasets", cache_dir) / "s3" / bucket / prefix_dir / current
    if target.is_dir():
        return S3Snapshot(target, current, 0)
    base = f"{prefix}/" if prefix else ""

    from steps.progress import Progress

    def download(staging: Path) -> None:
        total_mb = sum(o["size"] for o in objects) / 1e6
        progress = Progress(f"download {uri}", round(total_mb, 1), unit="MB")  # a line every 10 s
        for o in objects:
            dest = staging / o["key"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            # IfMatch: an object replaced while we copy is an error, not a mixed snapshot.
            answer = s3_call(uri, client.get_object, Bucket=bucket, Key=base + o["key"], IfMatch=o["etag"])
            with open(dest, "wb") as f:
                shutil.copyfileobj(answer["Body"], f, length=1 << 20)
            if dest.stat().st_size != o["size"]:
                raise ValueError(
                    f"dataset {uri}: {o['key']} has {dest.stat().st_size} bytes, listed {o['size']}"
                )
            progress.advance(o["size"] / 1e6)
        if progress.lines:
            progress.finish(f"{len(objects)} files")

    # Another process that finished the same snapshot first wrote the same files: keep theirs.
    write_dir_atomically(target, download, replace=False)
    return S3Snapshot(target, current, len(objects))


def s3_call(uri: str, fn, **kwargs):
    """A boto3 call whose failures read as one line naming the dataset and what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return fn(**kwargs)
    except NoCredentialsError:
        raise ValueError(
            f"dataset {uri}: no AWS credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE, or run with an instance/pod role)"
        ) from None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        what = {"NoSuchBucket": "the bucket does not exist", "AccessDenied": "access denied",
                "NoSuchKey": f"no object {kwargs.get('Key')} (not a LeRobot dataset?)",
                "PreconditionFailed": "an object changed during the download (retry)"}.get(code, str(err))  # fmt: skip
        raise ValueError(f"dataset {uri}: {what}") from None
    except BotoCoreError as err:
        raise ValueError(f"dataset {uri}: S3 cannot be reached ({type(err).__name__}: {err})") from None
