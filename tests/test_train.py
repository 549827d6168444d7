"""End-to-end training on CPU: tiny model, generated LeRobot dataset, real checkpoints and processes.

Budget: the tiny model still sees 3 x 256 image tokens, so one sample costs ~0.7 CPU-s forward and
backward. Runs are a few steps of batch 2; the reference run is shared by the resume tests.
"""

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
from safetensors.torch import load_file

from model_zoo.lora_settings import LoraSettings
from steps.train import checkpoints as ckpt
from steps.train.config import TrainConfig
from steps.train.trainer import NonFiniteLossError, main, parse_args

REPO = Path(__file__).resolve().parents[1]
CONFIG_TYPE = "pi05_metaworld"  # one camera, horizon 5, state/action 4


def _norm_stats(root, ct, episodes, out):
    """Plain numpy statistics (the norm-stats step has its own tests)."""
    from data_adapters.lerobot_reader import read_numeric
    from data_adapters.normalization import NormStats, Stats

    def stats(x):
        return Stats(mean=x.mean(0), std=x.std(0), q01=np.quantile(x, 0.01, 0), q99=np.quantile(x, 0.99, 0))

    s = np.concatenate(list(read_numeric(root, ct.state_keys, episodes=episodes).values()))
    a = np.concatenate(list(read_numeric(root, ct.action_keys, episodes=episodes).values()))
    NormStats(state=stats(s), actions=stats(a), metadata={}).save(out)
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset
    from data_adapters.tokenizer import train_tiny_tokenizer

    base = tmp_path_factory.mktemp("train_assets")
    ct = get_config_type(CONFIG_TYPE)
    root = make_synthetic_dataset(base / "ds", ct, num_episodes=3, min_len=8, max_len=10, image_size=32)
    tok = train_tiny_tokenizer(base / "tok.model")
    norm = _norm_stats(root, ct, [0, 1], base / "norm_stats.json")
    return {"root": str(root), "tok": str(tok), "norm": str(norm), "base": base}


def _config(assets, ckpt_dir, **overrides) -> TrainConfig:
    base = dict(
        config_type=CONFIG_TYPE,
        dataset_root=assets["root"],
        norm_stats_path=assets["norm"],
        tokenizer_path=assets["tok"],
        train_episodes=(0, 1),
        val_episodes=(2,),
        model_variant="tiny",
        global_batch=2,
        max_steps=4,
        peak_lr=1e-3,
        warmup_steps=1,
        decay_steps=4,
        end_lr=1e-4,
        save_every=2,
        val_every=2,
        val_samples=2,
        num_workers=0,
        augment=True,
        checkpoint_dir=str(ckpt_dir),
        metrics_file=str(Path(ckpt_dir).parent / f"{Path(ckpt_dir).name}.metrics.jsonl"),
        log_every=1,
    )
    base.update(overrides)
    return TrainConfig(**base)


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


def _losses(metrics_file) -> dict[int, float]:
    """step -> loss, the last line per step winning (a resumed run repeats steps after its checkpoint)."""
    out = {}
    for line in Path(metrics_file).read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["train/loss"]
    return out


# Runs the CLI with ``import mlflow`` failing: tracking off must not need it (GPU boxes may lack it).
_NO_MLFLOW = "import sys; sys.modules['mlflow'] = None; from steps.train.trainer import cli; sys.exit(cli(sys.argv[1:]))"


def _run_subprocess(cfg: TrainConfig, tmp_path: Path, *extra: str, torchrun_procs: int = 0, timeout=600):
    cfg_file = tmp_path / f"cfg-{os.getpid()}-{abs(hash(cfg.checkpoint_dir))}.json"
    cfg.to_json(cfg_file)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if torchrun_procs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_procs}",
               "-m", "steps.train", "--config", str(cfg_file), *extra]  # fmt: skip
        env["OMP_NUM_THREADS"] = "1"
    else:
        cmd = [sys.executable, "-c", _NO_MLFLOW, "--config", str(cfg_file), *extra]
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # same kernels as this process
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(assets):
    """The uninterrupted 4-step full fine-tuning run the resume tests must reproduce."""
    ckpt_dir = assets["base"] / "reference"
    result = main(_config(assets, ckpt_dir))
    return {"result": result, "dir": ckpt_dir, "cfg": _config(assets, ckpt_dir)}


