"""The one rollout loop: episodes of any ``Simulator`` driven by any policy, serially or several at once.

Replanning rule (the same for every benchmark): query the policy, execute the first ``replan_steps``
actions of its chunk (all of it when None or when the chunk is shorter), query again. An episode ends at
its first success or at its step limit.

Parallel evaluation: ``workers`` simulator processes (``steps.sim.worker``) each hold one simulator;
the loop steps them in lockstep and batches the policy over every environment that needs a new chunk,
so a node's cores run the simulators while the policy sees batches. ``workers=0`` runs the simulator in
this process (same loop, no subprocess).

The policy is ``policy(observations: list[dict]) -> float [B, H, action_dim]`` (``steps.policy.Policy.predict``
is one); ``one_at_a_time(fn)`` adapts a single-observation callable. numpy and the standard library only
(plus imageio when saving media), so the loop also runs inside a simulator's own venv.
"""

from __future__ import annotations

import json
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steps.sim.base import Benchmark, check_chunk, group_mean

BatchPolicy = Callable[[list[dict]], Any]


@dataclass(frozen=True)
class EpisodeSpec:
    task: str
    episode: int  # index within the task (a benchmark's fixed initial state, where it has them)
    seed: int


@dataclass
class EpisodeOutcome:
    task: str
    episode: int
    seed: int
    success: bool
    steps: int  # steps executed (the success step when it succeeded)
    seconds: float = 0.0


@dataclass
class RolloutResult:
    """Success rates are fractions in [0, 1]; ``per_task`` keyed by task, ``per_group`` by group."""

    benchmark: str
    group_kind: str
    success_rate: float
    per_task: dict[str, float]
    per_group: dict[str, float]
    episodes: list[EpisodeOutcome]
    media: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Where the time went: "policy" (this process), and the simulators' own timers summed over workers
    # ("reset", "physics", "render", ...), plus "workers" (how many ran at once).
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * len(self.episodes) / self.seconds if self.seconds else 0.0

    def metrics(self, prefix: str = "sim") -> dict[str, float]:
        """Flat metric dict for MLflow / cards: sim/success/<task>, sim/<group_kind>/<group>, ..."""
        lengths = [o.steps for o in self.episodes]
        out = {
            f"{prefix}/success_rate": self.success_rate,
            f"{prefix}/episodes": float(len(self.episodes)),
            f"{prefix}/episode_length_mean": float(np.mean(lengths)) if lengths else 0.0,
            f"{prefix}/episodes_per_minute": round(self.episodes_per_minute, 3),
        }
        out.update({f"{prefix}/success/{k}": v for k, v in self.per_task.items()})
        out.update({f"{prefix}/{self.group_kind}/{k}": v for k, v in self.per_group.items()})
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "episodes_per_minute": self.episodes_per_minute}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path


def one_at_a_time(policy_fn: Callable[[dict], Any]) -> BatchPolicy:
    """A batch policy that calls a single-observation ``policy_fn`` once per observation."""

    def batch(observations: list[dict]) -> list:
        return [policy_fn(obs) for obs in observations]

    return batch


def episode_plan(tasks: Sequence[str], episodes_per_task: int, seeds: Sequence[int]) -> list[EpisodeSpec]:
    """Every (task, episode) pair, episode-major (episode 0 of every task first, then 1, ...), so the first
    episodes recorded and a run cut short cover all tasks."""
    if len(seeds) != episodes_per_task:
        raise ValueError(f"seeds: expected {episodes_per_task} seeds (episodes_per_task), got {len(seeds)}")
    return [EpisodeSpec(t, e, int(seeds[e])) for e in range(episodes_per_task) for t in tasks]


class _Local:
    """A simulator in this process, behind the same send / recv as a worker."""

    def __init__(self, simulator):
        self.sim = simulator
        self._reply: Any = None

    def send(self, op: str, **kw) -> None:
        if op == "reset":
            self._reply = {"obs": self.sim.reset(kw["task"], kw["episode"], kw["seed"])}
        elif op == "step":
            success = self.sim.step(kw["action"])
            self._reply = {"success": success, "obs": self.sim.observe() if kw["observe"] else None}
        elif op == "observe":
            self._reply = {"obs": self.sim.observe()}
        elif op == "timings":
            self._reply = {"timings": self.sim.timings()}
        else:
            raise ValueError(op)

    def recv(self) -> Any:
        reply, self._reply = self._reply, None
        return reply

    def close(self) -> None:
        pass  # the caller owns the simulator


@dataclass
class _Slot:
    handle: Any
    spec: EpisodeSpec | None = None
    obs: dict | None = None
    plan: deque = field(default_factory=deque)
    steps: int = 0
    limit: int = 0
    frames: list | None = None
    started: float = 0.0


