"""What start checks without reading data, each with its exact one-line message: the held-out episode count,
--pretrained weights, every --train_options value, --lora_rank without --lora, --demo on a YAML's dataset.
The last test runs the four late inputs of issue #16 through `python flows/sft_flow.py run`."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model_zoo.lora_settings import LoraSettings
from steps.config.validate import InputError, validate_run_inputs
from tests.test_flow import FLOW, flow_env

NOT_SAFETENSORS = b"not a checkpoint" * 256  # 4096 bytes; its first 8 bytes read as the header length
NOT_SAFETENSORS_LENGTH = struct.unpack("<Q", NOT_SAFETENSORS[:8])[0]
# The demo dataset of pi05_metaworld and the YAML types extending it (the shipped Meta-World renders).
DEMO_DATASET = "demo://metaworld_demo"


def _validate(tmp_path, **kwargs):
    return validate_run_inputs(**{"config_type": "pi05_metaworld", "demo": True,
                                  "tracking_uri": f"sqlite:///{tmp_path}/m.db", **kwargs})  # fmt: skip


def _refused(tmp_path, message: str, **kwargs) -> None:
    with pytest.raises(InputError) as caught:
        _validate(tmp_path, **kwargs)
    assert str(caught.value) == message


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory):
    """A small pi05_metaworld-schema dataset folder (3 episodes) for runs without --demo."""
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ds") / "mw", get_config_type("pi05_metaworld"),
                                  num_episodes=3, min_len=4, max_len=5, image_size=8)  # fmt: skip


def test_eval_episodes_are_checked_against_the_dataset_episode_count(tmp_path, local_dataset):
    _refused(tmp_path, "--eval_episodes: 1000 episodes held out, but the demo dataset has 15 (meta/info.json "
             "total_episodes) and training needs at least one; use at most 14", eval_episodes=1000)  # fmt: skip
    _refused(tmp_path, f"--eval_episodes: 3 episodes held out, but {local_dataset} has 3 (meta/info.json "
             "total_episodes) and training needs at least one; use at most 2", demo=False,
             dataset=str(local_dataset), eval_episodes=3)  # fmt: skip
    assert _validate(tmp_path, demo=False, dataset=str(local_dataset), eval_episodes=2).eval.episodes == 2


def _checkpoint(path: Path, model_type: str) -> Path:
    """A safetensors file with the keys that tell pi0 from pi0.5 (real sizes, the rest left out)."""
    from safetensors.numpy import save_file

    tensors = {"action_in_proj.weight": np.zeros((1024, 32), np.float32),
               "action_out_proj.weight": np.zeros((32, 1024), np.float32),
               "paligemma_with_expert.paligemma.lm_head.weight": np.zeros((1, 1), np.float32)}  # fmt: skip
    if model_type == "pi0":
        tensors["state_proj.weight"] = np.zeros((1024, 32), np.float32)
    save_file(tensors, str(path))
    return path


def test_pretrained_weights_are_read_and_must_fit_the_model_type(tmp_path, local_dataset):
    run = {"demo": False, "dataset": str(local_dataset)}
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(NOT_SAFETENSORS)
    _refused(tmp_path, f"--pretrained: {junk} is not a safetensors file (header length {NOT_SAFETENSORS_LENGTH} "
             "for 4096 bytes)", pretrained=str(junk), **run)  # fmt: skip
    pi0 = _checkpoint(tmp_path / "pi0.safetensors", "pi0")
    _refused(tmp_path, f"--pretrained: {pi0} is a pi0 checkpoint (it has state_proj.weight), but the model is "
             "pi05", pretrained=str(pi0), **run)  # fmt: skip
    (tmp_path / "pi05").mkdir()
    pi05 = _checkpoint(tmp_path / "pi05" / "model.safetensors", "pi05")
    assert _validate(tmp_path, pretrained=str(pi05.parent), **run).model.pretrained == str(pi05.parent)
    # The size must fit too: real-size weights for a tiny model are refused.
    tiny = {"model_variant": "tiny"}
    _refused(tmp_path, f"--pretrained: {pi05.parent}: action_in_proj.weight has shape [1024, 32], but a tiny pi05 "
             "model needs [32, 32]", pretrained=str(pi05.parent), train_options=tiny, **run)  # fmt: skip
    size = pi05.stat().st_size
    with open(pi05, "r+b") as handle:  # cut short: the header is intact, the tensor data is not
        handle.truncate(size - 100)
    _refused(tmp_path, f"--pretrained: {pi05} is cut short: its header needs {size} bytes, the file has "
             f"{size - 100}", pretrained=str(pi05.parent), **run)  # fmt: skip
    _refused(tmp_path, "--pretrained: 'lerobot/pi05_base@v1': give the Hub id alone (org/name) and the revision as "
             "--train_options '{\"pretrained_revision\": \"v1\"}'", pretrained="lerobot/pi05_base@v1", **run)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"precision": "bf17"},
            "--train_options: precision: must be one of ('auto', 'fp32', 'bf16'), got 'bf17'",
        ),
        ({"num_workers": "2"}, '--train_options: num_workers must be an integer, got "2"'),
        ({"augment": 1}, "--train_options: augment must be true or false, got 1"),
        ({"ema_decay": "0.9"}, '--train_options: ema_decay must be a number or null, got "0.9"'),
        ({"lora": {"rank": 0}}, "--train_options: lora.rank: must be a positive integer, got 0"),
        (
            {"warmup_steps": 50, "decay_steps": 10},
            "--train_options: decay_steps: 10 is smaller than warmup_steps 50",
        ),
        (
            {"micro_batch": 3},
            "--train_options: global_batch: 4 is not divisible by micro_batch 3",
        ),
    ],
)
def test_every_train_option_value_is_checked(tmp_path, options, message):
    _refused(tmp_path, message, train_options=options)


def test_train_options_that_fit_pass(tmp_path):
    options = {"precision": "bf16", "num_workers": 0, "ema_decay": 0.9, "lora": {"rank": 4}}
    assert _validate(tmp_path, train_options=options).train.options == options


def test_lora_rank_needs_lora(tmp_path):
    _refused(tmp_path, "--lora_rank 8: given without --lora, so it would be ignored; add --lora (LoRA fine-tuning "
             "with that rank) or drop --lora_rank (full fine-tuning)", lora_rank=8)  # fmt: skip
    assert _validate(tmp_path, lora=True).lora == LoraSettings()  # the settings' own rank, 32
    assert _validate(tmp_path, lora=True, lora_rank=8).lora == LoraSettings(rank=8)
    assert _validate(tmp_path).lora is None


def test_demo_uses_the_dataset_a_yaml_names_and_says_so(tmp_path, local_dataset, capsys):
    named = tmp_path / "named.yaml"
    named.write_text(f"extends: pi05_metaworld\nname: my_arm\ndataset:\n  path: {local_dataset}\n")
    rc = _validate(tmp_path, config_type=str(named), eval_episodes=1)
    assert (rc.data.dataset, rc.data.dataset_kind, rc.model.variant) == (str(local_dataset), "local", "tiny")
    assert capsys.readouterr().out.splitlines() == [
        f"--demo: training the tiny model on {local_dataset}, the dataset {named} names (for its demo dataset "
        f"instead: --dataset {DEMO_DATASET})"
    ]
    # A YAML that only extends a built-in names no dataset of its own: the demo data, silently as before.
    inherits = tmp_path / "inherits.yaml"
    inherits.write_text("extends: pi05_metaworld\nname: my_other_arm\n")
    assert _validate(tmp_path, config_type=str(inherits)).data.dataset_kind == "demo"
    assert _validate(tmp_path, config_type=str(named), dataset=DEMO_DATASET).data.dataset_kind == "demo"
    assert capsys.readouterr().out == ""
    # A named Hub dataset that is not cached (offline): the line says how to run the demo anyway.
    hub = tmp_path / "hub.yaml"
    hub.write_text("extends: pi05_metaworld\nname: my_hub_arm\ndataset: someone/not_cached\n")
    _refused(tmp_path, "--dataset: Hub dataset 'someone/not_cached' is not in the Hugging Face cache and "
             f"HF_HUB_OFFLINE is set; to run --demo on its demo dataset instead, add --dataset {DEMO_DATASET}",
             config_type=str(hub))  # fmt: skip


def test_late_inputs_fail_in_start_within_seconds(tmp_path):
    """The four inputs issue #16 found late (fetch_data, train), run as real flows at once: each fails in
    start with its one line, no traceback, nothing after start."""
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(NOT_SAFETENSORS)
    cases = {
        "eval": (["--demo", "--eval_episodes", "1000"], "--eval_episodes: 1000 episodes held out, but the demo "
                 "dataset has 15 (meta/info.json total_episodes) and training needs at least one; use at most 14"),
        "pretrained": (["--pretrained", str(junk)], f"--pretrained: {junk} is not a safetensors file (header "
                       f"length {NOT_SAFETENSORS_LENGTH} for 4096 bytes)"),
        "options": (["--demo", "--train_options", '{"precision": "bf17"}'], "--train_options: precision: must be "
                    "one of ('auto', 'fp32', 'bf16'), got 'bf17'"),
        "rank": (["--demo", "--lora_rank", "8"], "--lora_rank 8: given without --lora, so it would be ignored; add "
                 "--lora (LoRA fine-tuning with that rank) or drop --lora_rank (full fine-tuning)"),
    }  # fmt: skip
    procs, started = {}, time.monotonic()
    for name, (args, _) in cases.items():
        root = tmp_path / name
        root.mkdir()
        procs[name] = subprocess.Popen([sys.executable, str(FLOW), "run", *args], cwd=root, env=flow_env(root),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for name, (_, expected) in cases.items():
        out, _ = procs[name].communicate(timeout=240)
        assert procs[name].returncode != 0, out[-3000:]
        lines = [re.sub(r"^.*\(pid \d+\)\] ", "", line) for line in out.splitlines()]
        assert "Invalid input:" in lines and expected in lines, out[-3000:]
        assert "Traceback" not in out and "Internal error" not in out, out[-3000:]
        assert "/fetch_data/" not in out  # nothing ran after start
    # Four Metaflow start-ups at once on a 2-core machine; the checks themselves take well under a second.
    assert time.monotonic() - started < 150
