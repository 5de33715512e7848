"""Fine-tuning, whatever the task kind (a head, or the generate task): the settings every kind
shares, the run directory's policy (a new run, ``--resume``, ``--overwrite``), the resumable
training state, and the loop over epochs with model selection, built on
:class:`~gpt1cli.train.loop.Trainer`. A task kind supplies its model and its :class:`Objective`.

A run directory holds:

* ``checkpoints/``: the best checkpoint by the validation metric (``latest`` and ``best`` name
  it), which ``eval``, ``predict`` and ``generate`` load;
* ``train-state/checkpoints/``: the newest training state (current weights, AdamW moments, the
  loop's position and the best so far), written at every evaluation and when stopped; it is
  what ``--resume`` continues from, exactly;
* ``metrics.jsonl``.

The example order of epoch ``e`` is the ``e``-th permutation drawn from a generator seeded with
``--seed`` and dropout is seeded per step, so a resumed run takes the batches and masks the
uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import (CHECKPOINTS, LATEST, META, TRAIN_STATE, TRAINER_META, Checkpoint, load_checkpoint,
                          save_checkpoint)
from .. import settings
from ..checks import SEED, check_number, number
from ..config import ModelConfig
from ..errors import Gpt1Error, Interrupted
from ..fileio import atomic_copy, file_hash, plain_name, read_json, remove_tree
from ..settings import ANEW, MAY_CHANGE, one_of, path, setting
from ..model import ops
from ..train.distributed import PARALLEL_MODES, World, barrier, distributed_session
from ..train.loop import SkippedSteps, Trainer, due
from ..train.metrics_log import MetricsLog
from ..train.optim import warmup_linear
from .outputs import locked_directory

STATE = TRAIN_STATE
LOG = "metrics.jsonl"


@dataclass
class FinetuneSettings:
    """The settings of every fine-tuning task kind; the defaults are the paper's.

    On resume, where and how the run goes may change (MAY_CHANGE), not what it computes; the
    data files are compared by content, not by the name they are given (ANEW).
    """

    train: str = setting(help="Training examples (.jsonl, .csv or .parquet; fields per task in the README). Required, "
                         "except with --resume.", rule=path, show_default="none", on_resume=ANEW, resume_fills=True)
    val: str = setting(help="Validation examples; the best checkpoint by --metric on them is kept. Required, except "
                       "with --resume.", rule=path, show_default="none", on_resume=ANEW, resume_fills=True)
    from_run: str = setting(help="Pre-trained checkpoint or run directory. Required, except with --resume.",
                            flags=("--from",), rule=path, show_default="none", resume_fills=True)
    out: str = setting(help="Run directory: the best checkpoint in checkpoints/, the resumable state in train-state/, "
                       "metrics.jsonl.", flags=("--out", "-o"), rule=path)
    resume: bool = setting(False, "Continue the run in --out exactly from its training state, with its own settings "
                           "(only --device, --parallel, --dist-timeout and --max-bad-steps may change); a finished run "
                           "reports its figures; without a state yet, the run starts.", flags=("--resume",),
                           on_resume=ANEW, saved=False)
    overwrite: bool = setting(False, "Replace a run already in --out (its checkpoints, training state and "
                              "metrics.jsonl).", on_resume=ANEW, saved=False)
    # random: same model and tokenizer, fresh weights (the no-pre-training ablation)
    init: str = setting("pretrained", "pretrained, or random: same model and tokenizer with fresh weights (no "
                        "pre-training).", rule=one_of(("pretrained", "random")))
    lr: float = setting(6.25e-5, "Peak learning rate.", rule=number(above=0))
    batch_size: int = setting(32, "Examples per step.", rule=number(minimum=1))
    epochs: int = setting(3, "Passes over the training examples.", rule=number(minimum=1))
    warmup_fraction: float = setting(0.002, "Share of training spent in linear warm-up before linear decay (0 to 1).",
                                     rule=number(minimum=0, maximum=1))
    weight_decay: float = setting(0.01, "AdamW decay on weights (not biases or gains).", rule=number(minimum=0))
    grad_clip: float = setting(1.0, rule=number(above=0), option=False)
    metric: str | None = setting(None, "Model selection: accuracy, macro_f1, mcc, pearson, spearman; generate: loss, "
                                 "bleu, chrf, rougeL, exact (greedy decoding of --val).",
                                 show_default="accuracy, pearson with --regression, loss for generate")
    eval_every: int | None = setting(None, "Validate (and write the resumable state) every N steps.",
                                     rule=number(minimum=1), show_default="once per epoch")
    max_bad_steps: int = setting(10, "Stop after this many non-finite steps in a row (each is skipped).",
                                 rule=number(minimum=1), on_resume=MAY_CHANGE)
    seed: int = setting(0, "Seed of the head, dropout and example order.", rule=number(**SEED))
    device: str = setting("auto", "auto (CUDA when available), cpu or cuda.", on_resume=MAY_CHANGE)
    parallel: str = setting("ddp", "Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded).",
                            rule=one_of(PARALLEL_MODES), on_resume=MAY_CHANGE)
    dist_timeout: float = setting(600.0, "Seconds a rank waits for the others before the job fails.",
                                  rule=number(above=0), on_resume=MAY_CHANGE)


def check_settings(config: FinetuneSettings) -> None:
    """Every setting's rule (the CLI applies the same ones at parse time), and what they must agree on."""
    settings.check_settings(config)
    if config.resume and config.overwrite:
        raise Gpt1Error("--resume continues the run in --out and --overwrite replaces it: give one")


