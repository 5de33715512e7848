"""What the two fine-tuning drivers (task heads and the generate task) share: the settings they
check alike, the run directory's policy (a new run, ``--resume``, ``--overwrite``), the
resumable training state, and the loop over epochs with graceful stops, non-finite steps and
model selection.

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

from ..checks import SEED, check_number
from ..config import ModelConfig
from ..errors import Gpt1Error, Interrupted, TrainingStopped
from ..fileio import atomic_copy, file_hash, plain_name, read_json, remove_tree
from ..progress import progress_bar
from ..runtime import step_seed
from ..train.checkpoint import (
    CHECKPOINTS,
    LATEST,
    META,
    TRAIN_STATE,
    TRAINER_META,
    Checkpoint,
    load_checkpoint,
    optimizer_from_full_state,
    optimizer_tensors,
    optimizer_to_full_state,
    restore_optimizer,
    save_checkpoint,
)
from ..train.distributed import World, any_rank, barrier, full_state
from ..train.metrics import MetricsLog
from ..train.optim import warmup_linear
from ..train.signals import graceful_stop

STATE = TRAIN_STATE
LOG = "metrics.jsonl"
# Settings a resumed run may change: where and how it runs, not what it computes.
RESUMABLE = ("device", "parallel", "dist_timeout", "max_bad_steps")
# Not settings of the run (the data files are compared by content, not by the name they are given).
NOT_COMPARED = ("resume", "overwrite", "train", "val")
PARALLEL = ("ddp", "fsdp")


def check_settings(config) -> None:
    """The ranges both drivers' configs share (the CLI refuses the same values at parse time)."""
    check_number(config.lr, "--lr", above=0)
    check_number(config.batch_size, "--batch-size", minimum=1)
    check_number(config.epochs, "--epochs", minimum=1)
    check_number(config.warmup_fraction, "--warmup-fraction", minimum=0, maximum=1)
    check_number(config.weight_decay, "--weight-decay", minimum=0)
    check_number(config.grad_clip, "grad_clip", above=0)
    check_number(config.eval_every, "--eval-every", minimum=1)
    check_number(config.seed, "--seed", **SEED)
    check_number(config.dist_timeout, "--dist-timeout", above=0)
    check_number(config.max_bad_steps, "--max-bad-steps", minimum=1)
    if config.init not in ("pretrained", "random"):
        raise Gpt1Error(f"--init must be pretrained or random, not {config.init!r}")
    if config.parallel not in PARALLEL:
        raise Gpt1Error(f"--parallel must be one of {', '.join(PARALLEL)}, not {config.parallel!r}")
    if config.resume and config.overwrite:
        raise Gpt1Error("--resume continues the run in --out and --overwrite replaces it: give one")


# ---------------------------------------------------------------------------------------------
# The loop's position, saved with the training state


@dataclass
class Progress:
    """Where a run stands: steps done, the best validation report so far, non-finite steps."""

    step: int = 0
    best: float | None = None  # the best score by the run's --metric
    best_report: dict | None = None
    best_step: int | None = None
    bad_steps: int = 0  # non-finite steps in a row
    skipped_steps: int = 0
    last_step_bad: bool = False
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
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in ("resume", "overwrite")}


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


