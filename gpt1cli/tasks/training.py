"""Fine-tuning, whatever the task kind (a head, or the generate task): the settings every kind
shares, the run directory's policy (a new run, ``--resume``, ``--overwrite``), the resumable
training state, and the loop over epochs with model selection, built on
:class:`~gpt1cli.train.loop.Trainer`. A task kind supplies its model and its :class:`Objective`.

A run directory holds:

* ``checkpoints/``: the last evaluated model (``latest`` names it) and the best by the validation
  metric (``best`` names it; the same folder when the last evaluation was the best). A run
  directory given to ``eval``, ``predict`` and ``generate`` stands for its best checkpoint;
* ``train-state/checkpoints/``: the newest training state (current weights, AdamW moments, the
  fp16 loss scaler, the loop's position and the best so far), written at every evaluation and
  when stopped; it is what ``--resume`` continues from, exactly;
* ``metrics.jsonl``.

``--patience N`` ends a run early once N evaluations in a row brought no improvement; the run
is then finished (its summary says at which step it stopped).

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
from rich.markup import escape

from ..checkpoint import (BEST, CHECKPOINTS, LATEST, META, TRAIN_STATE, TRAINER_META, Checkpoint, load_checkpoint,
                          save_checkpoint)
from .. import settings
from ..checks import SEED, check_number, number
from ..config import ModelConfig
from ..errors import Gpt1Error, Interrupted
from ..fileio import atomic_copy, plain_name, read_json, remove_tree
from ..settings import ANEW, MAY_CHANGE, one_of, path, setting
from ..model import ops
from ..runtime import DEVICE_HELP, PRECISION_DEFAULT, PRECISION_HELP, device_rule, precision_rule
from ..train.distributed import PARALLEL_MODES, World, barrier, distributed_session
from ..train.loop import SkippedSteps, Trainer, due, run_precision
from ..train.memory import available_memory, estimate_memory, flops_per_token, human_bytes
from ..tracking import trackers_rule
from ..train.metrics_log import MetricsLog
from ..data.tables import datasets_kind, input_hash
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

    train: str = setting(help="Training examples (.jsonl, .csv, .tsv, .parquet, .arrow or a datasets folder; fields per "
                         "task in the README, other column names with --field). Required, "
                         "except with --resume.", rule=path, show_default="none", on_resume=ANEW, resume_fills=True)
    val: str = setting(help="Validation examples; the best checkpoint by --metric on them is kept. Required, except "
                       "with --resume.", rule=path, show_default="none", on_resume=ANEW, resume_fills=True)
    from_run: str = setting(help="Pre-trained checkpoint or run directory. Required, except with --resume.",
                            flags=("--from",), rule=path, show_default="none", resume_fills=True)
    out: str = setting(help="Run directory: the last and the best checkpoint in checkpoints/, the resumable state in "
                       "train-state/, metrics.jsonl.", flags=("--out", "-o"), rule=path)
    resume: bool = setting(False, "Continue the run in --out exactly from its training state, with its own settings "
                           "(only --device, --precision, --parallel, --dist-timeout, --max-bad-steps, --log-every, --log and "
                           "--patience may change); a finished run reports its figures; without a state yet, the run "
                           "starts.", flags=("--resume",), on_resume=ANEW, saved=False)
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
    metric: str | None = setting(None, "Model selection: accuracy, macro_f1, mcc, f1 (two labels: of the second in "
                                 "sorted order, e.g. 1), pearson, spearman; generate: loss, bleu, chrf, rougeL, exact "
                                 "(greedy decoding of --val).",
                                 show_default="accuracy, pearson with --regression, loss for generate")
    eval_every: int | None = setting(None, "Validate (and write the resumable state) every N steps.",
                                     rule=number(minimum=1), show_default="once per epoch")
    patience: int | None = setting(None, "Stop early after N evaluations in a row without a better --metric.",
                                   rule=number(minimum=1), show_default="off", on_resume=MAY_CHANGE)
    log_every: int = setting(10, "Report loss, lr and examples/s every N steps (a plain line when standard error is "
                             "not a terminal; metrics.jsonl has every step).", rule=number(minimum=1),
                             on_resume=MAY_CHANGE)
    log: str | None = setting(None, "Also send the metrics to trackers, comma-separated: tensorboard (RUN/tensorboard/), "
                              "wandb (offline unless a W&B API key is set or WANDB_MODE says otherwise), csv "
                              "(RUN/metrics.csv).", rule=trackers_rule, show_default="none", on_resume=MAY_CHANGE)
    max_bad_steps: int = setting(10, "Stop after this many non-finite steps in a row (each is skipped).",
                                 rule=number(minimum=1), on_resume=MAY_CHANGE)
    seed: int = setting(0, "Seed of the head, dropout and example order.", rule=number(**SEED))
    device: str = setting("auto", DEVICE_HELP, rule=device_rule, on_resume=MAY_CHANGE)
    # None: auto (recorded as None; metrics.jsonl records what it resolved to on the run's device).
    precision: str | None = setting(None, PRECISION_HELP, rule=precision_rule, show_default=PRECISION_DEFAULT,
                                    on_resume=MAY_CHANGE)
    parallel: str = setting("ddp", "Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded).",
                            rule=one_of(PARALLEL_MODES), on_resume=MAY_CHANGE)
    dist_timeout: float = setting(600.0, "Seconds a rank waits for the others before the job fails.",
                                  rule=number(above=0), on_resume=MAY_CHANGE)
    # `gpt1 finetune --dry-run` (an option of the command, not a setting of the run).
    dry_run: bool = setting(False, "Check the settings and files, report what the run would be, write nothing.",
                            option=False, saved=False, on_resume=ANEW)


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
    evals_since_best: int = 0  # evaluations in a row without improvement (--patience)
    stopped_early: int | None = None  # the step --patience ended the run at
    last_eval_step: int | None = None  # the step of the last evaluation (checkpoints/latest)
    last_report: dict | None = None

    @classmethod
    def from_trainer(cls, trainer: dict, source) -> "Progress":
        """The position saved in a training state's ``trainer.json``, checked against its step."""
        data = trainer.get("progress")
        try:
            progress = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})
            check_number(progress.step, "the saved step", minimum=0)
            ok = (progress.step == trainer.get("step") and isinstance(progress.best_report, (dict, type(None)))
                  and isinstance(progress.last_report, (dict, type(None))))
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
    writes = world.is_main and not config.dry_run
    if config.overwrite:
        start = _fresh(config, hashes)  # the source is checked before anything is removed
        if writes:
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
        if writes:
            atomic_copy(state.tokenizer_path, tokenizer)
        elif config.dry_run:
            tokenizer = state.tokenizer_path
        barrier(world)
        return Start(state.config, tokenizer, str(state.meta.get("from", "")), state.state_dict, state, progress, hashes)
    if (out / CHECKPOINTS / LATEST).is_file():
        if config.resume:
            raise Gpt1Error(f"{out} already holds a run without a training state to resume from (made by an "
                            "earlier gpt1): pass --overwrite to start over, or choose another --out")
        raise Gpt1Error(f"{out} already holds a run: pass --overwrite to replace it, or choose another --out")
    if config.resume:
        say(f"no checkpoint in {out} yet: {'the run would start' if config.dry_run else 'starting the run'}")
    if (out / LOG).exists() and writes:
        (out / LOG).unlink()  # the log of an attempt that never reached a checkpoint
    return _fresh(config, hashes)