# ---------------------------------------------------------------------------------------------
# The loop's position, saved with the training state


@dataclass
class Progress(SkippedSteps):
    """Where a run stands: steps done, the best validation report so far, non-finite steps."""

    step: int = 0
    best: float | None = None  # the best score by the run's --metric
    best_report: dict | None = None
    best_step: int | None = None
    seconds: float = 0.0
    finished: bool = False

    @classmethod
    def from_trainer(cls, trainer: dict, source) -> "Progress":
        """The position saved in a training state's ``trainer.json``, checked against its step."""
        data = trainer.get("progress")
        try:
            progress = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
            check_number(progress.step, "the saved step", minimum=0)
            ok = progress.step == trainer.get("step") and isinstance(progress.best_report, (dict, type(None)))
        except (TypeError, Gpt1Error):
            ok = False
        if not ok:
            raise Gpt1Error(f"{source} does not hold a readable training position: it is corrupt; "
                            "pass --overwrite to start over")
        return progress


# ---------------------------------------------------------------------------------------------
# The run directory


@dataclass
class Start:
    """What a run starts from: the model's settings and tokenizer, the initial weights (pre-trained,
    or the training state's on resume; None for random initialisation), and the position."""

    config: ModelConfig
    tokenizer_path: Path
    origin: str  # the pre-trained checkpoint the run was started from
    weights: dict[str, torch.Tensor] | None
    state: Checkpoint | None = None  # the training state resumed from
    progress: Progress = field(default_factory=Progress)
    data_hashes: dict = field(default_factory=dict)

    @property
    def resumed(self) -> bool:
        return self.state is not None


def settings_of(config) -> dict:
    """The run config saved with the training state (and compared on resume)."""
    return settings.saved(config)


def state_folder(out: Path) -> Path:
    return Path(out) / STATE


def saved_settings(out: str | Path) -> dict | None:
    """``{"driver", "task", "config"}`` of the run in ``out`` (from its training state), or None."""
    trainer = _trainer_meta(Path(out))
    if trainer is None:
        return None
    return {"driver": trainer.get("driver"), "task": trainer.get("task"), "config": trainer.get("config") or {}}


def _trainer_meta(out: Path) -> dict | None:
    pointer = state_folder(out) / CHECKPOINTS / LATEST
    name = _pointer(pointer)
    return None if name is None else read_json(pointer.parent / name / TRAINER_META, "training state")


def _pointer(pointer: Path) -> str | None:
    """The folder a ``latest`` pointer names (a plain name in its folder), or None without one."""
    if not pointer.is_file():
        return None
    try:
        text = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read {pointer}: {exc}") from None
    return plain_name(text, "checkpoint folder", pointer)