# ---------------------------------------------------------------------------------------------------------
# Single process: trains, validates, checkpoints, exports
# ---------------------------------------------------------------------------------------------------------


def test_single_process_full_finetune_run(reference):
    from model_zoo.checkpoint import load_model

    result, ckpt_dir = reference["result"], reference["dir"]
    assert result.final_step == 4 and [s for s, _ in result.losses] == [1, 2, 3, 4]
    assert all(np.isfinite(loss) for _, loss in result.losses)
    assert [s for s, _ in result.val_losses] == [2, 4]
    assert result.best_step in (2, 4)
    store = ckpt.LocalStore(ckpt_dir)
    assert store.complete_steps() == [2, 4]  # keep_last=2
    state = store.read_json(4, ckpt.STATE_FILE)
    assert state["samples_seen"] == 8 and state["optimizer_steps"] == 4
    # EMA is on by default for full fine-tuning; the export carries the EMA weights.
    ema = load_file(str(ckpt_dir / "step_000000004" / ckpt.EMA_FILE))
    exported = _weights(result.export_dir)
    shared = [name for name in ema if name in exported]  # tied embed_tokens is stored once, as lm_head
    assert len(shared) > 10
    for name in shared:
        torch.testing.assert_close(exported[name], ema[name])
    meta = json.loads((Path(result.export_dir) / "vla_sft_export.json").read_text())
    assert meta["ema"] is True and meta["finetune"] == "full" and meta["step"] == 4
    for name in ("norm_stats.json", "train_config.json", "tokenizer.model", "config_type.json"):
        assert (Path(result.export_dir) / name).is_file()
    model = load_model(result.export_dir)
    assert model.config.variant == "tiny" and model.config.action_horizon == 5
    saved_cfg = TrainConfig.from_json(Path(result.export_dir) / "train_config.json")
    assert saved_cfg.global_batch == 2 and saved_cfg.micro_batch == 2 and saved_cfg.ema_decay == 0.99


@pytest.mark.slow
def test_overfit_loss_falls_single_and_ddp_agree(assets, tmp_path):
    """One episode, a high learning rate: the loss falls; 2-process gloo DDP with 2 accumulation
    micro-steps per rank (no_sync on the first) computes the same run as one process with one batch."""
    overrides = dict(train_episodes=(0,), val_episodes=(), val_every=0, max_steps=6, global_batch=4, peak_lr=3e-3,
                     warmup_steps=0, schedule="constant", save_every=6, augment=False, ema="off")  # fmt: skip
    single = main(_config(assets, tmp_path / "single", micro_batch=4, **overrides))
    losses = [loss for _, loss in single.losses]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses

    ddp_cfg = _config(assets, tmp_path / "ddp", micro_batch=1, **overrides)
    proc = _run_subprocess(ddp_cfg, tmp_path, torchrun_procs=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ddp_losses = _losses(tmp_path / "ddp.metrics.jsonl")
    np.testing.assert_allclose([ddp_losses[s] for s in range(1, 7)], losses, rtol=1e-4)
    ours, theirs = _weights(tmp_path / "single" / "export"), _weights(tmp_path / "ddp" / "export")
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-4, atol=1e-5)
    state = ckpt.LocalStore(tmp_path / "ddp").read_json(6, ckpt.STATE_FILE)
    assert state["world_size"] == 2


