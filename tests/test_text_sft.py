"""Text SFT through the same trainer: masking, full and LoRA training, exact resume, export, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data_adapters.registry import get_config_type
from model_zoo.lora_settings import LoraSettings
from steps.text import data as text_data
from steps.text.stats import compute_text_stats
from steps.text.train_task import TextTask, load_tokenizer
from steps.train.config import TrainConfig
from steps.train.trainer import main
from tests.text_helpers import (
    chat_rows,
    make_model_folder,
    make_tokenizer,
    write_jsonl,
    write_text_yaml,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def text_assets(tmp_path_factory):
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("text")
    model = make_model_folder(base / "model")
    data = write_jsonl(base / "chat.jsonl", chat_rows())
    yaml_path = write_text_yaml(base / "tiny_text.yaml", model=model, dataset=data)
    ct = get_config_type(str(yaml_path))
    train, val = text_data.split_rows(24, ct.val_fraction, seed=0)
    stats = base / "text_stats.json"
    compute_text_stats(ct, str(data), train, out_path=stats)
    return {"base": base, "model": model, "data": data, "yaml": yaml_path, "ct": ct, "train": train, "val": val,
            "stats": stats}  # fmt: skip


def _config(a, ckpt_dir, **overrides) -> TrainConfig:
    fields = dict(config_type=str(a["yaml"]), dataset_root=str(a["data"]), norm_stats_path=str(a["stats"]),
                  tokenizer_path="", train_episodes=a["train"], val_episodes=a["val"], global_batch=4, max_steps=6,
                  peak_lr=1e-2, warmup_steps=0, decay_steps=6, schedule="constant", num_workers=0, device="cpu",
                  checkpoint_dir=str(ckpt_dir), save_every=2, val_every=3, log_every=1,
                  metrics_file=str(Path(ckpt_dir).with_suffix(".metrics.jsonl")))  # fmt: skip
    return TrainConfig(**{**fields, **overrides})


# --- data ------------------------------------------------------------------------------------------------


def test_config_type_dispatch_and_yaml_errors(text_assets, tmp_path):
    assert get_config_type("text_sft").kind == "text"
    ct = text_assets["ct"]
    assert ct.name == "tiny_text" and ct.max_seq_len == 48 and ct.train.ema_decay is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: text\nmodle: x\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['modle'\].*model"):
        get_config_type(str(bad))
    bad.write_text("kind: text\nmax_seq_len: 1\n")
    with pytest.raises(ValueError, match="max_seq_len"):
        get_config_type(str(bad))


def test_split_is_deterministic_and_disjoint():
    a = text_data.split_rows(50, 0.2, seed=3)
    assert a == text_data.split_rows(50, 0.2, seed=3) and len(a[1]) == 10
    assert not set(a[0]) & set(a[1]) and sorted(a[0] + a[1]) == list(range(50))
    assert text_data.split_rows(50, 0.2, seed=4) != a


def test_chat_masking_is_exactly_the_assistant_tokens(text_assets):
    tok = load_tokenizer(str(text_assets["model"]))
    rows = chat_rows(3)
    (ex,) = text_data.tokenize_rows(tok, rows, [0], max_seq_len=48, truncation=False)
    # Row 0: system, user, assistant "red red", user, assistant "moon moon"... (two answers).
    answers = [m["content"] for m in rows[0]["messages"] if m["role"] == "assistant"]
    expected = []
    for tok_ids in (tok(f"{a} <|end|>", add_special_tokens=False)["input_ids"] for a in answers):
        expected += tok_ids
    assert [t for t in ex.labels if t != -100] == expected
    labelled = [i for i, t in enumerate(ex.labels) if t != -100]
    assert all(ex.labels[i] == ex.input_ids[i] for i in labelled)
    # Everything else (system, user turns, the assistant header) is masked.
    masked = tok.convert_ids_to_tokens(
        [ex.input_ids[i] for i in range(len(ex.labels)) if ex.labels[i] == -100]
    )
    assert masked.count("<|assistant|>") == 2 and "repeat" in masked and "brief" in masked


def test_loss_counts_only_answer_tokens(text_assets):
    """The task's summed loss equals a hand-computed cross-entropy over the answer positions only."""
    a = text_assets
    task = TextTask(_config(a, a["base"] / "unused"), a["ct"])
    task.check_inputs()
    torch.manual_seed(0)
    model = task.build_model("fp32")
    collate = text_data.TextCollator(task.tokenizer.pad_token_id)
    items = [{"input_ids": e.input_ids, "labels": e.labels} for e in task.train_examples[:3]]
    batch = collate(items)
    loss, count = task.loss_sum(model, dict(batch))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual, n = 0.0, 0
    for b, it in enumerate(items):
        for i in range(1, len(it["input_ids"])):
            if it["labels"][i] != -100:  # position i-1 predicts token i
                manual -= float(torch.log_softmax(logits[b, i - 1], -1)[it["input_ids"][i]])
                n += 1
    assert count == n == task.count(batch) and n < int(batch["attention_mask"].sum()) - 3
    assert float(loss.detach()) == pytest.approx(manual, rel=1e-5)


