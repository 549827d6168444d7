"""Supervised fine-tuning of pi0 / pi0.5 on a LeRobot dataset, tracked in MLflow.

    python flows/sft_flow.py run --config_type pi05_metaworld --demo      # offline, minutes, CPU
    python flows/sft_flow.py run --config_type pi05_libero --pretrained <ckpt> --lora
    python flows/sft_flow.py --config cluster cluster.yaml run ...         # nodes, GPUs, image
    python flows/sft_flow.py resume                                        # after a failure
    python flows/sft_flow.py run --config_type my_text.yaml --lora         # text SFT of a causal LM (kind: text)
    python flows/sft_flow.py run --config_type text_sft --demo             # offline text demo (tiny LM, chat rows)

start (validate, MLflow run, lineage id) -> fetch_data -> compute_norm_stats -> train (@torchrun on
``cluster.nodes`` nodes) -> join -> evaluate -> register -> end. Each step calls one function in
``steps/``; heavy libraries are imported inside the steps. MLflow: ``$MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db`` in the working directory. Credentials (Hub, S3, MLflow) come from the
environment or ``@secrets``, never from Parameters.
"""

import atexit
import contextlib
import gc
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

from flows.quiet import quiet_defaults  # noqa: E402

quiet_defaults()  # before Metaflow and MLflow are imported: no pylint notice, no MLflow INFO lines

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

from flows import torchrun_compat  # noqa: E402
from flows.cluster import parse_cluster, sft_deployment  # noqa: E402
from flows.step_errors import InvalidInput, reported  # noqa: E402

torchrun_compat.install()


