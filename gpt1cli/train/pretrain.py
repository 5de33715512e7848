"""Pre-training on the language-modelling objective L1 over memory-mapped token shards."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import SEED, check_number
from ..config import ARCHS, ATTENTION, MAX_SIZE, TRAIN_DEFAULTS, ModelConfig, count_parameters, preset
from ..data.shards import MANIFEST, ShardDataset, WindowSampler
from ..data.tokenizer import load_tokenizer
from ..errors import Gpt1Error, Interrupted, TrainingStopped
from ..fileio import plain_name
from ..locking import LOCK_NAME, exclusive_output
from ..model import ops
from ..model.gpt import GPT
from ..progress import progress_bar
from ..runtime import DEVICES, autocast, seed_everything, step_seed
from .checkpoint import (
    CHECKPOINTS,
    LATEST,
    META,
    Checkpoint,
    load_checkpoint,
    optimizer_from_full_state,
    optimizer_tensors,
    optimizer_to_full_state,
    read_pointer,
    restore_optimizer,
    save_checkpoint,
)
from .distributed import (
    PARALLEL_MODES,
    World,
    all_reduce_mean,
    any_rank,
    barrier,
    distributed_session,
    full_state,
    gradient_sync,
    wrap_model,
)
from .evaluate import evaluate_lm
from .memory import available_memory, estimate_memory, flops_per_token, human_bytes, processes_per_machine
from .metrics import MetricsLog, read_records
from .optim import make_optimizer, warmup_cosine
from .signals import graceful_stop

# Settings a resumed run may change; everything else must stay as saved for an exact resume.
RESUMABLE_CHANGES = ("steps", "stop_after", "parallel", "dist_timeout", "eval_every", "ckpt_every", "keep", "log_every",
                     "eval_tokens", "max_bad_steps")
# Given anew on every invocation, resumed or not (where the data and the run are, and what runs it).
PER_INVOCATION = ("shards", "out", "resume", "device")
# Defaults of the run-management settings; None in a config means "the default" (or, on resume, "as saved").
RUN_DEFAULTS = dict(eval_every=100, eval_tokens=65_536, ckpt_every=500, keep=3, log_every=10, max_bad_steps=10,
                    parallel="ddp", dist_timeout=600.0)
METRICS = "metrics.jsonl"

MAX_COUNT = 2**62  # steps, batch sizes, token counts: beyond any real run, within every integer type used
YEAR_S = 365 * 24 * 3600

# The one table of numeric settings: (int or float, check_number bounds, what the number must be).
# The CLI applies it at parse time, PretrainConfig to every config (from Python or a resumed run).
SETTING_RULES: dict[str, tuple[type, dict, str]] = {
    "n_ctx": (int, dict(minimum=1, maximum=MAX_SIZE), "positive"),
    "window": (int, dict(minimum=1, maximum=MAX_SIZE), "positive"),
    "steps": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "batch_size": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "grad_accum": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "warmup": (int, dict(minimum=0, maximum=MAX_COUNT), ">= 0"),
    "eval_every": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "eval_tokens": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "ckpt_every": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "keep": (int, dict(minimum=1, maximum=MAX_COUNT), "at least 1"),
    "log_every": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "max_bad_steps": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "stop_after": (int, dict(minimum=1, maximum=MAX_COUNT), "positive"),
    "lr": (float, dict(above=0), "positive and finite"),
    "weight_decay": (float, dict(minimum=0), ">= 0 and finite"),
    # 0 would zero every update and a negative norm reverses the gradient: neither means "off".
    "grad_clip": (float, dict(above=0), "positive and finite"),
    "dropout": (float, dict(minimum=0, below=1), "in [0, 1)"),
    "seed": (int, dict(SEED), "in [0, 2^63 - 1]"),
    "dist_timeout": (float, dict(above=0, maximum=YEAR_S), "positive and finite"),
}
# Settings that may be None (the preset's or the run's default); all others must be given.
OPTIONAL = ("n_ctx", "window", "steps", "batch_size", "lr", "warmup", "eval_every", "eval_tokens", "ckpt_every", "keep",
            "log_every", "max_bad_steps", "stop_after", "parallel", "dist_timeout")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_setting(name: str, value):
    """``value`` if it is a valid value of numeric setting ``name``; else one clear :class:`Gpt1Error`."""
    kind, bounds, wording = SETTING_RULES[name]
    if value is None:
        if name in OPTIONAL:
            return None
        raise Gpt1Error(f"{flag(name)} must be given")
    number_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, number_types):
        raise Gpt1Error(f"{flag(name)} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    maximum = bounds.get("maximum")
    if maximum is not None and not (isinstance(value, float) and not math.isfinite(value)) and value > maximum:
        raise Gpt1Error(f"{flag(name)} must be at most {maximum}, got {value!r}")
    try:
        check_number(value, flag(name), **bounds)
    except Gpt1Error:
        raise Gpt1Error(f"{flag(name)} must be {wording}, got {value!r}") from None
    return value


def _check_choice(name: str, value, choices, what: str) -> None:
    if value not in choices:
        raise Gpt1Error(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


@dataclass
class PretrainConfig:
    """Everything a pre-training run depends on (None: the preset's default)."""

    shards: str
    out: str
    preset: str = "tiny"
    arch: str = "gpt1"
    n_ctx: int | None = None
    attention: str = "dense"
    window: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    grad_accum: int = 1
    lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dropout: float = 0.1
    seed: int = 0
    eval_every: int | None = None  # default 100
    eval_tokens: int | None = None  # default 65_536
    ckpt_every: int | None = None  # default 500
    keep: int | None = None  # default 3
    log_every: int | None = None  # default 10
    max_bad_steps: int | None = None  # default 10
    device: str = "auto"
    compile: bool = False
    parallel: str | None = None  # default "ddp"
    dist_timeout: float | None = None  # default 600 s
    resume: bool = False
    stop_after: int | None = None  # end this invocation after that step (checkpointed), schedule unchanged

    def check(self) -> "PretrainConfig":
        """Check every setting's type and range (the one place, for the CLI, Python callers and resumed runs)."""
        for name in ("shards", "out"):
            if not isinstance(getattr(self, name), (str, os.PathLike)):
                raise Gpt1Error(f"{flag(name)} must be a path, got {getattr(self, name)!r}")
        _check_choice("preset", self.preset, tuple(TRAIN_DEFAULTS), "preset")
        _check_choice("arch", self.arch, ARCHS, "architecture")
        _check_choice("attention", self.attention, ATTENTION, "attention")
        if self.device not in DEVICES:
            raise Gpt1Error(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.parallel is not None and self.parallel not in PARALLEL_MODES:
            raise Gpt1Error(f"--parallel must be ddp or fsdp, not {self.parallel!r}")
        for name in ("compile", "resume"):
            if not isinstance(getattr(self, name), bool):
                raise Gpt1Error(f"{flag(name)} must be true or false, got {getattr(self, name)!r}")
        for name in SETTING_RULES:
            check_setting(name, getattr(self, name))
        return self

    def resolved(self) -> "PretrainConfig":
        """Fill preset defaults and check ranges."""
        self.check()
        defaults = TRAIN_DEFAULTS[self.preset]
        cfg = dataclasses.replace(
            self,
            **{k: v for k, v in RUN_DEFAULTS.items() if getattr(self, k) is None},
            shards=os.fspath(self.shards),
            out=os.fspath(self.out),
            steps=self.steps if self.steps is not None else defaults["steps"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            lr=self.lr if self.lr is not None else defaults["lr"],
        )
        if cfg.warmup is None:
            cfg.warmup = min(2000, max(1, cfg.steps // 10))
        cfg.check()
        if cfg.batch_size % cfg.grad_accum:
            raise Gpt1Error(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum {cfg.grad_accum}")
        return cfg

    def explicit(self) -> set[str]:
        """Settings that differ from the dataclass defaults (what a Python caller chose)."""
        return {f.name for f in dataclasses.fields(self)
                if f.default is not dataclasses.MISSING and getattr(self, f.name) != f.default}


def _named(model: torch.nn.Module) -> tuple[dict, dict]:
    params = dict(model.named_parameters())
    return params, {p: n for n, p in params.items()}


def last_checkpoint_step(out: str | Path) -> int | None:
    """The step of the checkpoint ``RUN/checkpoints/latest`` names, when that checkpoint is complete."""
    root = Path(out) / CHECKPOINTS
    name = read_pointer(root / LATEST, strict=False)
    if not name or not (root / name / META).is_file():
        return None
    try:
        return int(name.rpartition("_")[2])
    except ValueError:
        return None


def left_behind(out: str | Path) -> str:
    """What an interrupted run leaves, for its last message."""
    step = last_checkpoint_step(out)
    if step is None:
        return "no checkpoint written"
    return f"last checkpoint step {step} in {Path(out) / CHECKPOINTS}; continue with --resume"


def pretrain(config: PretrainConfig, *, show_progress: bool = True, dry_run: bool = False,
             given: set[str] | None = None) -> dict:
    """Train a model on ``config.shards``; checkpoints and metrics go to ``config.out``. Returns a summary.

    Under torchrun every rank runs this; rank 0 alone logs and writes checkpoints. ``dry_run``
    checks everything, writes nothing and returns the plan (parameters, FLOPs, memory).
    ``given`` names the settings the caller chose (the CLI's explicit options; by default those
    that differ from the defaults): on ``resume`` they must agree with the run's saved settings.
    A Ctrl-C anywhere becomes :class:`Interrupted` saying which checkpoint is left.
    """
    config.check()
    if given is None:
        given = config.explicit()
    timeout = config.dist_timeout if config.dist_timeout is not None else RUN_DEFAULTS["dist_timeout"]
    try:
        with distributed_session(config.device, timeout) as (world, device):
            return _pretrain(config, world, device, show_progress, dry_run,
                             set(given) & {f.name for f in dataclasses.fields(PretrainConfig)})
    except KeyboardInterrupt:
        raise Interrupted(left_behind(config.out)) from None


def _on_every_rank(world: World, device: torch.device, check) -> None:
    """Run ``check``; when it fails on any rank, every rank fails (none waits in a collective forever)."""
    error = None
    try:
        check()
    except Gpt1Error as exc:
        error = exc
    if any_rank(error is not None, world, device):
        raise error or Gpt1Error("another process of this job stopped with an error (see its message)")


@contextlib.contextmanager
def _run_directory(out: Path, world: World, device: torch.device):
    """Hold the run directory's writer lock (rank 0) for the block; every rank learns whether it was taken.

    A directory this call created is removed again when the run fails before writing into it.
    """
    created = []  # the directories the lock will create, innermost first
    missing = out.absolute()
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    with contextlib.ExitStack() as stack:
        def take() -> None:
            if world.is_main:
                stack.enter_context(exclusive_output(out, "run directory"))
                _check_writable(out)

        try:
            _on_every_rank(world, device, take)
            yield
        except BaseException:
            if created and world.is_main:
                _remove_if_only_the_lock(created)
            raise


def _check_writable(directory: Path) -> None:
    """Fail now, not at the first checkpoint, when the run directory cannot take new files."""
    for folder in (directory, directory / CHECKPOINTS):
        if not folder.is_dir():
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".gpt1-probe-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise Gpt1Error(f"cannot write to {folder}: {exc.strerror or exc}; check it is a writable directory "
                            "with free space, or choose another --out") from None


def _remove_if_only_the_lock(created: list[Path]) -> None:
    """Undo the directories a failed run created (innermost first), when nothing but the lock is in them."""
    with contextlib.suppress(OSError):
        if {p.name for p in created[0].iterdir()} <= {LOCK_NAME}:
            (created[0] / LOCK_NAME).unlink(missing_ok=True)
            for directory in created:
                directory.rmdir()  # stops (OSError) at the first one that is not empty


def _shard_tokenizer(data: ShardDataset) -> tuple[Path, bytes]:
    """The shard directory's tokenizer, read once at the start and checked against the manifest.

    The run stores exactly these bytes in every checkpoint, so a tokenizer deleted or replaced
    during training changes nothing, and a missing one is reported before any training.
    """
    manifest = data.directory / MANIFEST
    path = Path(data.tokenizer_path)
    if path.parent != data.directory:  # an absolute or relative path in the manifest, not a file of the directory
        plain_name(str(path), "tokenizer file", manifest)
    path = data.directory / plain_name(path.name, "tokenizer file", manifest)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise Gpt1Error(f"the tokenizer {path} named in {manifest} is missing: the shard directory is incomplete; "
                        "restore it or re-run `gpt1 tokenize`") from None
    except OSError as exc:
        raise Gpt1Error(f"cannot read the tokenizer {path}: {exc.strerror or exc}") from None
    if hashlib.blake2b(content, digest_size=32).hexdigest() != data.tokenizer_hash:
        raise Gpt1Error(f"the tokenizer {path} does not match the hash in {manifest}: it was replaced or damaged; "
                        "restore it or re-run `gpt1 tokenize`")
    vocab = load_tokenizer(path).vocab_size
    if vocab > data.vocab_size:
        raise Gpt1Error(f"the tokenizer {path} has {vocab} tokens but {manifest} says the vocabulary has "
                        f"{data.vocab_size}: the manifest is corrupt; re-run `gpt1 tokenize`")
    return path, content


def _continued_config(config: PretrainConfig, saved: dict, source: Path, model: dict, given: set[str]) -> PretrainConfig:
    """The saved settings ``saved`` of a run (from ``source``), with what may change on resume taken from ``config``.

    A setting the caller chose that the run cannot honour (it would not continue the same run)
    is an error naming it, never silently ignored. ``model`` is the run's model settings (for
    the context and window a preset left unset).
    """
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise Gpt1Error(f"{source} records unknown settings {unknown}: the run is from a newer or other tool")
    try:
        saved_config = PretrainConfig(**{**saved, "stop_after": None})
    except TypeError as exc:
        raise Gpt1Error(f"{source} lacks run settings ({exc}): it is corrupt") from None
    conflicts = []
    for name in sorted(given - set(RESUMABLE_CHANGES) - set(PER_INVOCATION)):
        value, before = getattr(config, name), getattr(saved_config, name)
        if before is None and name in ("n_ctx", "window"):
            before = model.get(name)
        if value != before:
            shown = "on" if value is True else "off" if value is False else value
            had = "on" if before is True else "off" if before is False else before
            conflicts.append(f"{flag(name)} {shown} (the run has {had})")
    if conflicts:
        may = ", ".join(flag(n) for n in (*RESUMABLE_CHANGES, "device"))
        raise Gpt1Error(f"--resume continues the run in {config.out} with its own settings and cannot honour "
                        f"{'; '.join(conflicts)}: leave {'it' if len(conflicts) == 1 else 'them'} out, or start a new "
                        f"run in another --out (on resume only {may} may change)")
    changes = {k: getattr(config, k) for k in RESUMABLE_CHANGES if getattr(config, k) is not None}
    merged = dataclasses.replace(saved_config, **changes, shards=config.shards, out=config.out, resume=True,
                                 device=config.device)
    try:
        return merged.resolved()
    except Gpt1Error as exc:
        raise Gpt1Error(f"{source}: {exc}") from None


def _recorded_start(out: Path) -> tuple[dict, dict] | None:
    """Settings and model settings of the last start recorded in ``RUN/metrics.jsonl`` (None without one)."""
    for record in reversed(read_records(out / METRICS)):
        if record.get("kind") == "config" and isinstance(record.get("config"), dict):
            model = record.get("model")
            return record["config"], model if isinstance(model, dict) else {}
    return None


def _final_figures(out: Path, checkpoint: Checkpoint) -> dict:
    """Loss, tokens/s and validation figures of a run up to its checkpoint (from metrics.jsonl and the checkpoint)."""
    step = checkpoint.step
    records = read_records(out / METRICS)
    train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("step"), int) and r["step"] <= step]
    val = (checkpoint.meta.get("metrics") or {}).get("val") if isinstance(checkpoint.meta.get("metrics"), dict) else None
    figures = {"loss": float("nan"), "tokens_per_s": float("nan"), "val": val if isinstance(val, dict) else None}
    if train:
        last = train[-1]
        for key in ("loss", "tokens_per_s"):
            if isinstance(last.get(key), (int, float)):
                figures[key] = float(last[key])
    return figures


def _memory_plan(model_config: ModelConfig, config: PretrainConfig, world: World, device: torch.device,
                 micro_batch: int) -> dict:
    sharded = world.distributed and config.parallel == "fsdp"
    estimate = estimate_memory(model_config, micro_batch=micro_batch, global_batch=config.batch_size, device=device,
                               shards=world.world_size if sharded else 1)
    sharing = processes_per_machine() if device.type == "cpu" else 1
    return {"estimate": estimate, "needed": estimate.total * sharing, "available": available_memory(device),
            "sharing": sharing}


def _check_memory(plan: dict, model_config: ModelConfig, config: PretrainConfig, micro_batch: int,
                  device: torch.device) -> None:
    needed, available, estimate = plan["needed"], plan["available"], plan["estimate"]
    if available is None or needed <= available:
        return
    shared = f" x {plan['sharing']} processes" if plan["sharing"] > 1 else ""
    raise Gpt1Error(
        f"this run needs about {human_bytes(needed)} of memory{shared} but {device.type} has {human_bytes(available)} "
        f"available ({estimate.parameters:,} parameters: {human_bytes(estimate.state)} for weights, gradients and "
        f"AdamW state; {human_bytes(estimate.activations)} of activations for a micro-batch of {micro_batch} x "
        f"{model_config.n_ctx} tokens): lower --batch-size or raise --grad-accum, shorten --n-ctx, or choose a "
        "smaller preset (`gpt1 pretrain --dry-run` shows the estimate)")


def _pretrain(config: PretrainConfig, world: World, device: torch.device, show_progress: bool, dry_run: bool,
              given: set[str]) -> dict:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise Gpt1Error(f"--out {out} exists and is not a directory; choose another path")
    if not config.resume:
        config = config.resolved()  # every setting checked before the run directory is touched
    lock = contextlib.nullcontext() if dry_run else _run_directory(out, world, device)
    with lock:
        return _run(config, out, world, device, show_progress, dry_run, given)


def _run(config: PretrainConfig, out: Path, world: World, device: torch.device, show_progress: bool, dry_run: bool,
         given: set[str]) -> dict:
    has_checkpoints = (out / CHECKPOINTS / LATEST).exists()
    resume_from = None
    if config.resume:
        if has_checkpoints:
            resume_from = load_checkpoint(out, with_trainer=True)
            config = _continued_config(config, resume_from.trainer_meta["config"], resume_from.path / "trainer.json",
                                       resume_from.config.to_dict(), given)
        elif (out / METRICS).is_file():
            # Killed before its first checkpoint (a requeued job runs the same command with --resume):
            # start again, with the settings that start recorded.
            recorded = _recorded_start(out)
            if recorded is not None:
                config = dataclasses.replace(
                    _continued_config(config, recorded[0], out / METRICS, recorded[1], given), resume=False)
            else:
                config = dataclasses.replace(config, resume=False).resolved()
            if world.is_main:
                print(f"note: {out} has no checkpoint yet (its run stopped before writing one): starting it from step 0",
                      file=sys.stderr, flush=True)
        else:
            raise Gpt1Error(f"--resume: {out} has no checkpoint to resume from; run without --resume to start it")
    elif has_checkpoints:
        raise Gpt1Error(f"{out} already holds a run: pass --resume to continue it or choose another --out")
    if config.batch_size % (config.grad_accum * world.world_size):
        raise Gpt1Error(f"--batch-size {config.batch_size} must be divisible by --grad-accum x processes "
                        f"({config.grad_accum} x {world.world_size})")
    end_step = min(config.steps, config.stop_after or config.steps)

    start_step = resume_from.step if resume_from is not None else 0
    if resume_from is not None and start_step >= end_step:
        limit = (f"--stop-after {config.stop_after}" if config.stop_after is not None and config.stop_after < config.steps
                 else f"--steps {config.steps}")
        return {"nothing_to_do": True, "start_step": start_step, "stopped_at": start_step, "steps": config.steps,
                "limit": limit, "out": str(out), **_final_figures(out, resume_from)}

    data = ShardDataset(config.shards)
    tokenizer_path, tokenizer_bytes = _shard_tokenizer(data)
    if resume_from is not None:
        model_config = resume_from.config
        if resume_from.meta.get("tokenizer_blake2b") != data.tokenizer_hash:
            raise Gpt1Error(f"{config.shards} was made with a different tokenizer than the run in {out}")
    else:
        model_config = preset(config.preset, data.vocab_size, arch=config.arch, n_ctx=config.n_ctx,
                              dropout=config.dropout, attn_dropout=config.dropout, attention=config.attention,
                              window=config.window)
    sampler = WindowSampler(data.train, model_config.n_ctx, config.seed)
    micro_batch = config.batch_size // (config.grad_accum * world.world_size)
    plan = _memory_plan(model_config, config, world, device, micro_batch)
    if dry_run:
        return {"dry_run": True, "config": dataclasses.asdict(config), "model": model_config.to_dict(),
                "parameters": plan["estimate"].parameters, "flops_per_token": flops_per_token(model_config),
                "tokens_per_step": config.batch_size * model_config.n_ctx, "micro_batch": micro_batch,
                "memory": plan, "start_step": start_step, "end_step": end_step, "world_size": world.world_size,
                "device": str(device), "kernels": ops.describe_path(device), "out": str(out)}
    _on_every_rank(world, device, lambda: _check_memory(plan, model_config, config, micro_batch, device))

    seed_everything(config.seed)
    model = GPT(model_config)
    if resume_from is not None:
        model.load_state_dict(resume_from.state_dict)  # before sharding: every rank holds the full weights
    model = model.to(device)
    sharded = world.distributed and config.parallel == "fsdp"
    wrapped = wrap_model(model, config.parallel, world, device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    params, names = _named(model)
    best_val = math.inf
    if resume_from is not None:
        trainer = resume_from.trainer_meta
        if sharded:
            optimizer_from_full_state(wrapped, optimizer, trainer["optimizer_groups"], resume_from.trainer_tensors)
        else:
            restore_optimizer(optimizer, params, trainer["optimizer_groups"], resume_from.trainer_tensors)
        best_val = float(trainer.get("best_val", math.inf))
        resume_from.state_dict, resume_from.trainer_tensors = {}, {}  # copied into the model and optimiser
    step_model = torch.compile(wrapped) if config.compile else wrapped
    eval_model = wrapped if sharded else model

    log = MetricsLog(out / METRICS if world.is_main else None)
    show_progress = show_progress and world.is_main
    tokens_per_step = config.batch_size * model_config.n_ctx
    kernels = ops.describe_path(device)
    parameters = count_parameters(model_config) if sharded else model.num_parameters()
    if resume_from is None:
        log.write("config", config=dataclasses.asdict(config), model=model_config.to_dict(), parameters=parameters,
                  kernels=kernels, device=str(device), world_size=world.world_size)
    else:
        log.write("resume", step=start_step, kernels=kernels, device=str(device), world_size=world.world_size)

    # Step of the newest checkpoint (0: none yet) and of the last step whose update was applied.
    last_saved = start_step
    last_good = start_step
    last_val = None

    def checkpoint(step: int, val: dict | None) -> None:
        nonlocal best_val, last_saved
        # Every rank takes part in gathering a sharded state; rank 0 alone writes.
        if sharded:
            model_state, full_optim = full_state(wrapped, optimizer, config.parallel, world)
            tensors, groups = optimizer_to_full_state(full_optim) if world.is_main else ({}, [])
        else:
            model_state = model.state_dict()
            tensors, groups = optimizer_tensors(optimizer, names)
        # `latest` must never name weights that are not finite: check before anything is written.
        broken = [n for n, t in model_state.items() if not bool(torch.isfinite(t).all())] if world.is_main else []
        if any_rank(bool(broken), world, device):
            where = (f"the last finite checkpoint is step {last_saved} in {out / CHECKPOINTS}" if last_saved
                     else "no checkpoint was written")
            raise Gpt1Error(f"the weights are not finite after step {step} ({broken[0] if broken else 'on rank 0'}): "
                            f"not saved; {where}; lower --lr")
        # The best checkpoint (by the validation loss it was written with) survives pruning.
        is_best = val is not None and val["loss"] < best_val
        if is_best:
            best_val = val["loss"]
        if world.is_main:
            save_checkpoint(
                out, step, model_state=model_state, config=model_config, tokenizer_path=tokenizer_path,
                tokenizer_bytes=tokenizer_bytes,
                meta={"kind": "pretrain", "task": None, "metrics": {"val": val} if val else {}},
                trainer_tensors=tensors,
                trainer_meta={"step": step, "config": dataclasses.asdict(config), "optimizer_groups": groups,
                              "best_val": best_val, "world_size": world.world_size},
                keep=config.keep, best=is_best,
            )
        barrier(world)
        last_saved = step

    def save_last_good() -> None:
        """Checkpoint the weights of the last applied step (a skipped step changed nothing)."""
        if last_good > last_saved:
            checkpoint(last_good, last_val)

    def where_to_continue() -> str:
        if last_saved:
            return f"the last good checkpoint is step {last_saved} in {out / CHECKPOINTS}"
        return "no checkpoint was written"

    model.train()
    bad_steps, loss_value = 0, float("nan")
    window_tokens, window_start = 0, time.perf_counter()
    summary = {"start_step": start_step}
    with graceful_stop() as stop_request, progress_bar("pretraining", config.steps, enabled=show_progress, count=True) as bar:
        bar.advance(start_step)
        for step in range(start_step, end_step):
            lr = warmup_cosine(step, max_lr=config.lr, warmup=config.warmup, total=config.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # One global batch per step from (seed, step); micro-step m of rank r takes slice m * world + r.
            starts = sampler.starts(step, config.batch_size)
            # Dropout masks too are a function of (seed, rank, step), so resumption is exact.
            torch.manual_seed(step_seed(config.seed, world.rank, step))
            step_loss = 0.0
            for micro in range(config.grad_accum):
                part = (micro * world.world_size + world.rank) * micro_batch
                rows = torch.from_numpy(sampler.windows(starts[part : part + micro_batch])).to(device, non_blocking=True)
                with gradient_sync(wrapped, micro == config.grad_accum - 1):
                    with autocast(device):
                        loss = step_model(rows[:, :-1], targets=rows[:, 1:]) / config.grad_accum
                    loss.backward()
                step_loss += float(loss.detach())
            step_loss = all_reduce_mean(step_loss, world, device)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            done = step + 1
            finite = math.isfinite(step_loss) and math.isfinite(float(grad_norm))
            if finite:
                bad_steps = 0
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                loss_value, last_good = step_loss, done
                window_tokens += tokens_per_step
                if done % config.log_every == 0 or done == config.steps:
                    elapsed = time.perf_counter() - window_start
                    tok_s = window_tokens / elapsed if elapsed > 0 else float("nan")
                    log.write("train", step=done, loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=tok_s)
                    bar.update(status=f"loss {loss_value:.3f}  {tok_s:,.0f} tok/s")
                    summary["tokens_per_s"] = tok_s
                    window_tokens, window_start = 0, time.perf_counter()
                if done % config.eval_every == 0 or done == config.steps:
                    last_val = evaluate_lm(eval_model, data.val, device=device, max_tokens=config.eval_tokens)
                    log.write("eval", step=done, **{f"val_{k}": v for k, v in last_val.items()})
                    bar.log(f"step {done}: val loss {last_val['loss']:.4f}  ppl {last_val['ppl']:.2f}  bpb {last_val['bpb']:.4f}")
                    window_start = time.perf_counter()
            else:
                bad_steps += 1
                optimizer.zero_grad(set_to_none=True)
                log.write("skip", step=done, loss=step_loss, grad_norm=float(grad_norm))
                bar.log(f"[yellow]step {done}: non-finite loss or gradient, step skipped ({bad_steps} in a row)")
            stop = any_rank(stop_request.requested, world, device)
            if done % config.ckpt_every == 0 or done == end_step or stop:
                if finite:
                    checkpoint(done, last_val)
                else:
                    save_last_good()
                window_start = time.perf_counter()
            if not finite and bad_steps >= config.max_bad_steps:
                save_last_good()
                raise Gpt1Error(f"{bad_steps} non-finite steps in a row at step {done}: lower --lr; {where_to_continue()}")
            bar.advance(1)
            if stop:
                if not last_saved:
                    raise Gpt1Error(f"stopped on request at step {done} before any step could be applied: "
                                    "no checkpoint written")
                log.write("stop", step=last_saved, signal=stop_request.signal)
                raise TrainingStopped(last_saved, str(out / CHECKPOINTS / f"step_{last_saved:08d}"))
    if last_good < end_step:
        raise Gpt1Error(f"step {end_step}, the last of this run, had a non-finite loss or gradient and was skipped "
                        f"({bad_steps} in a row): {where_to_continue()}; lower --lr or check the data")
    summary.update(steps=config.steps, stopped_at=end_step, loss=loss_value, val=last_val, parameters=parameters,
                   kernels=kernels, out=str(out), world_size=world.world_size)
    return summary