def test_lora_trains_adapter_only_and_exports_merged(assets, tmp_path):
    from model_zoo.checkpoint import load_model

    # Activation checkpointing on as well: recomputation must work with the injected adapters.
    cfg = _config(assets, tmp_path / "lora", lora=LoraSettings(rank=4), max_steps=2, val_every=1, save_every=2,
                  export_from="best", gradient_checkpointing=True)  # fmt: skip
    result = main(cfg)
    assert result.final_step == 2 and result.best_step in (1, 2)
    assert result.best_val_loss == min(v for _, v in result.val_losses)
    saved = load_file(str(tmp_path / "lora" / "step_000000002" / ckpt.MODEL_FILE))
    assert any("lora_A" in k for k in saved)
    # Base weights of adapted layers are frozen, so they are not in the training checkpoint.
    assert not any(k.endswith("q_proj.base_layer.weight") for k in saved)
    assert not (tmp_path / "lora" / "step_000000002" / ckpt.EMA_FILE).exists()  # EMA off for LoRA
    export = Path(result.export_dir)
    assert (export / "adapter" / "adapter_model.safetensors").is_file()
    merged = _weights(export)
    assert not any("lora_" in k for k in merged)
    model = load_model(export)
    meta = json.loads((export / "vla_sft_export.json").read_text())
    assert meta["finetune"] == "lora" and meta["weights_from"] == "best" and meta["step"] == result.best_step
    assert sum(p.numel() for p in model.parameters()) > 0


# ---------------------------------------------------------------------------------------------------------
# Exact resume
# ---------------------------------------------------------------------------------------------------------


def _assert_same_run(reference, ckpt_dir, metrics_file):
    ref_w = _weights(reference["result"].export_dir)
    got_w = _weights(Path(ckpt_dir) / "export")
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, rtol=0, atol=1e-6)
    ref_losses = dict(reference["result"].losses)
    got = _losses(metrics_file)
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [ref_losses[s] for s in range(1, 5)], rtol=1e-6)


def test_resume_after_sigkill_is_exact(assets, reference, tmp_path):
    ckpt_dir = tmp_path / "killed"
    cfg = dataclasses.replace(reference["cfg"], checkpoint_dir=str(ckpt_dir),
                              metrics_file=str(tmp_path / "killed.metrics.jsonl"))  # fmt: skip
    # Data workers in the killed run, none after the restart: the data order must not depend on them.
    proc = _run_subprocess(dataclasses.replace(cfg, fail_after_step=2, num_workers=1), tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert ckpt.LocalStore(ckpt_dir).complete_steps() == [2]
    result = main(cfg)
    assert result.resumed_from == 2 and [s for s, _ in result.losses] == [3, 4]
    _assert_same_run(reference, ckpt_dir, cfg.metrics_file)


def test_kill_while_writing_checkpoint_resumes_from_previous(assets, reference, tmp_path):
    ckpt_dir = tmp_path / "torn"
    cfg = dataclasses.replace(reference["cfg"], checkpoint_dir=str(ckpt_dir),
                              metrics_file=str(tmp_path / "torn.metrics.jsonl"))  # fmt: skip
    proc = _run_subprocess(dataclasses.replace(cfg, fail_during_checkpoint_step=4), tmp_path)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert (ckpt_dir / ".tmp-step_000000004" / ckpt.MODEL_FILE).is_file()  # half written
    assert ckpt.LocalStore(ckpt_dir).complete_steps() == [2]
    result = main(cfg)
    assert result.resumed_from == 2
    assert not (ckpt_dir / ".tmp-step_000000004").exists()
    _assert_same_run(reference, ckpt_dir, cfg.metrics_file)


# ---------------------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reduction",
    [
        dict(),
        pytest.param(dict(loss_reduction="real_dims", mask_padded_actions=True), marks=pytest.mark.slow),
    ],
    ids=["all_dims", "real_dims_masked"],
)
def test_grad_accumulation_matches_one_big_batch(assets, tmp_path, reduction):
    common = dict(
        global_batch=8, max_steps=1, val_every=0, val_episodes=(), ema="off", save_every=1, **reduction
    )
    big = main(_config(assets, tmp_path / "8x1", micro_batch=8, **common))
    acc = main(_config(assets, tmp_path / "4x2", micro_batch=4, **common))
    assert big.losses[0][1] == pytest.approx(acc.losses[0][1], rel=1e-5)
    a, b = _weights(tmp_path / "8x1" / "export"), _weights(tmp_path / "4x2" / "export")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Failures: non-finite steps, bad configs