@sft_deployment
class SFTFlow(FlowSpec):
    """Fine-tune pi0 / pi0.5 (full or LoRA) on a LeRobot dataset; evaluate; register in MLflow."""

    cluster = Config("cluster", default_value="{}", parser=parse_cluster,
                     help="Cluster shape (JSON/YAML): nodes, gpus_per_node, procs_per_node, cpu, memory, "
                          "disk, shared_memory, image, backend (local|kubernetes|batch), retries, "
                          "retry_backoff_s, secrets, checkpoint_root, timeout_hours.")  # fmt: skip

    config_type = Parameter("config_type", default="pi05_metaworld",
                            help="Built-in config type (pi0_libero, pi05_libero, pi0_maniskill, pi05_maniskill, "
                                 "pi05_metaworld, pi05_calvin) or a path to a custom YAML.")  # fmt: skip
    dataset = Parameter("dataset", default=None, type=str,
                        help="Hub dataset id, local LeRobot folder, s3:// URI or metaworld://... (default: the "
                             "config type's dataset; with --demo its demo dataset: demo://metaworld_demo, the "
                             "Meta-World renders shipped in the repository, for Meta-World types, "
                             "demo://synthetic/<config type> (generated) for the others, demo://chat_demo for "
                             "text).")  # fmt: skip
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
    lora_rank = Parameter("lora_rank", default=None, type=int,
                          help="LoRA rank (only with --lora; default: the LoRA preset's, 32).")  # fmt: skip
    pretrained = Parameter("pretrained", default=None, type=str,
                           help="Base weights: local folder/file or Hub id (safetensors); none = random init "
                                "(text: the model; with --demo a tiny one built locally, demo://tiny_chat_lm).")  # fmt: skip
    tokenizer = Parameter("tokenizer", default=None, type=str,
                          help="SentencePiece tokenizer: path, https:// URL, hf://org/repo/file or 'tiny' "
                               "(default: PaliGemma's; 'tiny' with --demo).")  # fmt: skip
    eval_episodes = Parameter("eval_episodes", default=2, type=int, help="Episodes held out for evaluation.")
    eval_samples = Parameter("eval_samples", default=None, type=int,
                             help="Frames evaluated, evenly spaced (default: 256; 32 with --demo).")  # fmt: skip
    sim_episodes = Parameter("sim_episodes", default=None, type=int,
                             help="Closed-loop episodes per task for simulator config types (Meta-World, LIBERO); "
                                  "0 = off (default: 10; 2 with --demo).")  # fmt: skip
    sim_max_steps = Parameter("sim_max_steps", default=None, type=int,
                              help="Step limit of a closed-loop episode (default: the benchmark's, Meta-World 500, "
                                   "LIBERO 220-520 by suite; 100 with --demo).")  # fmt: skip
    sim_tasks = Parameter("sim_tasks", default=None, type=str,
                          help="Comma-separated tasks to roll out: Meta-World names, LIBERO names or indices "
                               "within --sim_suite (default: the dataset's tasks for generated data, else all "
                               "of MT50 / of the suite).")  # fmt: skip
    sim_suite = Parameter("sim_suite", default=None, type=str,
                          help="LIBERO suite for closed-loop evaluation: libero_spatial (default), "
                               "libero_object, libero_goal or libero_10.")  # fmt: skip
    sim_workers = Parameter("sim_workers", default=None, type=int,
                            help="Simulator processes for closed-loop evaluation (0: in the evaluate process; "
                                 "default: one per core, at most one per episode).")  # fmt: skip
    experiment = Parameter("experiment", default="vla-sft", help="MLflow experiment name.")
    model_name = Parameter("model_name", default=None, type=str,
                           help="Registered model name (default: the config type's name).")  # fmt: skip
    train_options = Parameter("train_options", default=None, type=JSONType,
                              help='Extra TrainConfig fields as JSON, e.g. \'{"precision": "bf16"}\'.')  # fmt: skip
    demo = Parameter("demo", default=False, type=bool, is_flag=True,
                     help="Offline demo: tiny model, tiny tokenizer, the config type's demo dataset (see "
                          "--dataset), a few steps.")  # fmt: skip

    @step
    @reported
    def start(self):
        """Validate every input in seconds; resolve the run config once; create or reuse the MLflow run."""
        from steps.config.validate import running_remotely, validate_run_inputs

        try:
            with _timed(self, "start.validate"):
                run_config = validate_run_inputs(**self._cli_values(), nodes=self.cluster.nodes,
                                                 procs_per_node=self.cluster.procs_per_node,
                                                 gpus_per_node=self.cluster.gpus_per_node,
                                                 remote=running_remotely(self.cluster.backend))  # fmt: skip
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        self.run_config = run_config.to_dict()
        with _timed(self, "start.mlflow"):
            self._start_tracking(run_config)
        self.next(self.fetch_data)

    def _cli_values(self) -> dict:
        names = ("config_type", "dataset", "dataset_revision", "max_steps", "batch_size", "learning_rate", "lora",
                 "lora_rank", "pretrained", "tokenizer", "eval_episodes", "eval_samples", "sim_episodes",
                 "sim_max_steps", "sim_tasks", "sim_suite", "sim_workers", "experiment", "model_name",
                 "train_options", "demo")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def _start_tracking(self, run_config):
        from steps.registry import tracking
        from steps.train.launch import checkpoint_dir_for

        self.lineage_id = tracking.lineage_id_for(current.flow_name, current.run_id, current.origin_run_id)
        self.tracking_uri, self.git_commit = run_config.tracking_uri, tracking.git_commit(_ROOT)
        self.mlflow_run_id = tracking.start_run_tracking(
            run_config, self.lineage_id, run_name=f"{run_config.config_type.name}-{current.run_id}",
            pathspec=f"{current.flow_name}/{current.run_id}", metaflow_run_id=current.run_id,
            git_commit=self.git_commit)  # fmt: skip
        _tag_metaflow_run(f"mlflow_run_id:{self.mlflow_run_id}")
        root = self.cluster.checkpoint_root or _datastore_checkpoint_root(self)
        self.checkpoint_dir = checkpoint_dir_for(root, self.lineage_id)
        print(f"lineage {self.lineage_id} · MLflow run {self.mlflow_run_id} at {self.tracking_uri} · "
              f"checkpoints {self.checkpoint_dir}")  # fmt: skip

    @step
    @reported
    def fetch_data(self):
        """Download (or locate / generate) the dataset, check its schema, split episodes; get the tokenizer."""
        from steps.tasks import task_for

        with _timed(self, "fetch_data"):
            self.fetched, self.tokenizer_model = task_for(self.run_config).fetch()
        self.next(self.compute_norm_stats)

    @step
    @reported
    def compute_norm_stats(self):
        """Exact normalization statistics over the training episodes (text: token-length statistics)."""
        from steps.tasks import task_for

        with _timed(self, "compute_norm_stats"):
            self.norm_stats = task_for(self.run_config).compute_stats(
                self.fetched, out_path=_run_dir(self) / "norm_stats.json", who=_identity(self)
            )
        self.next(self.train, num_parallel=self.cluster.nodes)

    @card(type="blank", id="train")
    @retry(times=cluster.retries, minutes_between_retries=cluster.retry_backoff_minutes)
    @timeout(hours=cluster.timeout_hours)
    @resources(cpu=cluster.cpu, memory=cluster.memory, gpu=cluster.gpus_per_node)
    @torchrun
    @step
    @reported
    def train(self):
        """``python -m steps.train`` under torchrun on every node; checkpoints under the lineage id, so retries
        resume."""
        from steps.tasks import task_for
        from steps.train import launch

        task, self.node_index = task_for(self.run_config), current.parallel.node_index
        job = launch.prepare_training(task, self.fetched, self.norm_stats, self.tokenizer_model,
                                      workdir=_run_dir(self) / f"node{self.node_index}",
                                      checkpoint_dir=self.checkpoint_dir, tracking_uri=self.tracking_uri)  # fmt: skip
        os.environ.update(launch.worker_environment(self.mlflow_run_id, self.tracking_uri, _ROOT))
        with _timed(self, "train.torchrun"), job.user_errors():
            current.torch.run(entrypoint=launch.TRAIN_ENTRYPOINT, entrypoint_args=job.entrypoint_args,
                              torchrun_args=dict(launch.TORCHRUN_ARGS), nproc_per_node=task.rc.cluster.procs_per_node)  # fmt: skip
        self.train_result = job.read_result() if self.node_index == 0 else None
        self.export_uri = launch.publish_export(self.train_result["export_dir"], self.checkpoint_dir) if self.train_result else None  # fmt: skip
        self._render_train_card(task, job)
        self.next(self.join)

    def _render_train_card(self, task, job):
        from flows.cards import render_train_card
        from steps.train.launch import read_metrics_file

        render_train_card(current.card["train"], title=f"{task.rc.config_type.name} ({task.rc.finetune})",
                          result=self.train_result, node_index=self.node_index, mlflow_run_id=self.mlflow_run_id,
                          history=read_metrics_file(job.config.metrics_file))  # fmt: skip

    @step
    @reported
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
    @reported
    def evaluate(self):
        """Held-out metrics (validation loss, action-chunk errors, plots) and, for simulator config types,
        closed-loop success rates of the exported model, through the registered model's inference path."""
        from flows.cards import render_eval_card
        from steps.tasks import task_for

        task = task_for(self.run_config)
        with _timed(self, "evaluate"):  # a SimulatorNotReady leaves @reported as one line naming the fix
            outcome = task.evaluate(self.export_uri, self.fetched, workdir=_run_dir(self) / "evaluate",
                                    who=_identity(self))  # fmt: skip
        self.eval_metrics, self.eval_details, self.eval_files = (
            outcome.metrics,
            outcome.details,
            outcome.files,
        )
        if outcome.card is not None:
            render_eval_card(current.card["evaluate"], title=task.rc.config_type.name,
                             mlflow_run_id=self.mlflow_run_id, **outcome.card)  # fmt: skip
        self.next(self.register)

    @step
    @reported
    def register(self):
        """Register the exported model (idempotent per lineage) with lineage tags; alias ``candidate``;
        close the MLflow run (here rather than in ``end``, which then needs no MLflow import)."""
        from steps.tasks import task_for

        with _timed(self, "register"):
            self.model_version = task_for(self.run_config).register(
                self.export_uri, self.fetched, workdir=_run_dir(self) / "register", who=_identity(self),
                metrics=self.eval_metrics, files=self.eval_files, final_step=self.train_result["final_step"])  # fmt: skip
        self.next(self.end)

    @step
    @reported
    def end(self):
        """Say where everything is: model version, dataset, key metrics, how to browse and promote."""
        from steps.registry.summary import run_summary

        print(run_summary(model_version=self.model_version, metrics=self.eval_metrics, mlflow_run_id=self.mlflow_run_id,
                          tracking_uri=self.tracking_uri, dataset=self.fetched.get("dataset_id")))  # fmt: skip


def _run_dir(flow) -> Path:
    """This lineage's working folder on this machine (node inputs, stats, evaluation outputs)."""
    from steps.cache import default_cache_root

    return default_cache_root() / "runs" / flow.lineage_id


def _identity(flow):
    """Where this run is recorded (MLflow run, lineage, Metaflow pathspecs), for the task's steps."""
    from steps.tasks import RunIdentity

    origin = f"{current.flow_name}/{current.origin_run_id}" if current.origin_run_id else None
    return RunIdentity(lineage_id=flow.lineage_id, mlflow_run_id=flow.mlflow_run_id, tracking_uri=flow.tracking_uri,
                       pathspec=f"{current.flow_name}/{current.run_id}", origin_pathspec=origin,
                       git_commit=flow.git_commit)  # fmt: skip


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
    from flows.run_status import main

    main(SFTFlow)  # SFTFlow() with the no-retry exit code for errors a retry cannot fix