def _check_same_run(out: Path, trainer: dict, config, driver: str, task: str, hashes: dict) -> None:
    if trainer.get("driver") != driver or trainer.get("task") != task:
        raise Gpt1Error(f"{out} holds a run of the {trainer.get('task')} task, not {task}: resume it with "
                        f"--task {trainer.get('task')}")
    saved = trainer.get("config") or {}
    given = settings_of(config)
    changed = [key for key in sorted(set(saved) | set(given))
               if key not in RESUMABLE + NOT_COMPARED and not _same(key, saved.get(key), given.get(key))]
    if changed:
        what = ", ".join(f"--{k.replace('_', '-').replace('from-run', 'from')} (the run has {saved.get(k)!r}, "
                         f"given {given.get(k)!r})" for k in changed)
        raise Gpt1Error(f"--resume continues {out} with its own settings and cannot change {what}: leave them out, "
                        "or start a new run with --overwrite or another --out")
    for name, option in (("train", "--train"), ("val", "--val")):
        if (trainer.get("data") or {}).get(name) != hashes[name]:
            raise Gpt1Error(f"--resume: {getattr(config, name)} ({option}) is not the file the run in {out} was "
                            "trained with (its content differs): give that file, or start over with --overwrite")


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class FinetuneLoop:
    """Epochs of optimiser steps, validation, model selection and checkpoints, for either driver.

    The driver supplies ``forward_backward(ids)`` (the loss of the global batch ``ids``,
    back-propagated; returns the figures to log, ``loss`` first, or None for a batch too small to
    split over the ranks), ``evaluate()`` (a validation report), ``better(report, best)`` and
    ``describe(step, report)`` (the line shown at each evaluation).
    """

    config: object  # FinetuneConfig or GenerativeConfig
    start: Start
    driver: str
    task: str
    task_info: dict
    world: World
    device: torch.device
    model: torch.nn.Module  # the unwrapped module
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    n_examples: int
    log: MetricsLog
    rename: Callable[[dict], dict] = lambda state: state  # module state -> checkpoint layout
    show_progress: bool = True

    def __post_init__(self):
        self.out = Path(self.config.out)
        self.sharded = self.world.distributed and self.config.parallel == "fsdp"
        self.progress = self.start.progress
        self.steps_per_epoch = math.ceil(self.n_examples / self.config.batch_size)
        self.total = self.steps_per_epoch * self.config.epochs
        self.warmup = int(self.total * self.config.warmup_fraction)
        self.eval_every = self.config.eval_every or self.steps_per_epoch
        self.names = {p: n for n, p in self.model.named_parameters()}
        self.state_step: int | None = self.progress.step if self.start.resumed else None
        self._clock = time.perf_counter()

    # --- resume

    def restore(self) -> None:
        """Load the training state's optimiser moments (the weights are loaded by the driver)."""
        state = self.start.state
        if state is None:
            return
        groups = state.trainer_meta.get("optimizer_groups")
        if not isinstance(groups, list):
            raise Gpt1Error(f"{state.path}: the training state lacks the optimiser's settings: it is corrupt")
        if self.sharded:
            optimizer_from_full_state(self.wrapped, self.optimizer, groups, state.trainer_tensors)
        else:
            restore_optimizer(self.optimizer, dict(self.model.named_parameters()), groups, state.trainer_tensors)

    def _best_is_saved(self) -> bool:
        name = f"step_{self.progress.best_step:08d}"
        return _pointer(self.out / CHECKPOINTS / LATEST) == name and (self.out / CHECKPOINTS / name / META).is_file()

    # --- checkpoints

    def _gather(self) -> tuple[dict, dict, list]:
        if self.sharded:
            model_state, full_optim = full_state(self.wrapped, self.optimizer, self.config.parallel, self.world)
            tensors, groups = optimizer_to_full_state(full_optim) if self.world.is_main else ({}, [])
        else:
            model_state = self.model.state_dict()
            tensors, groups = optimizer_tensors(self.optimizer, self.names)
        finite = all(bool(torch.isfinite(t).all()) for t in model_state.values() if t.is_floating_point())
        if any_rank(not finite, self.world, self.device):
            raise Gpt1Error(f"the weights are not finite at step {self.progress.step}; nothing was saved: lower --lr. "
                            f"{self._last_good()}")
        return self.rename(model_state), tensors, groups

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

    def run(self, forward_backward: Callable, evaluate: Callable[[], dict], better: Callable[[dict, dict], bool],
            describe: Callable[[int, dict], str]) -> Progress:
        progress, config = self.progress, self.config
        if progress.finished:
            return progress
        if progress.best_step is not None and not self._best_is_saved():
            if progress.best_step != progress.step:
                raise Gpt1Error(f"{self.out / CHECKPOINTS} lacks the best checkpoint (step {progress.best_step}) its "
                                "training state records: pass --overwrite to start over")
            weights = self._gather()[0]  # stopped between writing the state and the best checkpoint
            if self.world.is_main:
                self._save_best(weights)
            barrier(self.world)
        generator = torch.Generator().manual_seed(config.seed)
        self.model.train()
        self.wrapped.train()
        with graceful_stop() as stop_request, \
                progress_bar(f"fine-tuning {self.task}", self.total, enabled=self.show_progress, count=True) as bar:
            bar.advance(progress.step)
            try:
                for epoch in range(config.epochs):
                    order = torch.randperm(self.n_examples, generator=generator).tolist()
                    for index in range(self.steps_per_epoch):
                        if epoch * self.steps_per_epoch + index < progress.step:
                            continue  # done before the run was resumed
                        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
                        self._step(batch, forward_backward, bar)
                        bar.advance(1)
                        saved = False
                        if progress.step % self.eval_every == 0 or progress.step == self.total:
                            self._evaluate(epoch, evaluate, better, describe, bar)
                            saved = True
                        if any_rank(stop_request.requested, self.world, self.device) and not progress.finished:
                            if not saved:
                                self.save(best=False)
                            self.log.write("stop", step=progress.step, signal=stop_request.signal)
                            raise TrainingStopped(progress.step, str(self._state_path()))
            except KeyboardInterrupt:
                raise Interrupted(self._left_behind()) from None
        if progress.last_step_bad:
            raise Gpt1Error(f"the last step ({progress.step}) had a non-finite loss or gradient and was skipped; "
                            f"{self._last_good()} Check the data or lower --lr")
        return progress

    def _step(self, batch: list[int], forward_backward: Callable, bar) -> None:
        progress, config = self.progress, self.config
        step = progress.step
        lr = warmup_linear(step, max_lr=config.lr, warmup=self.warmup, total=self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(config.seed, self.world.rank, step))  # dropout masks: a function of the step
        figures = forward_backward(batch)
        if figures is None:
            progress.step = step + 1
            return  # a tail too small to give every rank an example: skipped on all ranks alike
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip))
        if math.isfinite(figures["loss"]) and math.isfinite(grad_norm):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            progress.step = step + 1
            progress.bad_steps, progress.last_step_bad = 0, False
            self.log.write("train", step=step + 1, **figures, lr=lr)
            bar.update(status=f"loss {figures['loss']:.3f}")
            return
        self.optimizer.zero_grad(set_to_none=True)  # the weights stay those of the last finite step
        progress.step = step + 1
        progress.bad_steps += 1
        progress.skipped_steps += 1
        progress.last_step_bad = True
        self.log.write("skip", step=step + 1, loss=figures["loss"], grad_norm=grad_norm)
        bar.log(f"[yellow]step {step + 1}: non-finite loss or gradient, step skipped ({progress.bad_steps} in a row)")
        if progress.bad_steps >= config.max_bad_steps:
            raise Gpt1Error(f"{progress.bad_steps} non-finite steps in a row at step {step + 1}: lower --lr or check "
                            f"the data. {self._last_good()}")

    def _evaluate(self, epoch: int, evaluate, better, describe, bar) -> None:
        progress = self.progress
        report = evaluate()
        self.model.train()  # whatever evaluation did to the mode, training goes on with dropout
        self.wrapped.train()
        self.log.write("eval", step=progress.step, epoch=epoch, **{k: v for k, v in report.items() if k != "confusion"})
        bar.log(describe(progress.step, report))
        improved = progress.best_report is None or better(report, progress.best_report)
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

    def summary(self, kernels: str) -> dict:
        progress = self.progress
        return {"task": self.task, "steps": progress.step, "best": progress.best, "metric": self.config.metric,
                "val": progress.best_report, "best_step": progress.best_step, "skipped_steps": progress.skipped_steps,
                "seconds": round(progress.seconds, 2), "kernels": kernels, "out": str(self.out),
                "resumed": self.start.resumed}


def finished_summary(start: Start, config, task: str) -> dict:
    """What a finished run reports when asked to resume: its final figures, nothing run."""
    progress = start.progress
    return {"task": task, "steps": progress.step, "best": progress.best, "metric": config.metric,
            "val": progress.best_report, "best_step": progress.best_step, "skipped_steps": progress.skipped_steps,
            "seconds": round(progress.seconds, 2), "kernels": None, "out": str(config.out), "resumed": True,
            "already_finished": True}