def video_frame(obs: Mapping, keys: Sequence[str]) -> np.ndarray:
    """The named cameras side by side (same height), as one uint8 frame."""
    images = [np.asarray(obs["images"][k]) for k in keys if k in obs.get("images", {})]
    if not images:
        raise ValueError(f"observation has none of the video cameras {list(keys)}")
    height = min(i.shape[0] for i in images)
    return np.concatenate([i[:height] for i in images], axis=1)


def run_episodes(
    handles: Sequence[Any],
    benchmark: Benchmark,
    policy: BatchPolicy,
    episodes: Sequence[EpisodeSpec],
    *,
    step_limit: Callable[[str], int],
    replan_steps: int | None,
    record: set[tuple[str, int]] = frozenset(),
    record_every: int = 1,
    video_keys: Sequence[str] = (),
    on_episode_start: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[list[EpisodeOutcome], list[tuple[EpisodeOutcome, list[np.ndarray]]], float]:
    """Run ``episodes`` on the simulators behind ``handles`` (one episode per handle at a time).

    Returns the outcomes (in ``episodes`` order), the recorded frames of the episodes in ``record``, and
    the seconds spent in the policy.
    """
    if replan_steps is not None and not (isinstance(replan_steps, int) and replan_steps >= 1):
        raise ValueError(f"replan_every: expected a positive int or None, got {replan_steps!r}")
    from steps.progress import Progress  # stdlib only: importable wherever this loop runs

    pending = deque(episodes)
    per_task = Counter(e.task for e in episodes)
    # One line per episode (an episode is seconds to minutes): which one, its result and step count, ETA.
    progress = Progress("closed loop", len(episodes), unit="episodes", every_s=0, log=log) if log else None
    slots = [_Slot(h) for h in handles]
    done: dict[EpisodeSpec, EpisodeOutcome] = {}
    recordings: list[tuple[EpisodeOutcome, list[np.ndarray]]] = []
    policy_seconds = 0.0

    def start(batch: list[_Slot]) -> None:
        for slot in batch:
            slot.spec = pending.popleft()
            slot.steps, slot.plan, slot.started = 0, deque(), time.perf_counter()
            slot.limit = step_limit(slot.spec.task)
            slot.frames = [] if (slot.spec.task, slot.spec.episode) in record else None
            if on_episode_start is not None:
                on_episode_start()
            slot.handle.send("reset", task=slot.spec.task, episode=slot.spec.episode, seed=slot.spec.seed)
        for slot in batch:
            slot.obs = slot.handle.recv()["obs"]
            if slot.frames is not None:
                slot.frames.append(video_frame(slot.obs, video_keys))

    start([s for s in slots if pending][: len(pending)])
    while any(s.spec is not None for s in slots):
        active = [s for s in slots if s.spec is not None]
        needs_plan = [s for s in active if not s.plan]
        if needs_plan:
            began = time.perf_counter()
            chunks = policy([s.obs for s in needs_plan])
            policy_seconds += time.perf_counter() - began
            if len(chunks) != len(needs_plan):
                raise ValueError(f"policy_fn: {len(needs_plan)} observations in, {len(chunks)} chunks out")
            for slot, chunk in zip(needs_plan, chunks, strict=True):
                chunk = check_chunk(chunk, benchmark.action_dim)
                n = len(chunk) if replan_steps is None else min(replan_steps, len(chunk))
                slot.plan.extend(chunk[:n])
        for slot in active:
            action = slot.plan.popleft()
            step = slot.steps + 1
            recording = slot.frames is not None and (step % record_every == 0 or step == slot.limit)
            slot.handle.send("step", action=action, observe=not slot.plan or recording)
        finished: list[_Slot] = []
        for slot in active:
            reply = slot.handle.recv()
            slot.steps += 1
            if reply["obs"] is not None:
                slot.obs = reply["obs"]
            over = reply["success"] or slot.steps >= slot.limit
            if slot.frames is not None and reply["obs"] is not None:
                slot.frames.append(video_frame(reply["obs"], video_keys))
            if over:
                spec = slot.spec
                outcome = EpisodeOutcome(spec.task, spec.episode, spec.seed, bool(reply["success"]),
                                         slot.steps, round(time.perf_counter() - slot.started, 3))  # fmt: skip
                done[spec] = outcome
                if slot.frames is not None:
                    if reply["obs"] is None:  # a success between recorded frames: show the last state
                        slot.handle.send("observe")
                        slot.frames.append(video_frame(slot.handle.recv()["obs"], video_keys))
                    recordings.append((outcome, slot.frames))
                if progress is not None:
                    result = "success" if outcome.success else "no success"
                    progress.advance(1, f"{spec.task} episode {spec.episode + 1}/{per_task[spec.task]} (seed {spec.seed}): "
                                        f"{result} after {outcome.steps} steps")  # fmt: skip
                slot.spec = None
                finished.append(slot)
        if pending and finished:
            start(finished[: len(pending)])
    return [done[e] for e in episodes], recordings, policy_seconds


def run_benchmark(
    simulator: str,
    policy: BatchPolicy,
    tasks: Sequence[str],
    episodes_per_task: int,
    seeds: Sequence[int],
    *,
    options: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    replan_steps: int | None = None,
    workers: int = 0,
    python: str | None = None,
    out_dir: str | Path | None = None,
    record_episodes: int = 3,
    record_every: int | None = None,
    on_episode_start: Callable[[], None] | None = None,
    log: Callable[[str], None] | None = print,
) -> RolloutResult:
    """Evaluate ``policy`` on ``episodes_per_task`` episodes of every task of ``simulator``.

    ``max_steps`` caps the benchmark's own step limit per task; ``workers`` > 0 runs that many simulator
    processes (``python``: their interpreter, e.g. a simulator's own venv) and 0 one simulator here.
    The first ``record_episodes`` episodes (episode-major) are recorded every ``record_every`` steps and
    saved to ``out_dir`` as GIFs plus one PNG strip; ``episodes.json`` there lists every episode.
    """
    from steps.sim.base import make_simulator, simulator_class, task_list

    cls = simulator_class(simulator)
    bench = cls.benchmark
    tasks = cls.check_tasks(task_list(tasks))
    if not (isinstance(episodes_per_task, int) and episodes_per_task >= 1):
        raise ValueError(f"episodes_per_task: expected a positive int, got {episodes_per_task!r}")
    if max_steps is not None and not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
    if not (isinstance(workers, int) and workers >= 0):
        raise ValueError(f"workers: expected an int >= 0, got {workers!r}")
    if cls.own_python() is not None:  # a simulator in its own venv runs in workers of that python only
        python, workers = python or cls.own_python(), max(workers, 1)
    record_every = record_every or bench.video_every
    plan = episode_plan(tasks, episodes_per_task, list(seeds))
    record = {(s.task, s.episode) for s in plan[: record_episodes if out_dir is not None else 0]}

    def limit(task: str) -> int:
        return min(cls.max_steps(task), max_steps) if max_steps else cls.max_steps(task)

    began = time.perf_counter()
    handles: list = []
    local = None
    try:
        if workers == 0:
            local = make_simulator(simulator, options)
            handles = [_Local(local)]
        else:
            from steps.sim.worker import Worker

            handles = [Worker(simulator, options, python=python, name=f"{simulator}[{i}]")
                       for i in range(min(workers, len(plan)))]  # fmt: skip
        outcomes, recordings, policy_seconds = run_episodes(
            handles, bench, policy, plan, step_limit=limit, replan_steps=replan_steps, record=record,
            record_every=record_every, video_keys=cls.video_keys, on_episode_start=on_episode_start,
            log=log,
        )  # fmt: skip
        timings: dict[str, float] = {"policy": round(policy_seconds, 3), "workers": float(len(handles))}
        for handle in handles:
            handle.send("timings")
            for key, value in handle.recv()["timings"].items():
                timings[key] = round(timings.get(key, 0.0) + value, 3)
    finally:
        for handle in handles:
            handle.close()
        if local is not None:
            local.close()
    # Run episode-major (the schedule), listed task-major (the report).
    outcomes = sorted(outcomes, key=lambda o: (tasks.index(o.task), o.episode))
    per_task = {t: float(np.mean([o.success for o in outcomes if o.task == t])) for t in tasks}
    result = RolloutResult(
        benchmark=bench.name,
        group_kind=bench.group_kind,
        success_rate=float(np.mean([o.success for o in outcomes])),
        per_task=per_task,
        per_group=group_mean(per_task, {t: cls.group(t) for t in tasks}),
        episodes=outcomes,
        seconds=round(time.perf_counter() - began, 2),
        timings=timings,
    )
    if log:
        for task, rate in per_task.items():
            log(f"closed loop: {task}: success rate {rate:.2f} over {episodes_per_task} episodes")
    if out_dir is not None:
        out = Path(out_dir)
        result.media = save_media(recordings, out, fps=bench.fps / record_every) if recordings else []
        result.write_json(out / "episodes.json")
    return result


def save_media(recordings, out_dir: Path, *, fps: float) -> list[str]:
    """One GIF per recorded rollout and a PNG strip (one row of 6 frames per rollout); the strip first."""
    import imageio.v2 as imageio

    out_dir.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for outcome, frames in recordings:
        tag = "success" if outcome.success else "fail"
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in outcome.task)[:80]
        gif = out_dir / f"{safe}_ep{outcome.episode}_seed{outcome.seed}_{tag}.gif"
        imageio.mimsave(gif, frames, duration=1000.0 / fps, loop=0)
        paths.append(str(gif))
        picks = np.linspace(0, len(frames) - 1, num=6).round().astype(int)
        rows.append(np.concatenate([frames[i] for i in picks], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    strip = out_dir / "rollout_strip.png"
    imageio.imwrite(strip, np.concatenate(rows, axis=0))
    return [str(strip), *paths]
