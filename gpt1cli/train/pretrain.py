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
from pathlib import Path

import torch
from rich.markup import escape

from ..checkpoint import CHECKPOINTS, LATEST, META, Checkpoint, load_checkpoint, read_pointer, save_checkpoint
from ..config import ModelConfig, count_parameters, preset
from ..data.shards import MANIFEST, ShardDataset, WindowSampler
from ..errors import Gpt1Error, Interrupted
from ..fileio import plain_name
from ..locking import LOCK_NAME, exclusive_output
from ..model import ops
from ..model.gpt import GPT
from ..runtime import seed_everything
from ..settings import saved
from ..tokenizer import load_tokenizer
from .distributed import World, all_reduce_mean, any_rank, barrier, distributed_session, gradient_sync
from .lm_eval import evaluate_lm
from .loop import SkippedSteps, Trainer, due, run_precision
from .memory import available_memory, estimate_memory, flops_per_token, human_bytes, processes_per_machine
from .metrics_log import MetricsLog, read_records
from .optim import warmup_cosine
from .pretrain_config import RUN_DEFAULTS, PretrainConfig, continued, flag

METRICS = "metrics.jsonl"


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


def run_plan_line(plan: dict, model_config: ModelConfig, precision: str, device: torch.device, kernels: str) -> str:
    """The line a run starts with: what it is and costs (``--dry-run`` gives the details)."""
    estimate, available = plan["estimate"], plan["available"]
    free = f" of {human_bytes(available)} available" if available is not None else ""
    return (f"{estimate.parameters:,} parameters, {flops_per_token(model_config):.3g} FLOPs per token, about "
            f"{human_bytes(plan['needed'])} of memory{free} on {device}; {precision}; {kernels}")


