"""Pre-training on the language-modelling objective L1 over memory-mapped token shards."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import TRAIN_DEFAULTS, preset
from ..data.shards import ShardDataset, WindowSampler
from ..errors import Gpt1Error, TrainingStopped
from ..model import ops
from ..model.gpt import GPT
from ..progress import progress_bar
from ..runtime import autocast, seed_everything, step_seed
from .checkpoint import (
    CHECKPOINTS,
    LATEST,
    load_checkpoint,
    optimizer_from_full_state,
    optimizer_tensors,
    optimizer_to_full_state,
    restore_optimizer,
    save_checkpoint,
)
from .distributed import (
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
from .metrics import MetricsLog
from .optim import make_optimizer, warmup_cosine
from .signals import graceful_stop

# Settings a resumed run may change; everything else must stay as saved for an exact resume.
RESUMABLE_CHANGES = ("steps", "stop_after", "parallel", "dist_timeout", "eval_every", "ckpt_every", "keep", "log_every",
                     "eval_tokens", "max_bad_steps")
# Defaults of the run-management settings; None in a config means "the default" (or, on resume, "as saved").
RUN_DEFAULTS = dict(eval_every=100, eval_tokens=65_536, ckpt_every=500, keep=3, log_every=10, max_bad_steps=10,
                    parallel="ddp", dist_timeout=600.0)


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

    def resolved(self) -> "PretrainConfig":
        """Fill preset defaults and check ranges."""
        defaults = TRAIN_DEFAULTS.get(self.preset)
        if defaults is None:
            raise Gpt1Error(f"unknown preset {self.preset!r}; choose one of {', '.join(TRAIN_DEFAULTS)}")
        cfg = dataclasses.replace(
            self,
            **{k: v for k, v in RUN_DEFAULTS.items() if getattr(self, k) is None},
            steps=self.steps if self.steps is not None else defaults["steps"],
            batch_size=self.batch_size if self.batch_size is not None else defaults["batch_size"],
            lr=self.lr if self.lr is not None else defaults["lr"],
        )
        if cfg.warmup is None:
            cfg.warmup = min(2000, max(1, cfg.steps // 10))
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "ckpt_every", "log_every", "eval_tokens", "max_bad_steps"):
            if getattr(cfg, name) <= 0:
                raise Gpt1Error(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
        if cfg.stop_after is not None and cfg.stop_after <= 0:
            raise Gpt1Error(f"--stop-after must be positive, got {cfg.stop_after}")
        if cfg.keep < 1:
            raise Gpt1Error(f"--keep must be at least 1, got {cfg.keep}")
        if cfg.batch_size % cfg.grad_accum:
            raise Gpt1Error(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum {cfg.grad_accum}")
        if not cfg.lr > 0:
            raise Gpt1Error(f"--lr must be positive, got {cfg.lr}")
        if cfg.warmup < 0:
            raise Gpt1Error(f"--warmup must be >= 0, got {cfg.warmup}")
        return cfg


def _named(model: torch.nn.Module) -> tuple[dict, dict]:
    params = dict(model.named_parameters())
    return params, {p: n for n, p in params.items()}


def pretrain(config: PretrainConfig, *, show_progress: bool = True) -> dict:
    """Train a model on ``config.shards``; checkpoints and metrics go to ``config.out``. Returns a summary.

    Under torchrun every rank runs this; rank 0 alone logs and writes checkpoints.
    """
    timeout = config.dist_timeout if config.dist_timeout is not None else RUN_DEFAULTS["dist_timeout"]
    with distributed_session(config.device, timeout) as (world, device):
        return _pretrain(config, world, device, show_progress)


def _pretrain(config: PretrainConfig, world: World, device: torch.device, show_progress: bool) -> dict:
    out = Path(config.out)
    has_checkpoints = (out / CHECKPOINTS / LATEST).is_file()
    resume_from = None
    if config.resume:
        if not has_checkpoints:
            raise Gpt1Error(f"--resume: {out} has no checkpoint to resume from")
        resume_from = load_checkpoint(out, with_trainer=True)
        saved = resume_from.trainer_meta.get("config", {})
        changes = {k: getattr(config, k) for k in RESUMABLE_CHANGES if getattr(config, k) is not None}
        config = dataclasses.replace(PretrainConfig(**{**saved, "stop_after": None}), **changes,
                                     shards=config.shards, resume=True, device=config.device)
    elif has_checkpoints:
        raise Gpt1Error(f"{out} already holds a run: pass --resume to continue it or choose another --out")
    config = config.resolved()
    if config.batch_size % (config.grad_accum * world.world_size):
        raise Gpt1Error(f"--batch-size {config.batch_size} must be divisible by --grad-accum x processes "
                        f"({config.grad_accum} x {world.world_size})")

    data = ShardDataset(config.shards)
    seed_everything(config.seed)
    if resume_from is not None:
        model_config = resume_from.config
        if resume_from.meta.get("tokenizer_blake2b") != data.tokenizer_hash:
            raise Gpt1Error(f"{config.shards} was made with a different tokenizer than the run in {out}")
    else:
        model_config = preset(config.preset, data.vocab_size, arch=config.arch, n_ctx=config.n_ctx,
                              dropout=config.dropout, attn_dropout=config.dropout, attention=config.attention,
                              window=config.window)
    sampler = WindowSampler(data.train, model_config.n_ctx, config.seed)

    model = GPT(model_config)
    if resume_from is not None:
        model.load_state_dict(resume_from.state_dict)  # before sharding: every rank holds the full weights
    model = model.to(device)
    sharded = world.distributed and config.parallel == "fsdp"
    wrapped = wrap_model(model, config.parallel, world, device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    params, names = _named(model)
    start_step, best_val = 0, math.inf
    if resume_from is not None:
        trainer = resume_from.trainer_meta
        if sharded:
            optimizer_from_full_state(wrapped, optimizer, trainer["optimizer_groups"], resume_from.trainer_tensors)
        else:
            restore_optimizer(optimizer, params, trainer["optimizer_groups"], resume_from.trainer_tensors)
        start_step = int(trainer["step"])
        best_val = float(trainer.get("best_val", math.inf))
    step_model = torch.compile(wrapped) if config.compile else wrapped
    eval_model = wrapped if sharded else model

    log = MetricsLog(out / "metrics.jsonl" if world.is_main else None)
    show_progress = show_progress and world.is_main
    micro_batch = config.batch_size // (config.grad_accum * world.world_size)
    tokens_per_step = config.batch_size * model_config.n_ctx
    kernels = ops.describe_path(device)
    parameters = sum(p.numel() for p in GPT(model_config).parameters()) if sharded else model.num_parameters()
    if resume_from is None:
        log.write("config", config=dataclasses.asdict(config), model=model_config.to_dict(), parameters=parameters,
                  kernels=kernels, device=str(device), world_size=world.world_size)
    else:
        log.write("resume", step=start_step, kernels=kernels, device=str(device), world_size=world.world_size)

    def checkpoint(step: int, val: dict | None) -> None:
        nonlocal best_val
        # The best checkpoint (by the validation loss it was written with) survives pruning.
        is_best = val is not None and val["loss"] < best_val
        if is_best:
            best_val = val["loss"]
        # Every rank takes part in gathering a sharded state; rank 0 alone writes.
        if sharded:
            model_state, full_optim = full_state(wrapped, optimizer, config.parallel, world)
            tensors, groups = optimizer_to_full_state(full_optim) if world.is_main else ({}, [])
        else:
            model_state = model.state_dict()
            tensors, groups = optimizer_tensors(optimizer, names)
        if world.is_main:
            save_checkpoint(
                out, step, model_state=model_state, config=model_config, tokenizer_path=data.tokenizer_path,
                meta={"kind": "pretrain", "task": None, "metrics": {"val": val} if val else {}},
                trainer_tensors=tensors,
                trainer_meta={"step": step, "config": dataclasses.asdict(config), "optimizer_groups": groups,
                              "best_val": best_val, "world_size": world.world_size},
                keep=config.keep, best=is_best,
            )
        barrier(world)

    model.train()
    last_val, bad_steps, loss_value = None, 0, float("nan")
    window_tokens, window_start = 0, time.perf_counter()
    summary = {"start_step": start_step}
    end_step = min(config.steps, config.stop_after or config.steps)
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
            if not (math.isfinite(step_loss) and math.isfinite(float(grad_norm))):
                bad_steps += 1
                optimizer.zero_grad(set_to_none=True)
                log.write("skip", step=step + 1, loss=step_loss, grad_norm=float(grad_norm))
                bar.log(f"[yellow]step {step + 1}: non-finite loss or gradient, step skipped ({bad_steps} in a row)")
                if bad_steps >= config.max_bad_steps:
                    raise Gpt1Error(f"{bad_steps} non-finite steps in a row at step {step + 1}: lower --lr; "
                                    f"the last good checkpoint is in {out / CHECKPOINTS}")
                continue
            bad_steps = 0
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = step_loss
            window_tokens += tokens_per_step
            done = step + 1
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
            stop = any_rank(stop_request.requested, world, device)
            if done % config.ckpt_every == 0 or done == end_step or stop:
                checkpoint(done, last_val)
                window_start = time.perf_counter()
            bar.advance(1)
            if stop:
                log.write("stop", step=done, signal=stop_request.signal)
                raise TrainingStopped(done, str(out / CHECKPOINTS / f"step_{done:08d}"))
    summary.update(steps=config.steps, stopped_at=end_step, loss=loss_value, val=last_val, parameters=parameters,
                   kernels=kernels, out=str(out), world_size=world.world_size)
    return summary
