"""Fine-tuning with the auxiliary LM objective: L3 = L2 + lambda * L1."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import Gpt1Error
from ..model import ops
from ..model.gpt import GPT
from ..progress import progress_bar
from ..runtime import autocast, seed_everything, step_seed
from ..train.checkpoint import save_checkpoint
from ..train.distributed import World, all_reduce_mean, barrier, distributed_session, full_state, wrap_model
from ..train.metrics import MetricsLog
from ..train.optim import make_optimizer, warmup_linear
from .data import TASKS, label_set, load_examples
from .metrics import classification_report, regression_report
from .model import TaskModel
from .runner import batches, encode_examples, infer, label_indices, predictions, start_finetune_run, task_state

METRICS = ("accuracy", "macro_f1", "mcc", "pearson", "spearman")


@dataclass
class FinetuneConfig:
    """A fine-tuning run; defaults are the paper's."""

    task: str
    train: str
    val: str
    from_run: str
    out: str
    init: str = "pretrained"  # "random": same model and tokenizer, fresh weights (the no-pre-training ablation)
    regression: bool = False
    lm_coef: float = 0.5
    lr: float = 6.25e-5
    batch_size: int = 32
    epochs: int = 3
    warmup_fraction: float = 0.002
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    head_dropout: float = 0.1
    metric: str | None = None  # default: accuracy, or pearson with --regression
    eval_every: int | None = None  # steps; default once per epoch
    seed: int = 0
    device: str = "auto"
    parallel: str = "ddp"
    dist_timeout: float = 600.0

    def check(self) -> "FinetuneConfig":
        if self.task not in TASKS:
            raise Gpt1Error(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.regression and self.task != "similar":
            raise Gpt1Error("--regression applies to the similar task only")
        if self.init not in ("pretrained", "random"):
            raise Gpt1Error(f"--init must be pretrained or random, not {self.init!r}")
        metric = self.metric or ("pearson" if self.regression else "accuracy")
        if metric not in METRICS:
            raise Gpt1Error(f"--metric must be one of {', '.join(METRICS)}")
        if self.regression != (metric in ("pearson", "spearman")):
            raise Gpt1Error(f"--metric {metric} does not fit a {'regression' if self.regression else 'classification'} task")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise Gpt1Error(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.lm_coef < 0 or not self.lr > 0 or not 0 <= self.warmup_fraction < 1:
            raise Gpt1Error("--lm-coef must be >= 0, --lr > 0 and --warmup-fraction in [0, 1)")
        if self.eval_every is not None and self.eval_every <= 0:
            raise Gpt1Error(f"--eval-every must be positive, got {self.eval_every}")
        return dataclasses.replace(self, metric=metric)


def finetune(config: FinetuneConfig, *, show_progress: bool = True) -> dict:
    """Fine-tune ``config.from_run`` on a labelled task; the best checkpoint by validation metric is kept.

    Under torchrun each step's batch is split across the ranks; rank 0 alone logs and saves.
    """
    config = config.check()
    with distributed_session(config.device, config.dist_timeout) as (world, device):
        return _finetune(config, world, device, show_progress)


def _finetune(config: FinetuneConfig, world: World, device: torch.device, show_progress: bool) -> dict:
    out = Path(config.out)
    source, tokenizer = start_finetune_run(config.from_run, out)
    train_examples = load_examples(config.train, config.task, regression=config.regression)
    val_examples = load_examples(config.val, config.task, regression=config.regression)
    labels = [] if config.task == "mcq" or config.regression else label_set(train_examples)
    if config.task == "mcq":
        n_choices = len(train_examples[0].fields["choices"])
        n_outputs = 1
        if len(val_examples[0].fields["choices"]) != n_choices:
            raise Gpt1Error(f"{config.val}: examples have {len(val_examples[0].fields['choices'])} choices, "
                            f"the training examples {n_choices}")
    else:
        n_choices = None
        n_outputs = 1 if config.regression else len(labels)
        if n_outputs < 2 and not config.regression:
            raise Gpt1Error(f"{config.train}: only one label ({labels[0]!r}) in the training data; a classifier needs two or more")
    targets = label_indices(train_examples, labels, config.regression) if config.task != "mcq" else [e.label for e in train_examples]
    val_targets = label_indices(val_examples, labels, config.regression) if config.task != "mcq" else [e.label for e in val_examples]

    seed_everything(config.seed)
    gpt = GPT(source.config)
    if config.init == "pretrained":
        gpt.load_state_dict(source.state_dict)
    model = TaskModel(gpt, config.task, n_outputs, dropout=config.head_dropout).to(device)
    sharded = world.distributed and config.parallel == "fsdp"
    wrapped = wrap_model(model, config.parallel, world, device)
    eval_model = wrapped if sharded else model
    n_ctx = source.config.n_ctx
    encoded = encode_examples(train_examples, config.task, tokenizer, n_ctx)
    val_encoded = encode_examples(val_examples, config.task, tokenizer, n_ctx)

    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    if world.distributed and config.batch_size < world.world_size:
        raise Gpt1Error(f"--batch-size {config.batch_size} is smaller than the {world.world_size} processes")
    total = steps_per_epoch * config.epochs
    warmup = int(total * config.warmup_fraction)
    eval_every = config.eval_every or steps_per_epoch
    log = MetricsLog(out / "metrics.jsonl" if world.is_main else None)
    show_progress = show_progress and world.is_main
    kernels = ops.describe_path(device)
    log.write("config", config=dataclasses.asdict(config), model=source.config.to_dict(), labels=labels,
              train_examples=len(encoded), val_examples=len(val_encoded), kernels=kernels)
    task_info = {"name": config.task, "labels": labels, "regression": config.regression, "n_outputs": n_outputs,
                 "n_choices": n_choices, "metric": config.metric, "lm_coef": config.lm_coef, "init": config.init}

    def evaluate() -> dict:
        logits = infer(eval_model, val_encoded, tokenizer.pad_id, device, regression=config.regression)
        preds, _ = predictions(logits, config.regression)
        if config.regression:
            return regression_report(val_targets, preds)
        return classification_report(val_targets, preds, logits.shape[-1])

    def train_step(ids: list[int], step: int) -> float | None:
        """One optimiser step on the global batch ``ids``; None when it is too small to split."""
        # Each rank takes a strided share of the global batch (the last batch may be uneven).
        share = [ids[i :: world.world_size] for i in range(world.world_size)]
        if any(not part for part in share):
            return None  # a tail too small to give every rank an example: skipped on all ranks alike
        mine = share[world.rank]
        _, batch = next(batches([encoded[i] for i in mine], [targets[i] for i in mine], tokenizer.pad_id,
                                len(mine), config.regression))
        lr = warmup_linear(step, max_lr=config.lr, warmup=warmup, total=total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(config.seed, world.rank, step))
        batch = batch.to(device)
        with autocast(device):
            logits, lm_loss = wrapped(batch, with_lm_loss=config.lm_coef > 0)
            if config.regression:
                task_loss = F.mse_loss(logits.float().view(-1), batch.labels)
            else:
                task_loss = ops.cross_entropy(logits.float(), batch.labels)
            loss = task_loss if lm_loss is None else task_loss + config.lm_coef * lm_loss
        # DDP averages gradients over ranks; weighting by this rank's share makes that the global mean.
        (loss * (len(mine) * world.world_size / len(ids))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = all_reduce_mean(float(loss.detach()), world, device)
        log.write("train", step=step + 1, loss=loss_value, task_loss=float(task_loss.detach()),
                  lm_loss=None if lm_loss is None else float(lm_loss.detach()), lr=lr)
        return loss_value

    def save(step: int, report: dict) -> None:
        # Gathering a sharded state takes every rank; rank 0 alone writes.
        state = full_state(wrapped, optimizer, config.parallel, world)[0] if sharded else model.state_dict()
        if world.is_main:
            save_checkpoint(out, step, model_state=task_state(state), config=source.config,
                            tokenizer_path=source.tokenizer_path,
                            meta={"kind": "finetune", "task": task_info, "metrics": {"val": report},
                                  "from": str(source.path)},
                            keep=1)
        barrier(world)

    generator = torch.Generator().manual_seed(config.seed)
    best, best_report, step, started = -math.inf, None, 0, time.perf_counter()
    model.train()
    with progress_bar(f"fine-tuning {config.task}", total, enabled=show_progress, count=True) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                loss_value = train_step(order[start : start + config.batch_size], step)
                step += 1
                bar.advance(1)
                if loss_value is not None:
                    bar.update(status=f"loss {loss_value:.3f}")
                if step % eval_every == 0 or step == total:
                    report = evaluate()
                    score = report[config.metric]
                    log.write("eval", step=step, epoch=epoch, **{k: v for k, v in report.items() if k != "confusion"})
                    bar.log(f"step {step}: val {config.metric} {score:.4f}")
                    if best_report is None or (not math.isnan(score) and score > best):
                        best, best_report = score, report
                        save(step, report)
    return {"task": config.task, "steps": step, "best": best, "metric": config.metric, "val": best_report,
            "seconds": round(time.perf_counter() - started, 2), "kernels": kernels, "out": str(out)}