def test_prompt_completion_rows_and_packing(text_assets):
    tok = load_tokenizer(str(text_assets["model"]))
    rows = [
        {"prompt": "repeat red", "completion": "red red"},
        {"prompt": "repeat cat", "completion": "cat cat"},
    ]
    exs = text_data.tokenize_rows(tok, rows, max_seq_len=16, truncation=False)
    assert tok.convert_ids_to_tokens(exs[0].input_ids) == ["<bos>", "repeat", "red", "red", "red", "<eos>"]
    assert exs[0].labels[:3] == [-100] * 3 and exs[0].labels[3:] == exs[0].input_ids[3:]
    packed = text_data.pack(exs, 16)
    assert len(packed) == 1 and packed[0].input_ids == exs[0].input_ids + exs[1].input_ids


def test_bad_inputs_have_clear_errors(text_assets, tmp_path):
    tok = load_tokenizer(str(text_assets["model"]))
    with pytest.raises(ValueError, match=r"row 1 has no field\(s\) \['completion'\].*'prompt', 'text'"):
        text_data.tokenize_rows(tok, [{"prompt": "a", "completion": "b"}, {"prompt": "a", "text": "b"}],
                                max_seq_len=16, truncation=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"row 0 has no field\(s\) \['prompt', 'completion'\].*\['input'\]"):
        text_data.tokenize_rows(tok, [{"input": "x"}], max_seq_len=16, truncation=False)
    long_rows = chat_rows(4)
    with pytest.raises(ValueError, match=r"row 3 has 20 tokens, more than max_seq_len 12.*truncation"):
        text_data.tokenize_rows(tok, long_rows, [1, 3], max_seq_len=12, truncation=False)
    (cut,) = text_data.tokenize_rows(tok, long_rows, [3], max_seq_len=12, truncation=True)
    assert len(cut.input_ids) == 12
    no_template = make_tokenizer(chat_template=None)
    with pytest.raises(ValueError, match="tokenizer: has no chat template"):
        text_data.tokenize_rows(no_template, chat_rows(2), max_seq_len=48, truncation=False)
    with pytest.raises(ValueError, match="dataset: .*missing.jsonl does not exist"):
        text_data.load_rows(str(tmp_path / "missing.jsonl"))
    # Through the trainer: the error names the TrainConfig field before any step.
    a = text_assets
    with pytest.raises(ValueError, match=r"val_episodes: row indices \[99\]"):
        main(_config(a, tmp_path / "ck", val_episodes=[99]))
    with pytest.raises(ValueError, match="norm_stats_path"):
        main(_config(a, tmp_path / "ck", norm_stats_path=str(tmp_path / "none.json")))