# ---------------------------------------------------------------------------------------------------------


def test_nonfinite_steps_stop_the_run_and_keep_the_last_good_checkpoint(assets, tmp_path):
    # An absurd learning rate blows the weights up after the first update; later losses are not finite.
    cfg = _config(assets, tmp_path / "nan", peak_lr=1e30, warmup_steps=0, schedule="constant", save_every=1,
                  max_steps=6, max_nonfinite_steps=2, val_every=0, val_episodes=(), ema="off")  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="non-finite steps in a row"):
        main(cfg)
    steps = ckpt.LocalStore(tmp_path / "nan").complete_steps()
    assert steps and not list((tmp_path / "nan").glob(".tmp-*"))
    metrics = [json.loads(line) for line in Path(cfg.metrics_file).read_text().splitlines()]
    assert metrics[-1]["train/skipped_steps"] >= 1


@pytest.mark.parametrize(
    ("kwargs", "field", "extra"),
    [
        (dict(lora={"rank": 0}), "lora.rank", ""),
        (dict(lora={"rank": -2}), "lora.rank", ""),
        (dict(peak_lr=0.0), "peak_lr", ""),
        (dict(peak_lr=-1e-4), "peak_lr", ""),
        (dict(model_variant="huge"), "model_variant", "huge"),
        (dict(global_batch=8, micro_batch=3), "global_batch", "8 is not divisible by micro_batch 3"),
        (dict(parallelism="tp"), "parallelism", ""),
        (dict(val_episodes=(1,), train_episodes=(0, 1)), "val_episodes", ""),
    ],
)
def test_bad_config_names_the_field(assets, tmp_path, kwargs, field, extra):
    with pytest.raises(ValueError, match=rf"{field}.*{extra}"):
        _config(assets, tmp_path / "x", **kwargs)


def test_batch_not_divisible_by_world_size_times_micro_batch(assets, tmp_path):
    cfg = _config(assets, tmp_path / "x", global_batch=8, micro_batch=4)
    with pytest.raises(
        ValueError, match=r"global_batch: 8 is not divisible by world_size \* micro_batch = 4 \* 4"
    ):
        cfg.resolve(world_size=4)
    assert cfg.resolve(world_size=2).grad_accum_steps(2) == 1
    assert cfg.resolve(world_size=1).grad_accum_steps(1) == 2


def test_norm_stats_of_other_dims_are_refused_before_training(assets, tmp_path):
    from data_adapters.normalization import NormStats, Stats

    s = Stats(mean=np.zeros(7), std=np.ones(7), q01=-np.ones(7), q99=np.ones(7))
    bad = NormStats(state=s, actions=s, metadata={}).save(tmp_path / "ns.json")
    cfg = _config(assets, tmp_path / "x", norm_stats_path=str(bad))
    with pytest.raises(ValueError, match=r"norm_stats_path: .* has 7 state dims .* has 4"):
        main(cfg)
    assert not (tmp_path / "x").exists()