def _initial_weights(config: PretrainConfig, data: ShardDataset, given: set[str]) -> tuple[Checkpoint, ModelConfig]:
    """``--init-from``: the checkpoint a new run starts from and its model (dropout as this run's)."""
    shaped = sorted(given & {"preset", "arch", "n_ctx", "attention", "window"})
    if shaped:
        raise Gpt1Error(f"{flag(shaped[0])} shapes the model, which --init-from {config.init_from} gives: leave it out")
    start = load_checkpoint(config.init_from)
    if start.task:
        raise Gpt1Error(f"--init-from {start.path} is fine-tuned for a task ({start.task.get('name')}): continue "
                        "pre-training from a language-model checkpoint")
    if start.meta.get("tokenizer_blake2b") != data.tokenizer_hash:
        raise Gpt1Error(f"{config.shards} was made with a different tokenizer than --init-from {start.path}: tokenize the "
                        f"corpus with --tokenizer {start.tokenizer_path}")
    model_config = dataclasses.replace(start.config, dropout=config.dropout, attn_dropout=config.dropout)
    return start, model_config


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
            config = continued(config, resume_from.trainer_meta["config"], resume_from.path / "trainer.json",
                               resume_from.config.to_dict(), given)
        elif (out / METRICS).is_file():
            # Killed before its first checkpoint (a requeued job runs the same command with --resume):
            # start again, with the settings that start recorded.
            recorded = _recorded_start(out)
            if recorded is not None:
                config = dataclasses.replace(
                    continued(config, recorded[0], out / METRICS, recorded[1], given), resume=False)
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
    start_from = None  # --init-from: the weights a new run starts with
    if resume_from is not None:
        model_config = resume_from.config
        if resume_from.meta.get("tokenizer_blake2b") != data.tokenizer_hash:
            raise Gpt1Error(f"{config.shards} was made with a different tokenizer than the run in {out}")
    elif config.init_from is not None:
        start_from, model_config = _initial_weights(config, data, given)
        # the run records the model it really trains, not the preset's shape
        config = dataclasses.replace(config, **{name: getattr(model_config, name)
                                                for name in ("arch", "n_ctx", "attention", "window")})
    else:
        model_config = preset(config.preset, data.vocab_size, arch=config.arch, n_ctx=config.n_ctx,
                              dropout=config.dropout, attn_dropout=config.dropout, attention=config.attention,
                              window=config.window)
    sampler = WindowSampler(data.train, model_config.n_ctx, config.seed)
    micro_batch = config.batch_size // (config.grad_accum * world.world_size)
    plan = _memory_plan(model_config, config, world, device, micro_batch)
    precision = run_precision(config.precision, device, sharded=world.distributed and config.parallel == "fsdp")
    if dry_run:
        return {"dry_run": True, "config": saved(config), "model": model_config.to_dict(),
                "parameters": plan["estimate"].parameters, "flops_per_token": flops_per_token(model_config),
                "tokens_per_step": config.batch_size * model_config.n_ctx, "micro_batch": micro_batch,
                "memory": plan, "start_step": start_step, "end_step": end_step, "world_size": world.world_size,
                "device": str(device), "precision": precision, "kernels": ops.describe_path(device), "out": str(out)}
    _on_every_rank(world, device, lambda: _check_memory(plan, model_config, config, micro_batch, device))

    seed_everything(config.seed)
    model = GPT(model_config)
    if resume_from is not None or start_from is not None:
        # before sharding: every rank holds the full weights
        model.load_state_dict((resume_from or start_from).state_dict)
    log = MetricsLog(out / METRICS if world.is_main else None, trackers=config.log, run_config=saved(config))
    with log:  # the trackers are finished however the run ends
        trainer = Trainer(model, world=world, device=device, parallel=config.parallel, lr=config.lr,
                          weight_decay=config.weight_decay, grad_clip=config.grad_clip, seed=config.seed, log=log,
                          schedule=lambda step: warmup_cosine(step, max_lr=config.lr, warmup=config.warmup, total=config.steps),
                          precision=config.precision)
        best_val = math.inf
        if resume_from is not None:
            trainer.restore(resume_from.trainer_meta["optimizer_groups"], resume_from.trainer_tensors,
                            resume_from.trainer_meta.get("grad_scaler"), source=resume_from.path / "trainer.json")
            best_val = float(resume_from.trainer_meta.get("best_val", math.inf))
            resume_from.state_dict, resume_from.trainer_tensors = {}, {}  # copied into the model and optimiser
        step_model = torch.compile(trainer.wrapped) if config.compile else trainer.wrapped

        show_progress = show_progress and world.is_main
        tokens_per_step = config.batch_size * model_config.n_ctx
        kernels = ops.describe_path(device)
        parameters = count_parameters(model_config) if trainer.sharded else model.num_parameters()
        if resume_from is None:
            log.write("config", config=saved(config), model=model_config.to_dict(), parameters=parameters,
                      kernels=kernels, device=str(device), precision=trainer.precision, world_size=world.world_size)
        else:
            log.write("resume", step=start_step, kernels=kernels, device=str(device), precision=trainer.precision,
                      world_size=world.world_size)

        # Step of the newest checkpoint (0: none yet) and of the last step whose update was applied.
        last_saved = start_step
        last_good = start_step
        last_val = None

        def forward_backward(step: int) -> dict:
            """The mean loss of step ``step``'s global batch, back-propagated in ``grad_accum`` micro-steps."""
            # One global batch per step from (seed, step); micro-step m of rank r takes slice m * world + r.
            starts = sampler.starts(step, config.batch_size)
            step_loss = 0.0
            for micro in range(config.grad_accum):
                part = (micro * world.world_size + world.rank) * micro_batch
                rows = torch.from_numpy(sampler.windows(starts[part : part + micro_batch])).to(device, non_blocking=True)
                with gradient_sync(trainer.wrapped, micro == config.grad_accum - 1):
                    with trainer.autocast():
                        loss = step_model(rows[:, :-1], targets=rows[:, 1:]) / config.grad_accum
                    trainer.backward(loss)
                step_loss += float(loss.detach())
            return {"loss": all_reduce_mean(step_loss, world, device)}

        def checkpoint(step: int, val: dict | None) -> None:
            nonlocal best_val, last_saved
            state = trainer.train_state()  # every rank takes part in gathering a sharded state; rank 0 alone writes
            # `latest` must never name weights that are not finite: checked before anything is written.
            if not state.finite:
                where = (f"the last finite checkpoint is step {last_saved} in {out / CHECKPOINTS}" if last_saved
                         else "no checkpoint was written")
                raise Gpt1Error(f"the weights are not finite after step {step} ({state.not_finite or 'on rank 0'}): "
                                f"not saved; {where}; lower --lr")
            # The best checkpoint (by the validation loss it was written with) survives pruning.
            is_best = val is not None and val["loss"] < best_val
            if is_best:
                best_val = val["loss"]
            if world.is_main:
                save_checkpoint(
                    out, step, model_state=state.model, config=model_config, tokenizer_path=tokenizer_path,
                    tokenizer_bytes=tokenizer_bytes,
                    meta={"kind": "pretrain", "task": None, "metrics": {"val": val} if val else {}},
                    trainer_tensors=state.optimizer_tensors,
                    trainer_meta={"step": step, "config": saved(config),
                                  "optimizer_groups": state.optimizer_groups, "best_val": best_val,
                                  "world_size": world.world_size, "precision": trainer.precision,
                                  "grad_scaler": state.scaler},
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

        trainer.train_mode()
        skipped, loss_value = SkippedSteps(), float("nan")
        window_tokens, window_start = 0, time.perf_counter()
        summary = {"start_step": start_step}
        with trainer.running("pretraining", config.steps, start_step, show_progress=show_progress) as bar:
            bar.log(escape(run_plan_line(plan, model_config, trainer.precision, device, kernels)))
            for step in range(start_step, end_step):
                result = trainer.step(step, lambda: forward_backward(step), skipped, bar)
                done = result.done
                bar.advance(1)
                if result.good:  # applied, or skipped by the fp16 loss scaler (the weights are sound)
                    loss_value, last_good = result.figures["loss"], done
                    window_tokens += tokens_per_step
                    if due(done, config.log_every, config.steps):
                        elapsed = time.perf_counter() - window_start
                        tok_s = window_tokens / elapsed if elapsed > 0 else float("nan")
                        log.write("train", step=done, loss=loss_value, lr=result.lr, grad_norm=result.grad_norm,
                                  tokens_per_s=tok_s)
                        bar.update(status=f"loss {loss_value:.4f}  lr {result.lr:.3e}  {tok_s:,.0f} tokens/s")
                        summary["tokens_per_s"] = tok_s
                        window_tokens, window_start = 0, time.perf_counter()
                    if due(done, config.eval_every, config.steps):
                        last_val = evaluate_lm(trainer.eval_model, data.val, device=device, max_tokens=config.eval_tokens)
                        log.write("eval", step=done, **{f"val_{k}": v for k, v in last_val.items()})
                        bar.log(f"step {done}: val loss {last_val['loss']:.4f}  ppl {last_val['ppl']:.2f}  bpb {last_val['bpb']:.4f}")
                        window_start = time.perf_counter()
                stop = trainer.stop_requested()
                if due(done, config.ckpt_every, end_step) or stop:
                    if result.good:
                        checkpoint(done, last_val)
                    else:
                        save_last_good()
                    window_start = time.perf_counter()
                if skipped.bad_steps >= config.max_bad_steps:
                    save_last_good()
                    raise Gpt1Error(f"{skipped.bad_steps} non-finite steps in a row at step {done}: lower --lr; "
                                    f"{where_to_continue()}")
                if stop:
                    if not last_saved:
                        raise Gpt1Error(f"stopped on request at step {done} before any step could be applied: "
                                        "no checkpoint written")
                    trainer.stopped(last_saved, str(out / CHECKPOINTS / f"step_{last_saved:08d}"))
        if last_good < end_step:
            raise Gpt1Error(f"step {end_step}, the last of this run, had a non-finite loss or gradient and was skipped "
                            f"({skipped.bad_steps} in a row): {where_to_continue()}; lower --lr or check the data")
        summary.update(steps=config.steps, stopped_at=end_step, loss=loss_value, val=last_val, parameters=parameters,
                       kernels=kernels, out=str(out), world_size=world.world_size, precision=trainer.precision,
                       overflow_steps=skipped.overflow_steps)
        return summary