def test_a_hub_dataset_revision_reaches_every_reader(text_assets, tmp_path, monkeypatch):
    # An offline Hub cache holding two commits of one dataset: main has 24 rows, the older one 12.
    from huggingface_hub import constants

    from steps.text.flow_steps import fetch_text_dataset

    repo = tmp_path / "hub" / "datasets--someone--chat"
    commits = {"a" * 40: 24, "b" * 40: 12}
    for commit, n in commits.items():
        (repo / "snapshots" / commit).mkdir(parents=True)
        write_jsonl(repo / "snapshots" / commit / "train.jsonl", chat_rows(n))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    old, ct = "b" * 40, text_assets["ct"]
    from steps.config.validate import validate_run_inputs

    def run_config(revision):
        return validate_run_inputs(config_type=str(text_assets["yaml"]), dataset="someone/chat",
                                   dataset_revision=revision, check_tracking=False, check_remote=False,
                                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip

    fetched = fetch_text_dataset(run_config(old))
    assert (fetched.num_rows, fetched.revision) == (12, old)
    # A branch (or the default) is pinned to the commit it points at now; training gets that commit.
    for revision in (None, "main"):
        on_main = fetch_text_dataset(run_config(revision))
        assert (on_main.num_rows, on_main.revision) == (24, "a" * 40)
    from steps.tasks import task_for

    inputs = task_for(run_config("main")).node_inputs(on_main.to_dict(), {}, b"", tmp_path / "node")
    assert (inputs.dataset_root, inputs.dataset_revision) == ("someone/chat", "a" * 40)
    stats = compute_text_stats(ct, "someone/chat", None, out_path=tmp_path / "s.json", revision=old)
    assert stats["text_stats"]["count"] == 12
    # The trainer reads the pinned commit too: row 20 exists on main only.
    hub = dict(dataset_root="someone/chat", dataset_revision=old)
    with pytest.raises(
        ValueError, match=r"val_episodes: row indices \[20\] are outside the dataset's 12 rows"
    ):
        main(_config(text_assets, tmp_path / "ck", train_episodes=list(range(10)), val_episodes=[20], **hub))


# --- training --------------------------------------------------------------------------------------------


def _mean(losses, steps):
    return float(np.mean([loss for s, loss in losses if s in steps]))


@pytest.fixture(scope="module")
def reference(text_assets):
    """Uninterrupted 6-step full fine-tuning run (the resume test must reproduce it)."""
    ckpt_dir = text_assets["base"] / "reference"
    cfg = _config(text_assets, ckpt_dir)
    return {"cfg": cfg, "result": main(cfg)}


def test_full_finetune_trains_and_exports_a_loadable_model(reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = reference["result"]
    assert [s for s, _ in result.losses] == [1, 2, 3, 4, 5, 6] and len(result.val_losses) == 2
    assert _mean(result.losses, {5, 6}) < _mean(result.losses, {1, 2}) - 0.3
    export = Path(result.export_dir)
    meta = json.loads((export / "vla_sft_export.json").read_text())
    assert meta["kind"] == "text" and meta["finetune"] == "full" and (export / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(export, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(export)
    prompt = tok.apply_chat_template([{"role": "user", "content": "repeat red"}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3


def test_lora_trains_adapters_only_and_exports_merged(text_assets, tmp_path):
    from safetensors.torch import load_file

    cfg = _config(text_assets, tmp_path / "lora", lora=LoraSettings(rank=8, alpha=16), peak_lr=2e-2, max_steps=10,
                  global_batch=18, micro_batch=9, save_every=5, val_every=5)  # fmt: skip
    result = main(cfg)  # every step sees all 18 training rows (two micro-batches): a steady fall
    # Frozen random base, frozen head: the adapters alone move the loss less than full fine-tuning.
    assert _mean(result.losses, {9, 10}) < _mean(result.losses, {1, 2}) - 0.1
    assert result.losses[-1][1] < result.losses[0][1] - 0.2
    saved = load_file(str(tmp_path / "lora" / "step_000000010" / "model.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    export = Path(result.export_dir)
    assert (export / "adapter" / "adapter_config.json").is_file()
    merged = load_file(str(export / "model.safetensors"))
    assert not any("lora_" in k for k in merged)
    base = load_file(str(text_assets["model"] / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[name], base[name])  # the adapter was merged in


def test_resume_after_sigkill_is_exact(text_assets, reference, tmp_path):
    ckpt_dir = tmp_path / "killed"
    cfg = dataclasses.replace(reference["cfg"], checkpoint_dir=str(ckpt_dir),
                              metrics_file=str(tmp_path / "killed.metrics.jsonl"))  # fmt: skip
    cfg_file = tmp_path / "cfg.json"
    dataclasses.replace(cfg, fail_after_step=4).to_json(cfg_file)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "steps.train", "--config", str(cfg_file)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-3000:]
    result = main(cfg)
    assert result.resumed_from == 4 and [s for s, _ in result.losses] == [5, 6]
    ref = dict(reference["result"].losses)
    got = {}
    for line in Path(cfg.metrics_file).read_text().splitlines():
        row = json.loads(line)
        got[row["step"]] = row["train/loss"]
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-6)
    from safetensors.torch import load_file

    ref_w = load_file(str(Path(reference["result"].export_dir) / "model.safetensors"))
    got_w = load_file(str(ckpt_dir / "export" / "model.safetensors"))
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_match_one(text_assets, reference, tmp_path, parallelism):
    """The causal-LM task under torchrun (2 CPU processes, gloo): the same losses and weights as one process,
    each rank reading its half of every global batch."""
    cfg = dataclasses.replace(reference["cfg"], checkpoint_dir=str(tmp_path / parallelism), parallelism=parallelism,
                              metrics_file=str(tmp_path / f"{parallelism}.metrics.jsonl"))  # fmt: skip
    cfg_file = tmp_path / "cfg.json"
    cfg.to_json(cfg_file)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "steps.train", "--config", str(cfg_file)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = {}
    for line in Path(cfg.metrics_file).read_text().splitlines():
        row = json.loads(line)
        got[row["step"]] = row["train/loss"]
    ref = dict(reference["result"].losses)
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-4)
    from safetensors.torch import load_file

    ref_w = load_file(str(Path(reference["result"].export_dir) / "model.safetensors"))
    got_w = load_file(str(tmp_path / parallelism / "export" / "model.safetensors"))
    assert ref_w.keys() == got_w.keys()
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, rtol=1e-4, atol=1e-5)


# --- evaluate and register -------------------------------------------------------------------------------


def test_evaluate_and_registered_pyfunc_generates(text_assets, reference, tmp_path):
    import mlflow

    from steps.registry import register
    from steps.registry.tracking import LINEAGE_TAG
    from steps.text.evaluate import evaluate_text_export, log_completions
    from steps.text.model_logging import save_text_pyfunc

    a, export = text_assets, reference["result"].export_dir
    result = evaluate_text_export(export, str(a["data"]), a["val"], num_completions=2, max_new_tokens=4)
    m = result.metrics
    assert m["perplexity"] == pytest.approx(np.exp(m["val_loss"])) and m["val_samples"] == len(a["val"])
    # The evaluator's loss is training's validation loss on the same rows (last step validated, no EMA).
    assert m["val_loss"] == pytest.approx(reference["result"].val_losses[-1][1], rel=1e-5)
    assert len(result.details["completions"]) == 2
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    run_id = mlflow.MlflowClient(uri).create_run(mlflow.MlflowClient(uri).create_experiment("t")).info.run_id
    log_completions(uri, run_id, result.details["completions"])
    pyfunc_dir = save_text_pyfunc(export, tmp_path / "pyfunc")
    version = register.register_model(uri, name="tiny-text", model_dir=pyfunc_dir, run_id=run_id, lineage_id="L1",
                                      tags={LINEAGE_TAG: "L1"}, metrics=m)  # fmt: skip
    assert version.alias == "candidate"
    loaded = mlflow.pyfunc.load_model("models:/tiny-text@candidate")
    out = loaded.predict(
        {"messages": [[{"role": "user", "content": "repeat red"}]]}, params={"max_new_tokens": 3}
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    prompt = tok.apply_chat_template([{"role": "user", "content": "repeat red"}], tokenize=False,
                                     add_generation_prompt=True)  # fmt: skip
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    gen = AutoModelForCausalLM.from_pretrained(export).generate(ids, max_new_tokens=3, do_sample=False)
    assert gen.shape[1] == ids.shape[1] + 3
    assert out == [tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)]
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/completions.json",
                                                                 dst_path=str(tmp_path / "dl"))).read_text())  # fmt: skip
    assert table["columns"] == ["row", "prompt", "reference", "completion"] and len(table["data"]) == 2