def begin_run(config, *, driver: str, task: str, world: World, say: Callable[[str], None]) -> Start:
    """Apply the run directory's policy and load what the run starts from.

    A new run needs an empty ``--out`` (a finished run is replaced only with ``--overwrite``; a
    stopped one is continued with ``--resume``). ``--resume`` continues from the training state
    with the saved settings, refusing any other, and on data files whose content changed; a
    finished run returns at once. Without a training state yet, ``--resume`` starts the run.
    """
    if world.distributed and config.batch_size < world.world_size:
        raise Gpt1Error(f"--batch-size {config.batch_size} is smaller than the {world.world_size} processes")
    out = Path(config.out)
    hashes = {"train": _hash(config.train, "--train"), "val": _hash(config.val, "--val")}
    if config.overwrite:
        start = _fresh(config, hashes)  # the source is checked before anything is removed
        if world.is_main:
            _clear(out)
        barrier(world)
        return start
    trainer = _trainer_meta(out)
    if trainer is not None:
        progress = Progress.from_trainer(trainer, state_folder(out))
        if not config.resume:
            if progress.finished:
                raise Gpt1Error(f"{out} already holds a run (finished at step {progress.step}): pass --overwrite "
                                "to replace it, or choose another --out")
            raise Gpt1Error(f"{out} already holds a run (stopped at step {progress.step}): pass --resume to "
                            "continue it, --overwrite to start over, or choose another --out")
        _check_same_run(out, trainer, config, driver, task, hashes)
        state = load_checkpoint(state_folder(out), with_trainer=True)
        # Pruning removes the state's folder once the next one is written: keep the tokenizer beside them.
        tokenizer = state_folder(out) / state.tokenizer_path.name
        if world.is_main:
            atomic_copy(state.tokenizer_path, tokenizer)
        barrier(world)
        return Start(state.config, tokenizer, str(state.meta.get("from", "")), state.state_dict, state, progress, hashes)
    if (out / CHECKPOINTS / LATEST).is_file():
        if config.resume:
            raise Gpt1Error(f"{out} already holds a run without a training state to resume from (made by an "
                            "earlier gpt1): pass --overwrite to start over, or choose another --out")
        raise Gpt1Error(f"{out} already holds a run: pass --overwrite to replace it, or choose another --out")
    if config.resume:
        say(f"no checkpoint in {out} yet: starting the run")
    if (out / LOG).exists() and world.is_main:
        (out / LOG).unlink()  # the log of an attempt that never reached a checkpoint
    return _fresh(config, hashes)


def _fresh(config, hashes: dict) -> Start:
    source = load_checkpoint(config.from_run)
    if source.task:
        raise Gpt1Error(f"{source.path} is already fine-tuned ({source.task['name']}): start from a pre-trained run")
    weights = source.state_dict if config.init == "pretrained" else None
    return Start(source.config, source.tokenizer_path, str(source.path), weights, None, Progress(), hashes)


def _hash(path, option: str) -> str:
    path = Path(path)
    if not path.is_file():
        raise Gpt1Error(f"task file not found: {path} ({option})")
    try:
        return file_hash(path)
    except OSError as exc:
        raise Gpt1Error(f"cannot read {path} ({option}): {exc.strerror or exc}") from None


def _clear(out: Path) -> None:
    """What a run wrote in ``out``, for --overwrite (anything else there stays)."""
    for folder in (out / CHECKPOINTS, state_folder(out)):
        if folder.is_dir():
            remove_tree(folder)
    (out / LOG).unlink(missing_ok=True)


def _same(key: str, saved, given) -> bool:
    if key in ("from_run", "out") and saved is not None and given is not None:
        return Path(saved).resolve() == Path(given).resolve()
    return saved == given


def _option(config, key: str) -> str:
    return settings.option_name(config, key) if key in settings.names(config) else "--" + key.replace("_", "-")