def _fresh(config, hashes: dict) -> Start:
    source = load_checkpoint(config.from_run)
    if source.task:
        raise Gpt1Error(f"{source.path} is already fine-tuned ({source.task['name']}): start from a pre-trained run")
    weights = source.state_dict if config.init == "pretrained" else None
    return Start(source.config, source.tokenizer_path, str(source.path), weights, None, Progress(), hashes)


def _hash(path, option: str) -> str:
    """The content hash of a task file, or of a datasets folder's data files (a resumed run checks it)."""
    path = Path(path)
    if not path.is_file() and not (path.is_dir() and datasets_kind(path) is not None):
        raise Gpt1Error(f"task file not found: {path} ({option})")
    try:
        return input_hash(path)
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
    process group (when there is one), rank 0 holding the run directory's lock (a dry run takes
    none: it writes nothing)."""
    config = config.check()
    with distributed_session(config.device, config.dist_timeout) as (world, device):
        with locked_directory(config.out, "run directory", enabled=world.is_main and not config.dry_run):
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
    optimiser. ``logged`` adds the task kind's figures to the log's ``config`` record. With
    ``config.dry_run`` nothing is placed, written or trained: :meth:`run` returns the plan.
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
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.precision = run_precision(config.precision, self.device,
                                       sharded=self.world.distributed and config.parallel == "fsdp")
        self.kernels = ops.describe_path(self.device)
        self.memory = self._memory()
        self._clock = time.perf_counter()
        self._window_examples, self._window_start = 0, time.perf_counter()
        if config.dry_run:
            self.log, self.trainer = MetricsLog(None), None
            return
        self.log = MetricsLog(self.out / LOG if self.world.is_main else None, trackers=config.log,
                              run_config=settings_of(config))
        self.trainer = Trainer(self.model, world=self.world, device=self.device, parallel=config.parallel, lr=config.lr,
                               weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed,
                               schedule=self._lr, log=self.log, precision=config.precision)
        if self.start.resumed:
            self.log.write("resume", step=self.progress.step, kernels=self.kernels, device=str(self.device),
                           precision=self.precision, world_size=self.world.world_size)
        else:
            self.log.write("config", config=settings_of(config), model=self.start.config.to_dict(), **self.logged,
                           kernels=self.kernels, device=str(self.device), precision=self.precision,
                           parameters=self.parameters)
        self._restore()

    def _lr(self, step: int) -> float:
        return warmup_linear(step, max_lr=self.config.lr, warmup=self.warmup, total=self.total)

    # --- what the run is and costs

    def _memory(self) -> dict:
        """The memory estimate of one process (:mod:`gpt1cli.train.memory`; a batch's sequences at full context)."""
        sequences = self.task_info.get("n_choices") or (2 if self.task == "similar" else 1)
        per_rank = math.ceil(self.config.batch_size / self.world.world_size) * sequences
        sharded = self.world.distributed and self.config.parallel == "fsdp"
        estimate = estimate_memory(self.start.config, micro_batch=per_rank, global_batch=self.config.batch_size * sequences,
                                   device=self.device, shards=self.world.world_size if sharded else 1)
        return {"estimate": estimate, "needed": estimate.total, "available": available_memory(self.device)}

    def plan_line(self) -> str:
        """The line a run starts with: what it is and costs (``--dry-run`` gives the details)."""
        available = self.memory["available"]
        free = f" of {human_bytes(available)} available" if available is not None else ""
        return (f"{self.parameters:,} parameters, {flops_per_token(self.start.config):.3g} FLOPs per token, about "
                f"{human_bytes(self.memory['needed'])} of memory{free} on {self.device}; {self.precision}; "
                f"{self.n_examples:,} examples, {self.total:,} steps ({self.steps_per_epoch:,} per epoch); {self.kernels}")

    def plan(self) -> dict:
        """What ``--dry-run`` reports."""
        return {"dry_run": True, "task": self.task, "out": str(self.out), "resumed": self.start.resumed,
                "parameters": self.parameters, "flops_per_token": flops_per_token(self.start.config),
                "memory": self.memory, "device": str(self.device), "precision": self.precision,
                "kernels": self.kernels, "examples": {k: v for k, v in self.logged.items() if k.endswith("_examples")},
                "batch_size": self.config.batch_size, "epochs": self.config.epochs,
                "steps_per_epoch": self.steps_per_epoch, "steps": self.total, "start_step": self.progress.step,
                "eval_every": self.eval_every, "warmup_steps": self.warmup, "model": self.start.config.to_dict(),
                "from": self.start.origin, "config": settings_of(self.config)}

    # --- resume

    def _restore(self) -> None:
        """Load the training state's optimiser moments and loss scaler (the weights are in the model already)."""
        state = self.start.state
        if state is None:
            return
        groups = state.trainer_meta.get("optimizer_groups")
        if not isinstance(groups, list):
            raise Gpt1Error(f"{state.path}: the training state lacks the optimiser's settings: it is corrupt")
        self.trainer.restore(groups, state.trainer_tensors, state.trainer_meta.get("grad_scaler"),
                             source=state.path / TRAINER_META)

    def _saved(self, step: int, pointer: str | None = None) -> bool:
        """Whether ``checkpoints/`` holds step ``step`` complete (and ``pointer``, if given, names it)."""
        name = f"step_{step:08d}"
        if pointer is not None and _pointer(self.out / CHECKPOINTS / pointer) != name:
            return False
        return (self.out / CHECKPOINTS / name / META).is_file()

    def _repair(self) -> None:
        """A run stopped between writing its training state and its checkpoints: write what is missing
        (the state's weights are that step's). Anything else missing is damage."""
        progress = self.progress
        missing_best = progress.best_step is not None and not self._saved(progress.best_step, BEST)
        missing_last = progress.last_eval_step is not None and not self._saved(progress.last_eval_step)
        if not (missing_best or missing_last):
            return
        lost = progress.best_step if missing_best and progress.best_step != progress.step else \
            progress.last_eval_step if missing_last and progress.last_eval_step != progress.step else None
        if lost is not None:
            raise Gpt1Error(f"{self.out / CHECKPOINTS} lacks the checkpoint of step {lost} its training state records: "
                            "pass --overwrite to start over")
        weights = self._gather()[0]
        if self.world.is_main:
            self._save_model(weights, best=progress.best_step == progress.step)
        barrier(self.world)

    # --- checkpoints

    def _gather(self) -> tuple[dict, dict, list, dict | None]:
        state = self.trainer.train_state()
        if not state.finite:
            raise Gpt1Error(f"the weights are not finite at step {self.progress.step}; nothing was saved: lower --lr. "
                            f"{self._last_good()}")
        return self.rename(state.model), state.optimizer_tensors, state.optimizer_groups, state.scaler

    def _last_good(self) -> str:
        if self.progress.best_step is None:
            return "No checkpoint was written."
        return f"The best checkpoint so far (step {self.progress.best_step}) is in {self.out / CHECKPOINTS}."

    def _meta(self, kind: str, report: dict | None) -> dict:
        return {"kind": kind, "task": self.task_info, "metrics": {"val": report}, "from": self.start.origin}

    def save(self, *, evaluated: bool, best: bool) -> None:
        """Write the training state at the current step and, after an evaluation (``evaluated``), the
        model to ``checkpoints/`` (named ``latest``; ``best`` names it too when it is the best)."""
        step = self.progress.step
        self.progress.seconds += time.perf_counter() - self._clock
        self._clock = time.perf_counter()
        model_state, tensors, groups, scaler = self._gather()
        if self.world.is_main:
            trainer = {"driver": self.driver, "task": self.task, "step": step, "config": settings_of(self.config),
                       "data": self.start.data_hashes, "progress": dataclasses.asdict(self.progress),
                       "optimizer_groups": groups, "world_size": self.world.world_size, "precision": self.precision,
                       "grad_scaler": scaler}
            # The state first: resumed from it, a missing checkpoint of the same step is rewritten.
            save_checkpoint(state_folder(self.out), step, model_state=model_state, config=self.start.config,
                            tokenizer_path=self.start.tokenizer_path,
                            meta=self._meta("finetune-state", self.progress.best_report),
                            trainer_tensors=tensors, trainer_meta=trainer, keep=1)
            if evaluated:
                self._save_model(model_state, best=best)
        barrier(self.world)
        self.state_step = step

    def _save_model(self, model_state: dict, *, best: bool) -> None:
        """The evaluated model of this step; pruning keeps it and the best, nothing else."""
        save_checkpoint(self.out, self.progress.step, model_state=model_state, config=self.start.config,
                        tokenizer_path=self.start.tokenizer_path, meta=self._meta("finetune", self.progress.last_report),
                        keep=1, best=best)

    # --- training

    def run(self, objective: Objective) -> dict:
        """Train to the end (or to a stop on request, or early with --patience) and return the run's
        summary; with ``dry_run``, the plan."""
        with self.log:  # the trackers are finished however the run ends
            return self._run(objective)

    def _run(self, objective: Objective) -> dict:
        progress, config = self.progress, self.config
        if config.dry_run:
            return self.plan()
        if progress.finished:
            return self.summary()
        self._repair()
        generator = torch.Generator().manual_seed(config.seed)
        self.trainer.train_mode()
        with self.trainer.running(f"fine-tuning {self.task}", self.total, progress.step,
                                  show_progress=self.show_progress) as bar:
            bar.log(escape(self.plan_line()))
            try:
                self._epochs(objective, bar, generator)
            except KeyboardInterrupt:
                raise Interrupted(self._left_behind()) from None
        if progress.last_step_bad:
            raise Gpt1Error(f"the last step ({progress.step}) had a non-finite loss or gradient and was skipped; "
                            f"{self._last_good()} Check the data or lower --lr")
        return self.summary()

    def _epochs(self, objective: Objective, bar, generator: torch.Generator) -> None:
        progress, config = self.progress, self.config
        self._window_examples, self._window_start = 0, time.perf_counter()
        for epoch in range(config.epochs):
            order = torch.randperm(self.n_examples, generator=generator).tolist()
            for index in range(self.steps_per_epoch):
                if epoch * self.steps_per_epoch + index < progress.step:
                    continue  # done before the run was resumed
                batch = order[index * config.batch_size : (index + 1) * config.batch_size]
                self._step(batch, objective, bar)
                evaluated = False
                if due(progress.step, self.eval_every, self.total):
                    self._evaluate(epoch, objective, bar)
                    evaluated = True
                    if progress.stopped_early is not None:
                        bar.log(f"step {progress.step}: stopping early, {progress.evals_since_best} evaluations "
                                f"without a better {config.metric} (--patience {config.patience}); the best is step "
                                f"{progress.best_step}")
                        return
                if self.trainer.stop_requested() and not progress.finished:
                    if not evaluated:
                        self.save(evaluated=False, best=False)
                    self.trainer.stopped(progress.step, str(self._state_path()))

    def _step(self, batch: list[int], objective: Objective, bar) -> None:
        progress = self.progress
        result = self.trainer.step(progress.step, lambda: self._forward_backward(batch, objective), progress, bar)
        progress.step = result.done
        bar.advance(1)
        if result.good:  # applied, or skipped by the fp16 loss scaler (the weights are sound)
            self.log.write("train", step=result.done, **result.figures, lr=result.lr)
            self._window_examples += len(batch)
            if due(result.done, self.config.log_every, self.total):
                elapsed = time.perf_counter() - self._window_start
                rate = self._window_examples / elapsed if elapsed > 0 else math.nan
                bar.update(status=f"loss {result.figures['loss']:.4f}  lr {result.lr:.3e}  {rate:,.1f} examples/s")
                self._window_examples, self._window_start = 0, time.perf_counter()
        elif result.figures is not None and progress.bad_steps >= self.config.max_bad_steps:
            raise Gpt1Error(f"{progress.bad_steps} non-finite steps in a row at step {result.done}: lower --lr or "
                            f"check the data. {self._last_good()}")

    def _forward_backward(self, batch: list[int], objective: Objective) -> dict | None:
        # Each rank takes a strided share of the global batch (the last batch may be uneven).
        share = [batch[i :: self.world.world_size] for i in range(self.world.world_size)]
        if any(not part for part in share):
            return None  # a tail too small to give every rank an example: skipped on all ranks alike
        loss, figures = objective.loss(share[self.world.rank], batch)
        self.trainer.backward(loss)
        return figures

    def _evaluate(self, epoch: int, objective: Objective, bar) -> None:
        progress, config = self.progress, self.config
        report = objective.evaluate()
        self.trainer.train_mode()  # whatever evaluation did to the mode, training goes on with dropout
        self.log.write("eval", step=progress.step, epoch=epoch, **{k: v for k, v in report.items() if k != "confusion"})
        bar.log(objective.describe(progress.step, report))
        improved = progress.best_report is None or objective.better(report, progress.best_report)
        if improved:
            progress.best, progress.best_report, progress.best_step = report[config.metric], report, progress.step
            progress.evals_since_best = 0
        else:
            progress.evals_since_best += 1
        progress.last_eval_step, progress.last_report = progress.step, report
        progress.finished = progress.step == self.total
        if config.patience is not None and progress.evals_since_best >= config.patience and not progress.finished:
            progress.finished, progress.stopped_early = True, progress.step
            self.log.write("early_stop", step=progress.step, patience=config.patience, best_step=progress.best_step)
        self.save(evaluated=True, best=improved)
        self._window_examples, self._window_start = 0, time.perf_counter()  # evaluation time is not training speed

    def _state_path(self) -> Path:
        return state_folder(self.out) / CHECKPOINTS / f"step_{self.state_step:08d}"

    def _left_behind(self) -> str:
        now = f"fine-tuning stopped at once after step {self.progress.step}"
        if self.state_step is None:
            return f"{now}; no checkpoint was written: run the command again to start over"
        return f"{now}; {self.out} continues from its training state of step {self.state_step} with --resume"

    def summary(self) -> dict:
        return {**run_summary(self.progress, self.config, self.task, out=str(self.out), kernels=self.kernels,
                              resumed=self.start.resumed), "precision": self.precision}


def run_summary(progress: Progress, config: FinetuneSettings, task: str, *, out: str, kernels: str | None,
                resumed: bool) -> dict:
    """What a fine-tuning run reports: its best validation figures, steps, skipped steps, where
    --patience stopped it (None: it ran to the end) and time."""
    return {"task": task, "steps": progress.step, "best": progress.best, "metric": config.metric,
            "val": progress.best_report, "best_step": progress.best_step, "skipped_steps": progress.skipped_steps,
            "overflow_steps": progress.overflow_steps, "stopped_early": progress.stopped_early,
            "last_step": progress.last_eval_step, "seconds": round(progress.seconds, 2), "kernels": kernels,
            "out": out, "resumed": resumed}


def finished_summary(start: Start, config: FinetuneSettings, task: str) -> dict:
    """What a finished run reports when asked to resume: its final figures, nothing run."""
    return {**run_summary(start.progress, config, task, out=str(config.out), kernels=None, resumed=True),
            "already_finished": True}