def test_dataset_root_that_is_not_a_lerobot_dataset_is_refused_before_training(assets, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    cfg = _config(assets, tmp_path / "x", dataset_root=str(folder))
    with pytest.raises(
        ValueError, match=rf"^dataset_root: {folder} is not a LeRobot dataset \(no meta/info.json\)$"
    ):
        main(cfg)
    assert not (tmp_path / "x").exists()


def test_checkpoint_of_another_model_is_refused(assets, reference, tmp_path):
    # The reference checkpoints are full fine-tuning; resuming them as LoRA must fail before training.
    cfg = dataclasses.replace(reference["cfg"], lora=LoraSettings(rank=4), metrics_file=None)
    with pytest.raises(ValueError, match=r"checkpoint_dir: .*different model: lora"):
        main(cfg)


@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4)])
def test_training_starts_from_exactly_the_pretrained_weights(assets, reference, tmp_path, lora):
    """Built on the meta device and filled by the load (no random init): every tensor is the checkpoint's,
    on CPU, trainable (full) or frozen under adapters (LoRA); then training runs from there."""
    import hashlib

    from data_adapters.registry import get_config_type
    from steps.train import setup as train_setup

    export = reference["result"].export_dir
    digest = hashlib.sha256((Path(export) / "model.safetensors").read_bytes()).hexdigest()
    cfg = _config(assets, tmp_path / "ft", pretrained=export, lora=lora, max_steps=2, save_every=2)
    ct = get_config_type(CONFIG_TYPE)
    model = train_setup.build_model(cfg.resolve(1), ct, "fp32")
    randomly_built = train_setup.build_model(cfg.resolve(1), ct, "fp32", load_weights=False)
    weights = _weights(export)
    state = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in model.state_dict().items()
             if "lora_" not in k}  # fmt: skip
    # The export stores tied tensors once (embed_tokens = lm_head): the extra names must share its storage.
    stored = {state[k].data_ptr() for k in weights}
    assert weights.keys() <= state.keys()
    assert all(state[k].data_ptr() in stored for k in state.keys() - weights.keys())
    for name, value in weights.items():
        assert torch.equal(state[name], value), name
    assert not any(p.is_meta or p.device.type != "cpu" for p in model.parameters())
    # The same parameters train as in a randomly initialised build (the model freezes a few by design).
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in randomly_built.named_parameters() if p.requires_grad}
    assert trainable and not any("base_layer" in n for n in trainable)
    assert any("lora_" in n for n in trainable) == (lora is not None)
    result = main(cfg)
    assert result.final_step == 2 and all(np.isfinite(loss) for _, loss in result.losses)
    # The loaded tensors may be copy-on-write maps of the file: training must never write through to it.
    assert hashlib.sha256((Path(export) / "model.safetensors").read_bytes()).hexdigest() == digest
    trained = _weights(result.export_dir)
    assert any(not torch.equal(trained[k], v) for k, v in weights.items())  # and the model did train
    if lora is None:  # the first step's loss is the pretrained model's, the end of the reference run
        assert result.losses[0][1] < reference["result"].losses[0][1]


def test_pretrained_weights_of_another_model_are_refused(assets, reference, tmp_path):
    # A pi0.5 export as the starting point of a pi0 config type.
    from data_adapters.registry import get_config_type
    from data_adapters.synthetic import make_synthetic_dataset

    ct = get_config_type("pi0_libero")
    root = make_synthetic_dataset(
        tmp_path / "libero", ct, num_episodes=1, min_len=4, max_len=4, image_size=16
    )
    norm = _norm_stats(root, ct, [0], tmp_path / "libero_norm.json")
    cfg = _config(assets, tmp_path / "x", config_type="pi0_libero", dataset_root=str(root), norm_stats_path=str(norm),
                  train_episodes=None, val_episodes=(), pretrained=reference["result"].export_dir)  # fmt: skip
    with pytest.raises(ValueError, match="pretrained: .* does not fit"):
        main(cfg)


def test_cli_parses_config_file_and_overrides(assets, tmp_path):
    cfg = _config(assets, tmp_path / "c")
    cfg.to_json(tmp_path / "cfg.json")
    parsed, result_json = parse_args(["--config", str(tmp_path / "cfg.json"), "--max_steps", "7", "--lora",
                                      '{"rank": 8}', "--result_json", "r.json", "--checkpoint_dir", "s3://b/p"])  # fmt: skip
    assert parsed.max_steps == 7 and parsed.lora == LoraSettings(rank=8) and result_json == "r.json"
    assert parsed.checkpoint_dir == "s3://b/p"
    assert dataclasses.replace(parsed, max_steps=4, lora=None, checkpoint_dir=cfg.checkpoint_dir) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.slow