def _check_same_run(out: Path, trainer: dict, config, driver: str, task: str, hashes: dict) -> None:
    if trainer.get("driver") != driver or trainer.get("task") != task:
        raise Gpt1Error(f"{out} holds a run of the {trainer.get('task')} task, not {task}: resume it with "
                        f"--task {trainer.get('task')}")
    saved = trainer.get("config") or {}
    given = settings_of(config)
    not_compared = set(settings.names(config)) - set(settings.names(config, settings.FIXED))
    changed = [key for key in sorted(set(saved) | set(given))
               if key not in not_compared and not _same(key, saved.get(key), given.get(key))]
    if changed:
        what = ", ".join(f"{_option(config, k)} (the run has {saved.get(k)!r}, given {given.get(k)!r})" for k in changed)
        raise Gpt1Error(f"--resume continues {out} with its own settings and cannot change {what}: leave them out, "
                        "or start a new run with --overwrite or another --out")
    for name, option in (("train", "--train"), ("val", "--val")):
        if (trainer.get("data") or {}).get(name) != hashes[name]:
            raise Gpt1Error(f"--resume: {getattr(config, name)} ({option}) is not the file the run in {out} was "
                            "trained with (its content differs): give that file, or start over with --overwrite")


# ---------------------------------------------------------------------------------------------
# The loop


def run_session(config: FinetuneSettings, fine_tune: Callable, *, show_progress: bool, say) -> dict:
    """Check ``config``, then ``fine_tune(config, world, device, show_progress, say)`` in torchrun's
    process group (when there is one), rank 0 holding the run directory's lock."""
    config = config.check()
    with distributed_session(config.device, config.dist_timeout) as (world, device):
        with locked_directory(config.out, "run directory", enabled=world.is_main):
            return fine_tune(config, world, device, show_progress, say or (lambda message: None))


@dataclass
class Objective:
    """What a task kind trains its model for; :class:`FinetuneLoop` does the rest.

    ``loss(mine, batch)``: the loss on this rank's share ``mine`` of the global batch ``batch``
    (indices of training examples), weighted so that its gradient averaged over the ranks is the
    batch's, and the figures to log (``loss`` first: the batch's, over every rank).
    ``evaluate()``: a validation report; ``better(report, best)``: whether it beats the best so
    far; ``describe(step, report)``: the line shown at each evaluation.
    """

    loss: Callable[[list[int], list[int]], tuple[torch.Tensor, dict]]
    evaluate: Callable[[], dict]
    better: Callable[[dict, dict], bool]
    describe: Callable[[int, dict], str]


