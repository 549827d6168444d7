"""Supervised fine-tuning of pi0 / pi0.5 on a LeRobot dataset, tracked in MLflow.

    python flows/sft_flow.py run --config_type pi05_metaworld --demo      # offline, minutes, CPU
    python flows/sft_flow.py run --config_type pi05_libero --pretrained <ckpt> --lora
    python flows/sft_flow.py --config cluster cluster.yaml run ...         # nodes, GPUs, image
    python flows/sft_flow.py resume                                        # after a failure
    python flows/sft_flow.py run --config_type my_text.yaml --lora         # text SFT of a causal LM (kind: text)

start (validate, MLflow run, lineage id) -> fetch_data -> compute_norm_stats -> train (@torchrun on
``cluster.nodes`` nodes) -> join -> evaluate -> register -> end. Each step calls one function in
``steps/``; heavy libraries are imported inside the steps. MLflow: ``$MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db`` in the working directory. Credentials (Hub, S3, MLflow) come from the
environment or ``@secrets``, never from Parameters.
"""

import atexit
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

# Every Metaflow task (and card subprocess) runs this file. At interpreter exit Python garbage-collects
# every object still alive: after torch, MLflow and MuJoCo imports that is seconds per task on 2 cores
# (benchmarks/bench_exit.py: 2.8 s -> 0.45 s with torch, peft and MLflow imported),
# spent after the step's artifacts, metadata and cards are written, before the runtime can start the next
# task. gc.freeze (atexit runs before that final collection) moves them out of the collector's reach.
# Cost: objects in reference cycles are not finalized at exit, which Python never guarantees anyway.
atexit.register(gc.freeze)

# Make steps/, model_zoo/, data_adapters/ and flows/ importable: the repository root when run from a
# checkout, the code package root in a remote task (the packages are shipped there, see flows/cluster.py).
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE if (_HERE / "steps").is_dir() else _HERE.parent
sys.path.insert(0, str(_ROOT))

from flows.user import ensure_metaflow_user  # noqa: E402

ensure_metaflow_user()  # before Metaflow is imported: root, or no user variable, is "Unknown user" to it

from metaflow import (  # noqa: E402
    Config,
    FlowSpec,
    JSONType,
    Parameter,
    card,
    current,
    resources,
    retry,
    step,
    timeout,
    torchrun,
)
from metaflow.exception import MetaflowException  # noqa: E402

from flows import torchrun_compat  # noqa: E402
from flows.cluster import parse_cluster, sft_deployment  # noqa: E402

torchrun_compat.install()


class InvalidInput(MetaflowException):
    headline = "Invalid input"