def test_fsdp_two_processes_resume_matches_single_process(assets, reference, tmp_path):
    """FSDP2 over gloo: 2 steps, a fresh launch resumes from the DCP checkpoint, same run as 1 process."""
    cfg = dataclasses.replace(reference["cfg"], parallelism="fsdp", checkpoint_dir=str(tmp_path / "fsdp"),
                              metrics_file=str(tmp_path / "fsdp.metrics.jsonl"))  # fmt: skip
    first = _run_subprocess(dataclasses.replace(cfg, max_steps=2), tmp_path, torchrun_procs=2)
    assert first.returncode == 0, first.stderr[-4000:]
    assert (tmp_path / "fsdp" / "step_000000002" / "dcp" / ".metadata").is_file()
    second = _run_subprocess(cfg, tmp_path, torchrun_procs=2)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr
    ref_w, got_w = _weights(reference["result"].export_dir), _weights(tmp_path / "fsdp" / "export")
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, rtol=1e-4, atol=1e-5)
    got = _losses(cfg.metrics_file)
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [loss for _, loss in reference["result"].losses],
                               rtol=1e-4)  # fmt: skip


@pytest.mark.slow
def test_fsdp_lora_two_processes_resume_matches_single_process(assets, tmp_path):
    """LoRA under FSDP2 (frozen base weights sharded with the adapters): a resumed 2-process run equals one
    uninterrupted process, and the export is the merged model."""
    lora = dict(lora=LoraSettings(rank=4), max_steps=4, save_every=2, metrics_file=None)
    single = main(_config(assets, tmp_path / "single", **lora))
    cfg = _config(assets, tmp_path / "fsdp", **{**lora, "metrics_file": str(tmp_path / "fsdp.metrics.jsonl")},
                  parallelism="fsdp")  # fmt: skip
    first = _run_subprocess(dataclasses.replace(cfg, max_steps=2), tmp_path, torchrun_procs=2)
    assert first.returncode == 0, first.stderr[-4000:]
    second = _run_subprocess(cfg, tmp_path, torchrun_procs=2)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr
    ref_w, got_w = _weights(single.export_dir), _weights(tmp_path / "fsdp" / "export")
    assert ref_w.keys() == got_w.keys() and not any("lora_" in k for k in got_w)
    for name, value in ref_w.items():
        torch.testing.assert_close(got_w[name], value, rtol=1e-4, atol=1e-5)
    got = _losses(cfg.metrics_file)
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [loss for _, loss in single.losses], rtol=1e-4)
    assert (tmp_path / "fsdp" / "export" / "adapter" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------
# Metrics: MLflow run joined by id, no duplicate points after a resume, rank 0 only
# ---------------------------------------------------------------------------------------------------------


def test_metrics_logger_joins_run_and_skips_steps_already_logged(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from steps.train.metrics_logger import MetricsLogger

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("t")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    first = MetricsLogger(rank=0, tracking=True, max_steps=6, tracking_uri=uri)
    first.log_params({"lora.rank": 8, "global_batch": 2})
    for step in range(1, 5):  # steps 3 and 4 happen after the checkpoint at 2, then the job dies
        first.log_metrics({"train/loss": 1.0 / step}, step)
    assert first.wait_sent(60)  # (a killed job may or may not have sent them; here they are in)
    assert "step 4/6" in capsys.readouterr().err

    resumed = MetricsLogger(rank=0, tracking=True, max_steps=6, start_step=2, tracking_uri=uri)
    resumed.log_params({"lora.rank": 8, "global_batch": 2})  # same params again: accepted
    for step in range(3, 7):
        resumed.log_metrics({"train/loss": 1.0 / step}, step)
    resumed.close()
    history = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
    run = client.get_run(run_id)
    assert run.data.params["lora.rank"] == "8"
    assert run.info.status == "RUNNING"  # the flow owns a joined run and ends it

    quiet = MetricsLogger(rank=1, tracking=True, max_steps=6, tracking_uri=uri)
    quiet.log_metrics({"train/loss": 5.0}, 7)
    quiet.close()
    assert quiet.run_id is None and "step 7" not in capsys.readouterr().err