@dataclass
class FinetuneLoop:
    """Epochs of optimiser steps, validation, model selection and checkpoints, for any task kind.

    ``model`` holds its initial weights (the pre-trained ones, or the training state's on
    resume); a :class:`~gpt1cli.train.loop.Trainer` places and wraps it and restores the
    optimiser. ``logged`` adds the task kind's figures to the log's ``config`` record.
    """

    config: FinetuneSettings
    start: Start
    driver: str
    task_info: dict  # the checkpoint's ``task`` record; its ``name`` is the task
    world: World
    device: torch.device
    model: torch.nn.Module
    n_examples: int
    logged: dict
    rename: Callable[[dict], dict] = lambda state: state  # module state -> checkpoint layout
    show_progress: bool = True

    def __post_init__(self):
        config = self.config
        self.out = Path(config.out)
        self.task = self.task_info["name"]
        self.progress = self.start.progress
        self.steps_per_epoch = math.ceil(self.n_examples / config.batch_size)
        self.total = self.steps_per_epoch * config.epochs
        self.warmup = int(self.total * config.warmup_fraction)
        self.eval_every = config.eval_every or self.steps_per_epoch
        self.state_step: int | None = self.progress.step if self.start.resumed else None
        self.log = MetricsLog(self.out / LOG if self.world.is_main else None)
        self.trainer = Trainer(self.model, world=self.world, device=self.device, parallel=config.parallel, lr=config.lr,
                               weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed,
                               schedule=self._lr, log=self.log)
        self.kernels = ops.describe_path(self.device)
        if self.start.resumed:
            self.log.write("resume", step=self.progress.step, kernels=self.kernels, device=str(self.device),
                           world_size=self.world.world_size)
        else:
            self.log.write("config", config=settings_of(config), model=self.start.config.to_dict(), **self.logged,
                           kernels=self.kernels)
        self._clock = time.perf_counter()
        self._restore()

    def _lr(self, step: int) -> float:
        return warmup_linear(step, max_lr=self.config.lr, warmup=self.warmup, total=self.total)

    # --- resume

    def _restore(self) -> None:
        """Load the training state's optimiser moments (the weights are in the model already)."""
        state = self.start.state
        if state is None:
            return
        groups = state.trainer_meta.get("optimizer_groups")
        if not isinstance(groups, list):
            raise Gpt1Error(f"{state.path}: the training state lacks the optimiser's settings: it is corrupt")
        self.trainer.restore(groups, state.trainer_tensors)

    def _best_is_saved(self) -> bool:
        name = f"step_{self.progress.best_step:08d}"
        return _pointer(self.out / CHECKPOINTS / LATEST) == name and (self.out / CHECKPOINTS / name / META).is_file()

    # --- checkpoints

    def _gather(self) -> tuple[dict, dict, list]:
        state = self.trainer.train_state()
        if not state.finite:
            raise Gpt1Error(f"the weights are not finite at step {self.progress.step}; nothing was saved: lower --lr. "
                            f"{self._last_good()}")
        return self.rename(state.model), state.optimizer_tensors, state.optimizer_groups

    def _last_good(self) -> str:
        if self.progress.best_step is None:
            return "No checkpoint was written."
        return f"The best checkpoint so far (step {self.progress.best_step}) is in {self.out / CHECKPOINTS}."

    def _meta(self, kind: str) -> dict:
        return {"kind": kind, "task": self.task_info, "metrics": {"val": self.progress.best_report},
                "from": self.start.origin}

    def save(self, *, best: bool) -> None:
        """Write the training state (and, when ``best``, the best checkpoint) at the current step."""
        step = self.progress.step
        self.progress.seconds += time.perf_counter() - self._clock
        self._clock = time.perf_counter()
        model_state, tensors, groups = self._gather()
        if self.world.is_main:
            trainer = {"driver": self.driver, "task": self.task, "step": step, "config": settings_of(self.config),
                       "data": self.start.data_hashes, "progress": dataclasses.asdict(self.progress),
                       "optimizer_groups": groups, "world_size": self.world.world_size}
            # The state first: resumed from it, a missing best checkpoint of the same step is rewritten.
            save_checkpoint(state_folder(self.out), step, model_state=model_state, config=self.start.config,
                            tokenizer_path=self.start.tokenizer_path, meta=self._meta("finetune-state"),
                            trainer_tensors=tensors, trainer_meta=trainer, keep=1)
            if best:
                self._save_best(model_state)
        barrier(self.world)
        self.state_step = step

    def _save_best(self, model_state: dict) -> None:
        save_checkpoint(self.out, self.progress.step, model_state=model_state, config=self.start.config,
                        tokenizer_path=self.start.tokenizer_path, meta=self._meta("finetune"), keep=1, best=True)

    # --- training

    def run(self, objective: Objective) -> dict:
        """Train to the end (or to a stop on request) and return the run's summary."""
        progress, config = self.progress, self.config
        if progress.finished:
            return self.summary()
        if progress.best_step is not None and not self._best_is_saved():
            if progress.best_step != progress.step:
                raise Gpt1Error(f"{self.out / CHECKPOINTS} lacks the best checkpoint (step {progress.best_step}) its "
                                "training state records: pass --overwrite to start over")
            weights = self._gather()[0]  # stopped between writing the state and the best checkpoint
            if self.world.is_main:
                self._save_best(weights)
            barrier(self.world)
        generator = torch.Generator().manual_seed(config.seed)
        self.trainer.train_mode()
        with self.trainer.running(f"fine-tuning {self.task}", self.total, progress.step,
                                  show_progress=self.show_progress) as bar:
            try:
                for epoch in range(config.epochs):
                    order = torch.randperm(self.n_examples, generator=generator).tolist()
                    for index in range(self.steps_per_epoch):
                        if epoch * self.steps_per_epoch + index < progress.step:
                            continue  # done before the run was resumed
                        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
                        self._step(batch, objective, bar)
                        bar.advance(1)
                        saved = False
                        if due(progress.step, self.eval_every, self.total):
                            self._evaluate(epoch, objective, bar)
                            saved = True
                        if self.trainer.stop_requested() and not progress.finished:
                            if not saved:
                                self.save(best=False)
                            self.trainer.stopped(progress.step, str(self._state_path()))
            except KeyboardInterrupt:
                raise Interrupted(self._left_behind()) from None
        if progress.last_step_bad:
            raise Gpt1Error(f"the last step ({progress.step}) had a non-finite loss or gradient and was skipped; "
                            f"{self._last_good()} Check the data or lower --lr")
        return self.summary()

    def _step(self, batch: list[int], objective: Objective, bar) -> None:
        progress = self.progress
        result = self.trainer.step(progress.step, lambda: self._forward_backward(batch, objective), progress, bar)
        progress.step = result.done
        if result.applied:
            self.log.write("train", step=result.done, **result.figures, lr=result.lr)
            bar.update(status=f"loss {result.figures['loss']:.3f}")
        elif result.figures is not None and progress.bad_steps >= self.config.max_bad_steps:
            raise Gpt1Error(f"{progress.bad_steps} non-finite steps in a row at step {result.done}: lower --lr or "
                            f"check the data. {self._last_good()}")

    def _forward_backward(self, batch: list[int], objective: Objective) -> dict | None:
        # Each rank takes a strided share of the global batch (the last batch may be uneven).
        share = [batch[i :: self.world.world_size] for i in range(self.world.world_size)]
        if any(not part for part in share):
            return None  # a tail too small to give every rank an example: skipped on all ranks alike
        loss, figures = objective.loss(share[self.world.rank], batch)
        loss.backward()
        return figures

    def _evaluate(self, epoch: int, objective: Objective, bar) -> None:
        progress = self.progress
        report = objective.evaluate()
        self.trainer.train_mode()  # whatever evaluation did to the mode, training goes on with dropout
        self.log.write("eval", step=progress.step, epoch=epoch, **{k: v for k, v in report.items() if k != "confusion"})
        bar.log(objective.describe(progress.step, report))
        improved = progress.best_report is None or objective.better(report, progress.best_report)
        if improved:
            progress.best, progress.best_report, progress.best_step = report[self.config.metric], report, progress.step
        progress.finished = progress.step == self.total
        self.save(best=improved)

    def _state_path(self) -> Path:
        return state_folder(self.out) / CHECKPOINTS / f"step_{self.state_step:08d}"

    def _left_behind(self) -> str:
        now = f"fine-tuning stopped at once after step {self.progress.step}"
        if self.state_step is None:
            return f"{now}; no checkpoint was written: run the command again to start over"
        return f"{now}; {self.out} continues from its training state of step {self.state_step} with --resume"

    def summary(self) -> dict:
        return run_summary(self.progress, self.config, self.task, out=str(self.out), kernels=self.kernels,
                           resumed=self.start.resumed)


def run_summary(progress: Progress, config: FinetuneSettings, task: str, *, out: str, kernels: str | None,
                resumed: bool) -> dict:
    """What a fine-tuning run reports: its best validation figures, steps, skipped steps and time."""
    return {"task": task, "steps": progress.step, "best": progress.best, "metric": config.metric,
            "val": progress.best_report, "best_step": progress.best_step, "skipped_steps": progress.skipped_steps,
            "seconds": round(progress.seconds, 2), "kernels": kernels, "out": out, "resumed": resumed}


def finished_summary(start: Start, config: FinetuneSettings, task: str) -> dict:
    """What a finished run reports when asked to resume: its final figures, nothing run."""
    return {**run_summary(start.progress, config, task, out=str(config.out), kernels=None, resumed=True),
            "already_finished": True}
