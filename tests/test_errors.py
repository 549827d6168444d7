"""User errors (steps/errors.py, flows/step_errors.py): what counts, the one line, the traceback file,
the worker -> step error file, and the train step's torchrun wrapper with a real torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steps import errors

REPO = Path(__file__).resolve().parents[1]


def test_what_counts_as_a_user_error():
    from data_adapters.lerobot_format import DatasetFormatError
    from data_adapters.video import VideoDecodeError
    from model_zoo.hub import CheckpointError, HubUnavailableError
    from steps.config.validate import InputError

    cases = {
        DatasetFormatError("x"): "Dataset error",
        VideoDecodeError("/v.mp4", "video ends before t=1.0s"): "Dataset error",
        CheckpointError("x"): "Checkpoint error",
        InputError("--lora_rank: x"): "Invalid input",
        errors.UserError("x"): "Invalid input",
    }
    for exc, headline in cases.items():
        assert errors.is_user_error(exc) and errors.headline(exc) == headline, exc
    # Bugs and transient failures are not: they keep their traceback (and may be retried).
    for exc in (ValueError("x"), RuntimeError("x"), KeyError("x"), HubUnavailableError("offline")):
        assert not errors.is_user_error(exc), exc


def test_one_line_and_render():
    exc = errors.UserError("first line\n   second   line")
    assert errors.one_line(exc) == "first line second line"
    assert errors.render(exc) == ("Invalid input", "first line second line")
    assert errors.render(exc, "/tmp/t.txt") == (
        "Invalid input",
        "first line second line\n(traceback: /tmp/t.txt)",
    )


class _Failing:
    def __init__(self, exc):
        self.exc = exc

    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise self.exc


@pytest.mark.parametrize("kind", ["dataset", "video"])
def test_error_re_raised_by_a_dataloader_worker_stays_a_user_error_with_its_own_line(kind):
    """torch re-raises a worker's exception as ``type(message with the worker's traceback)``."""
    import torch

    from data_adapters.lerobot_format import DatasetFormatError
    from data_adapters.video import VideoDecodeError

    exc = DatasetFormatError("non-finite value nan in 'action'[1]") if kind == "dataset" else VideoDecodeError(
        "/d/v.mp4", "video ends before t=2.0000s"
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(_Failing(exc), num_workers=1)
    with pytest.raises(type(exc)) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)
    assert errors.is_user_error(caught.value)
    assert errors.one_line(caught.value) == str(exc)


def test_error_file_round_trip(tmp_path):
    from data_adapters.lerobot_format import DatasetFormatError

    path = tmp_path / "train_error.json"
    assert errors.read_error_file(path) is None
    errors.write_error_file(path, DatasetFormatError("bad\nvalue"), "/t/tb.txt")
    got = errors.read_error_file(path)
    assert isinstance(got, errors.UserError) and errors.is_user_error(got)
    assert (got.headline, str(got), got.traceback_path) == ("Dataset error", "bad value", "/t/tb.txt")
    assert errors.render(got) == ("Dataset error", "bad value\n(traceback: /t/tb.txt)")
    path.write_text("{not json")
    assert errors.read_error_file(path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["train_error.json"]  # nothing half-written left


def test_reported_step_turns_a_user_error_into_one_metaflow_message(tmp_path, monkeypatch):
    from metaflow.exception import MetaflowException

    from data_adapters.lerobot_format import DatasetFormatError
    from flows.step_errors import UserFacingError, reported

    monkeypatch.setenv("VLA_SFT_CACHE", str(tmp_path))

    @reported
    def data_step(flow):
        raise DatasetFormatError("corrupt parquet file /d/data/chunk-000/episode_000001.parquet (episode 1)")

    @reported
    def buggy_step(flow):
        raise ZeroDivisionError("bug")

    with pytest.raises(UserFacingError) as caught:
        data_step(None)
    assert isinstance(caught.value, MetaflowException) and caught.value.headline == "Dataset error"
    line, where = caught.value.message.split("\n")
    assert line == "corrupt parquet file /d/data/chunk-000/episode_000001.parquet (episode 1)"
    saved = Path(where.removeprefix("(traceback: ").removesuffix(")"))
    assert saved.is_relative_to(tmp_path / "errors")
    assert "Traceback (most recent call last)" in saved.read_text() and "data_step" in saved.read_text()
    with pytest.raises(ZeroDivisionError):
        buggy_step(None)


@pytest.mark.slow
def test_user_error_in_a_torchrun_worker_comes_out_as_one_line(tmp_path):
    """A real torchrun of ``python -m steps.train`` whose pretrained file is random bytes: the worker
    records the CheckpointError, ``TrainingJob.user_errors`` raises it instead of torchrun's failure, and
    torchrun's ChildFailedError traceback goes to a file, not to stderr."""
    from metaflow_extensions.torchrun.plugins.torchrun_libs.streaming import stream_subprocess_output

    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset
    from data_adapters.tokenizer import train_tiny_tokenizer
    from steps.stats.norm_stats import compute_norm_stats
    from steps.train.config import TrainConfig
    from steps.train.launch import TRAIN_ENTRYPOINT, TrainingJob

    ct = get_config_type("pi05_metaworld")
    root = make_synthetic_dataset(tmp_path / "ds", ct, num_episodes=2, min_len=6, max_len=6, image_size=16)
    compute_norm_stats(ct, root, out_path=tmp_path / "ns.json", cache_dir=tmp_path / "stats_cache")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(os.urandom(4096))
    config = TrainConfig(config_type=ct, dataset_root=str(root), norm_stats_path=str(tmp_path / "ns.json"),
                         tokenizer_path=str(train_tiny_tokenizer(tmp_path / "tok.model")), model_variant="tiny",
                         pretrained=str(weights), global_batch=1, max_steps=1, num_workers=0,
                         checkpoint_dir=str(tmp_path / "ckpt"))  # fmt: skip
    config.to_json(tmp_path / "train_config.json")
    job = TrainingJob(config, str(tmp_path / "train_config.json"), str(tmp_path / "train_result.json"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "--module",
           TRAIN_ENTRYPOINT, *job.entrypoint_args]  # fmt: skip
    console = tmp_path / "console.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(console, "w") as out:
        real_stderr, sys.stderr = sys.stderr, out
        try:
            with pytest.raises(errors.UserError) as caught, job.user_errors():
                with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
                    # What metaflow-torchrun does: forward torchrun's output to sys.stdout / sys.stderr.
                    code = stream_subprocess_output(proc, sys.stdout, sys.stderr)
                assert code != 0
                raise RuntimeError(f"torchrun exited with {code}")  # as TorchrunException would
        finally:
            sys.stderr = real_stderr
    assert errors.headline(caught.value) == "Checkpoint error"
    assert str(weights) in str(caught.value) and "\n" not in str(caught.value)
    assert "Traceback" not in console.read_text(), console.read_text()
    record = json.loads(Path(job.error_path).read_text())
    assert Path(record["traceback_path"]).read_text().startswith("Traceback (most recent call last)")
    assert "ChildFailedError" in (tmp_path / "torchrun_stderr.txt").read_text()