@sft_deployment
class SFTFlow(FlowSpec):
    """Fine-tune pi0 / pi0.5 (full or LoRA) on a LeRobot dataset; evaluate; register in MLflow."""

    cluster = Config("cluster", default_value="{}", parser=parse_cluster,
                     help="Cluster shape (JSON/YAML): nodes, gpus_per_node, procs_per_node, cpu, memory, "
                          "disk, shared_memory, image, backend (local|kubernetes|batch), retries, "
                          "checkpoint_root, timeout_hours.")  # fmt: skip

    config_type = Parameter("config_type", default="pi05_metaworld",
                            help="Built-in config type (pi0_libero, pi05_libero, pi0_maniskill, pi05_maniskill, "
                                 "pi05_metaworld, pi05_calvin) or a path to a custom YAML.")  # fmt: skip
    dataset = Parameter("dataset", default=None, type=str,
                        help="Hub dataset id, local LeRobot folder, s3:// URI or metaworld://... "
                             "(default: the config type's dataset; with --demo a small generated one).")  # fmt: skip
    dataset_revision = Parameter(
        "dataset_revision", default=None, type=str, help="Hub revision (tag/commit)."
    )
    max_steps = Parameter(
        "max_steps", default=None, type=int, help="Optimizer steps (default: config preset)."
    )
    batch_size = Parameter("batch_size", default=None, type=int,
                           help="Global batch over all processes (default: config preset).")  # fmt: skip
    learning_rate = Parameter(
        "learning_rate", default=None, type=float, help="Peak learning rate (default: preset)."
    )
    lora = Parameter("lora", default=False, type=bool, is_flag=True, help="LoRA instead of full fine-tuning.")
    lora_rank = Parameter("lora_rank", default=32, type=int, help="LoRA rank (with --lora).")
    pretrained = Parameter("pretrained", default=None, type=str,
                           help="Base weights: local folder/file or Hub id (safetensors); none = random init.")  # fmt: skip
    tokenizer = Parameter("tokenizer", default=None, type=str,
                          help="SentencePiece tokenizer: path, https:// URL, hf://org/repo/file or 'tiny' "
                               "(default: PaliGemma's; 'tiny' with --demo).")  # fmt: skip
    eval_episodes = Parameter("eval_episodes", default=2, type=int, help="Episodes held out for evaluation.")
    eval_samples = Parameter("eval_samples", default=None, type=int,
                             help="Frames evaluated, evenly spaced (default: 256; 32 with --demo).")  # fmt: skip
    sim_episodes = Parameter("sim_episodes", default=None, type=int,
                             help="Closed-loop episodes per task for simulator config types (Meta-World); "
                                  "0 = off (default: 10; 2 with --demo).")  # fmt: skip
    sim_max_steps = Parameter("sim_max_steps", default=None, type=int,
                              help="Step limit of a closed-loop episode (default: 500; 100 with --demo).")  # fmt: skip
    sim_tasks = Parameter("sim_tasks", default=None, type=str,
                          help="Comma-separated Meta-World tasks to roll out (default: the dataset's tasks "
                               "for generated data, else all 50).")  # fmt: skip
    experiment = Parameter("experiment", default="vla-sft", help="MLflow experiment name.")
    model_name = Parameter("model_name", default=None, type=str,
                           help="Registered model name (default: the config type's name).")  # fmt: skip
    train_options = Parameter("train_options", default=None, type=JSONType,
                              help='Extra TrainConfig fields as JSON, e.g. \'{"precision": "bf16"}\'.')  # fmt: skip
    demo = Parameter("demo", default=False, type=bool, is_flag=True,
                     help="Offline demo: tiny model, small generated dataset, tiny tokenizer, a few steps.")  # fmt: skip

    @step
    def start(self):
        """Validate every input in seconds; create or reuse the MLflow run; fix the lineage id."""
        from steps.config import validate as validate_inputs
        from steps.evaluate.export_eval import check_sim_options
        from steps.fetch.run_inputs import PALIGEMMA_TOKENIZER_URL, TINY_TOKENIZER, check_tokenizer_spec
        from steps.train import launch as train_launch

        try:
            with _timed(self, "start.validate"):
                plan = validate_inputs.validate_run_inputs(
                    config_type=self.config_type, dataset=self.dataset, dataset_revision=self.dataset_revision,
                    max_steps=self.max_steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                    lora=self.lora, lora_rank=self.lora_rank, pretrained=self.pretrained,
                    eval_episodes=self.eval_episodes, eval_samples=self.eval_samples, demo=self.demo,
                    nodes=self.cluster.nodes, procs_per_node=self.cluster.procs_per_node,
                    remote=validate_inputs.running_remotely(self.cluster.backend), tokenizer=self.tokenizer,
                )  # fmt: skip
            self.tokenizer_spec = self.tokenizer or (TINY_TOKENIZER if self.demo else PALIGEMMA_TOKENIZER_URL)
            # Text: --tokenizer is a Hugging Face folder / Hub id, kept in the plan (none: the model's own).
            if plan.kind == "text":
                self.tokenizer_spec = None
            else:
                check_tokenizer_spec(self.tokenizer_spec)
            train_launch.check_train_options(self.train_options)
            check_sim_options(self.demo, self.sim_episodes, self.sim_max_steps, self.sim_tasks)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self.plan = {**plan.to_dict(), "finetune": plan.finetune, "world_size": plan.world_size}
        with _timed(self, "start.mlflow"):
            self._start_tracking(plan)
        self.next(self.fetch_data)

    def _start_tracking(self, plan):
        from steps.registry import tracking
        from steps.train.launch import checkpoint_dir_for

        self.lineage_id = tracking.lineage_id_for(current.flow_name, current.run_id, current.origin_run_id)
        self.tracking_uri = plan.tracking_uri
        self.mlflow_run_id, _ = tracking.get_or_create_run(
            plan.tracking_uri, self.experiment, self.lineage_id, run_name=f"{plan.config_type_name}-{current.run_id}",
            tags={tracking.PATHSPEC_TAG: f"{current.flow_name}/{current.run_id}",
                  tracking.METAFLOW_RUN_TAG: current.run_id, "config_type": plan.config_type_name,
                  "git_commit": tracking.git_commit(_ROOT) or "unknown"},
        )  # fmt: skip
        tracking.log_params(
            plan.tracking_uri, self.mlflow_run_id, {f"plan.{k}": v for k, v in self.plan.items()}
        )
        _tag_metaflow_run(f"mlflow_run_id:{self.mlflow_run_id}")
        root = self.cluster.checkpoint_root or _datastore_checkpoint_root(self)
        self.checkpoint_dir = checkpoint_dir_for(root, self.lineage_id)
        print(f"lineage {self.lineage_id} · MLflow run {self.mlflow_run_id} at {plan.tracking_uri} · "
              f"checkpoints {self.checkpoint_dir}")  # fmt: skip

    @step
    def fetch_data(self):
        """Download (or locate / generate) the dataset, check its schema, split episodes; get the tokenizer."""
        from steps.fetch.run_inputs import fetch_run_dataset, resolve_tokenizer

        with _timed(self, "fetch_data"):
            self.fetched = fetch_run_dataset(self.plan).to_dict()
            spec = self.tokenizer_spec  # None for text config types
            self.tokenizer_model = resolve_tokenizer(spec).read_bytes() if spec else b""
        self.next(self.compute_norm_stats)

    @step
    def compute_norm_stats(self):
        """Exact normalization statistics over the training episodes."""
        from data_adapters.config_types import get_config_type
        from steps.fetch.run_inputs import default_cache_dir
        from steps.stats.norm_stats import compute_norm_stats

        out = default_cache_dir() / "runs" / self.lineage_id / "norm_stats.json"
        with _timed(self, "compute_norm_stats"):
            # Text: token-length statistics (logged to MLflow) instead of action normalization.
            if self.plan.get("kind") == "text":
                from steps.text.flow_steps import compute_text_run_stats

                self.norm_stats = compute_text_run_stats(self.plan, self.fetched, out_path=out,
                                                         tracking_uri=self.tracking_uri, run_id=self.mlflow_run_id)  # fmt: skip
            else:
                stats = compute_norm_stats(get_config_type(self.plan["config_type"]), self.fetched["path"],
                                           self.fetched["train_episodes"], out_path=out)  # fmt: skip
                self.norm_stats = stats.to_json_dict()
        self.next(self.train, num_parallel=self.cluster.nodes)

    @card(type="blank", id="train")
    @retry(times=cluster.retries)
    @timeout(hours=cluster.timeout_hours)
    @resources(cpu=cluster.cpu, memory=cluster.memory, gpu=cluster.gpus_per_node)
    @torchrun
    @step
    def train(self):
        """torchrun steps/train/trainer.py on every node; checkpoints under the lineage id, so retries resume."""
        from steps.fetch.run_inputs import default_cache_dir
        from steps.train import launch as train_launch

        node = current.parallel.node_index
        workdir = default_cache_dir() / "runs" / self.lineage_id / f"node{node}"
        inputs = train_launch.prepare_node_inputs(self.plan, self.fetched, self.norm_stats, self.tokenizer_model,
                                                  workdir)  # fmt: skip
        config = train_launch.build_train_config(
            self.plan, inputs, train_episodes=self.fetched["train_episodes"],
            val_episodes=self.fetched["val_episodes"], checkpoint_dir=self.checkpoint_dir,
            export_dir=train_launch.export_dir_for(self.checkpoint_dir, workdir),
            metrics_file=str(workdir / "metrics.jsonl"), tracking_uri=self.tracking_uri, options=self.train_options,
        )  # fmt: skip
        config.to_json(workdir / "train_config.json")
        result_path = workdir / "train_result.json"
        result_path.unlink(missing_ok=True)
        # The training processes join the flow's MLflow run and import the project from its root.
        os.environ.update(MLFLOW_RUN_ID=self.mlflow_run_id, MLFLOW_TRACKING_URI=self.tracking_uri,
                          PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
        with _timed(self, "train.torchrun"):
            current.torch.run(
                entrypoint=train_launch.TRAIN_ENTRYPOINT, torchrun_args=dict(train_launch.TORCHRUN_ARGS),
                entrypoint_args=["--config", str(workdir / "train_config.json"), "--result_json", str(result_path)],
                nproc_per_node=self.plan["procs_per_node"],
            )  # fmt: skip
        self.node_index = node
        self.train_result = json.loads(result_path.read_text()) if node == 0 else None
        if node == 0:
            self.export_uri = train_launch.publish_export(
                self.train_result["export_dir"], self.checkpoint_dir
            )
        from flows.cards import render_train_card

        render_train_card(current.card["train"], plan=self.plan, result=self.train_result, node_index=node,
                          history=train_launch.read_metrics_file(config.metrics_file),
                          mlflow_run_id=self.mlflow_run_id)  # fmt: skip
        self.next(self.join)

    @step
    def join(self, inputs):
        """Keep node 0's training result (the other nodes trained the same model)."""
        main = next(i for i in inputs if i.node_index == 0)
        self.train_result = {k: v for k, v in main.train_result.items() if k not in ("losses", "val_losses")}
        self.export_uri = main.export_uri
        self.timings = main.timings
        self.merge_artifacts(inputs, exclude=["node_index", "train_result", "export_uri", "timings"])
        self.next(self.evaluate)

    @card(type="blank", id="evaluate")
    @resources(cpu=cluster.cpu, memory=cluster.memory, gpu=cluster.eval_gpus)
    @step
    def evaluate(self):
        """Held-out metrics (validation loss, action-chunk errors, plots) and, for simulator config types,
        closed-loop success rates of the exported model, through the registered model's inference path."""
        from steps.evaluate.export_eval import evaluate_export, sim_settings
        from steps.fetch.run_inputs import default_cache_dir
        from steps.train import launch as train_launch

        workdir = default_cache_dir() / "runs" / self.lineage_id / "evaluate"
        export_dir = train_launch.local_export(self.export_uri, workdir)
        if self.plan.get("kind") == "text":  # causal LM: loss, perplexity, completions table (in MLflow)
            from steps.text.flow_steps import evaluate_text_run

            with _timed(self, "evaluate"):
                result = evaluate_text_run(export_dir, self.plan, self.fetched, tracking_uri=self.tracking_uri,
                                           run_id=self.mlflow_run_id,
                                           device="cuda" if self.cluster.gpus_per_node else "cpu")  # fmt: skip
            self.eval_metrics, self.eval_details = result.metrics, result.details
            self.next(self.register)
            return
        sim_episodes, sim_max_steps = sim_settings(self.plan["demo"], self.sim_episodes, self.sim_max_steps)
        with _timed(self, "evaluate"):
            dataset_root = train_launch.node_dataset_root(self.plan, self.fetched)
            result = evaluate_export(export_dir, dataset_root, self.fetched["val_episodes"],
                                     max_samples=self.plan["eval_samples"], out_dir=workdir / "outputs",
                                     device="cuda" if self.cluster.gpus_per_node else "cpu",
                                     sim_episodes=sim_episodes, sim_max_steps=sim_max_steps,
                                     sim_tasks=[t.strip() for t in self.sim_tasks.split(",")] if self.sim_tasks else None)  # fmt: skip
        # Logged to MLflow by register, with the version's tags: this task then never imports MLflow
        # (~3 s of import and store set-up). The plots and rollout media are a few MB.
        self.eval_metrics = result.metrics
        self.eval_files = {name: Path(path).read_bytes() for name, path in result.artifacts.items()}
        self.eval_details = result.details
        from flows.cards import render_eval_card

        render_eval_card(current.card["evaluate"], plan=self.plan, metrics=result.metrics, episodes=result.episodes,
                         seconds=result.seconds, mlflow_run_id=self.mlflow_run_id,
                         images=result.artifacts)  # fmt: skip
        self.next(self.register)

    @step
    def register(self):
        """Register the exported model (idempotent per lineage) with lineage tags; alias ``candidate``;
        close the MLflow run (here rather than in ``end``, which then needs no MLflow import)."""
        from steps.fetch.run_inputs import default_cache_dir
        from steps.registry import model_logging, register, tracking
        from steps.train import launch as train_launch

        export_dir = train_launch.local_export(
            self.export_uri, default_cache_dir() / "runs" / self.lineage_id / "register"
        )
        tags = register.lineage_tags(
            lineage_id=self.lineage_id, pathspec=f"{current.flow_name}/{current.run_id}",
            origin_pathspec=f"{current.flow_name}/{current.origin_run_id}" if current.origin_run_id else None,
            config_type=self.plan["config_type_name"], dataset=self.plan["dataset"],
            dataset_revision=self.fetched.get("revision"), dataset_fingerprint=self.fetched.get("fingerprint"),
            base_checkpoint=self.plan["pretrained"], finetune=self.plan["finetune"],
            git_commit=tracking.git_commit(_ROOT),
        )  # fmt: skip
        if self.plan.get("kind") == "text":  # causal LM: registered as a pyfunc that generates text
            from steps.text.flow_steps import register_text_run

            with _timed(self, "register"):
                self.model_version = register_text_run(
                    export_dir, default_cache_dir() / "runs" / self.lineage_id / "register",
                    tracking_uri=self.tracking_uri, run_id=self.mlflow_run_id, lineage_id=self.lineage_id, tags=tags,
                    name=self.model_name or register.model_name_for(self.plan["config_type"]),
                    metrics=self.eval_metrics, final_step=self.train_result["final_step"],
                    run_tags={tracking.PATHSPEC_TAG: f"{current.flow_name}/{current.run_id}",
                              "metaflow.origin_run_id": current.origin_run_id or ""},
                )  # fmt: skip
            self.next(self.end)
            return
        with _timed(self, "register"):
            model_logging.write_model_card(export_dir, metrics=self.eval_metrics, lineage=tags)
            version = register.register_model(
                self.tracking_uri, name=self.model_name or register.model_name_for(self.plan["config_type"]),
                model_dir=export_dir, run_id=self.mlflow_run_id, lineage_id=self.lineage_id, tags=tags,
                metrics=self.eval_metrics,
                log_model=lambda: model_logging.log_policy_model(
                    export_dir, run_id=self.mlflow_run_id, tracking_uri=self.tracking_uri).model_uri,
            )  # fmt: skip
            tracking.log_metrics(self.tracking_uri, self.mlflow_run_id,
                                 {f"eval/{k}": v for k, v in self.eval_metrics.items()},
                                 step=self.train_result["final_step"])  # fmt: skip
            tracking.log_file_contents(
                self.tracking_uri, self.mlflow_run_id, self.eval_files, artifact_path="eval"
            )
            # The MLflow run points at the Metaflow run that finished it (a resume is a new Metaflow run).
            tracking.set_tags(self.tracking_uri, self.mlflow_run_id,
                              {tracking.PATHSPEC_TAG: f"{current.flow_name}/{current.run_id}",
                               "metaflow.origin_run_id": current.origin_run_id or ""})  # fmt: skip
            tracking.finish_run(self.tracking_uri, self.mlflow_run_id)
        self.model_version = {"name": version.name, "version": version.version, "source": version.source,
                              "alias": version.alias, "created": version.created}  # fmt: skip
        self.next(self.end)

    @step
    def end(self):
        """Say where everything is."""
        mv = self.model_version
        print(f"model {mv['name']} version {mv['version']} (alias {mv['alias']}) · MLflow run {self.mlflow_run_id}\n"
              f"metrics {json.dumps(self.eval_metrics)}\n"
              f"browse: mlflow ui --backend-store-uri {self.tracking_uri}")  # fmt: skip


@contextlib.contextmanager
def _timed(flow, name: str):
    """Record the seconds of a step's core call in the ``timings`` artifact (benchmarks read it)."""
    started = time.perf_counter()
    yield
    flow.timings = {**getattr(flow, "timings", {}), name: round(time.perf_counter() - started, 3)}


def _datastore_checkpoint_root(flow) -> str:
    """``<datastore root>/vla_sft/checkpoints``: on S3 for remote datastores, under .metaflow locally."""
    storage = flow._datastore._storage_impl  # Metaflow has no public accessor for the run's datastore root
    return f"{storage.datastore_root.rstrip('/')}/vla_sft/checkpoints"


def _tag_metaflow_run(tag: str) -> None:
    """Tag this Metaflow run (e.g. with its MLflow run id) so either side finds the other."""
    from metaflow import Run

    try:
        Run(f"{current.flow_name}/{current.run_id}", _namespace_check=False).add_tag(tag)
    except Exception as exc:  # tagging is a convenience; the artifact mlflow_run_id is the real link
        print(f"could not tag the Metaflow run with {tag}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    SFTFlow()
