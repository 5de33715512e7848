"""Fine-tuning with the auxiliary LM objective: L3 = L2 + lambda * L1."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checks import check_number
from ..data.tokenizer import load_tokenizer
from ..errors import Gpt1Error
from ..model import ops
from ..model.gpt import GPT
from ..runtime import autocast, seed_everything
from ..train.distributed import World, all_reduce_mean, distributed_session, wrap_model
from ..train.metrics import MetricsLog
from ..train.optim import make_optimizer
from .data import TASKS, label_set, load_examples
from .metrics import classification_report, regression_report
from .model import TaskModel
from .outputs import locked_directory
from .runner import batches, encode_examples, infer, label_indices, module_state, predictions, task_state
from .training import FinetuneLoop, begin_run, check_settings, finished_summary, settings_of

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
    max_bad_steps: int = 10  # non-finite steps in a row before the run stops
    resume: bool = False  # continue the run in ``out`` from its training state
    overwrite: bool = False  # replace a run already in ``out``

    def check(self) -> "FinetuneConfig":
        if self.task not in TASKS:
            raise Gpt1Error(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.regression and self.task != "similar":
            raise Gpt1Error("--regression applies to the similar task only")
        check_settings(self)
        check_number(self.lm_coef, "--lm-coef", minimum=0)
        check_number(self.head_dropout, "--head-dropout", minimum=0, below=1)
        metric = self.metric or ("pearson" if self.regression else "accuracy")
        if metric not in METRICS:
            raise Gpt1Error(f"--metric must be one of {', '.join(METRICS)}")
        if self.regression != (metric in ("pearson", "spearman")):
            raise Gpt1Error(f"--metric {metric} does not fit a {'regression' if self.regression else 'classification'} task")
        return dataclasses.replace(self, metric=metric)


def finetune(config: FinetuneConfig, *, show_progress: bool = True, say=None) -> dict:
    """Fine-tune ``config.from_run`` on a labelled task; the best checkpoint by validation metric is kept.

    SIGINT or SIGTERM stops at the next step boundary with a training state
    (:class:`~gpt1cli.errors.TrainingStopped`); ``config.resume`` continues from it exactly.
    Under torchrun each step's batch is split across the ranks; rank 0 alone logs and saves.
    ``say`` receives notes for the user (such as a resume that found nothing to resume).
    """
    config = config.check()
    with distributed_session(config.device, config.dist_timeout) as (world, device):
        with locked_directory(config.out, "run directory", enabled=world.is_main):
            return _finetune(config, world, device, show_progress, say or (lambda message: None))


def _finetune(config: FinetuneConfig, world: World, device: torch.device, show_progress: bool, say) -> dict:
    out = Path(config.out)
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
    if world.distributed and config.batch_size < world.world_size:
        raise Gpt1Error(f"--batch-size {config.batch_size} is smaller than the {world.world_size} processes")

    start = begin_run(config, driver="classifier", task=config.task, world=world, say=say)
    if start.progress.finished:
        return finished_summary(start, config, config.task)
    tokenizer = load_tokenizer(start.tokenizer_path)
    seed_everything(config.seed)
    gpt = GPT(start.config)
    model = TaskModel(gpt, config.task, n_outputs, dropout=config.head_dropout)
    if start.resumed:
        model.load_state_dict(module_state(start.weights))
    elif start.weights is not None:
        gpt.load_state_dict(start.weights)
    model.to(device)
    sharded = world.distributed and config.parallel == "fsdp"
    wrapped = wrap_model(model, config.parallel, world, device)
    eval_model = wrapped if sharded else model
    n_ctx = start.config.n_ctx
    encoded = encode_examples(train_examples, config.task, tokenizer, n_ctx)
    val_encoded = encode_examples(val_examples, config.task, tokenizer, n_ctx)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)

    log = MetricsLog(out / "metrics.jsonl" if world.is_main else None)
    kernels = ops.describe_path(device)
    if start.resumed:
        log.write("resume", step=start.progress.step, kernels=kernels, device=str(device), world_size=world.world_size)
    else:
        log.write("config", config=settings_of(config), model=start.config.to_dict(), labels=labels,
                  train_examples=len(encoded), val_examples=len(val_encoded), kernels=kernels)
    task_info = {"name": config.task, "labels": labels, "regression": config.regression, "n_outputs": n_outputs,
                 "n_choices": n_choices, "metric": config.metric, "lm_coef": config.lm_coef, "init": config.init}
    loop = FinetuneLoop(config, start, "classifier", config.task, task_info, world, device, model, wrapped, optimizer,
                        len(encoded), log, rename=task_state, show_progress=show_progress and world.is_main)
    loop.restore()

    def evaluate() -> dict:
        logits = infer(eval_model, val_encoded, tokenizer.pad_id, device, regression=config.regression)
        preds, _ = predictions(logits, config.regression)
        if config.regression:
            return regression_report(val_targets, preds)
        return classification_report(val_targets, preds, logits.shape[-1])

    def forward_backward(ids: list[int]) -> dict | None:
        """The loss of the global batch ``ids``, back-propagated; None when it is too small to split."""
        # Each rank takes a strided share of the global batch (the last batch may be uneven).
        share = [ids[i :: world.world_size] for i in range(world.world_size)]
        if any(not part for part in share):
            return None
        mine = share[world.rank]
        _, batch = next(batches([encoded[i] for i in mine], [targets[i] for i in mine], tokenizer.pad_id,
                                len(mine), config.regression))
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
        return {"loss": all_reduce_mean(float(loss.detach()), world, device), "task_loss": float(task_loss.detach()),
                "lm_loss": None if lm_loss is None else float(lm_loss.detach())}

    def better(report: dict, best: dict) -> bool:
        score = report[config.metric]
        return not math.isnan(score) and (math.isnan(best[config.metric]) or score > best[config.metric])

    def describe(step: int, report: dict) -> str:
        return f"step {step}: val {config.metric} {report[config.metric]:.4f}"

    loop.run(forward_backward, evaluate, better, describe)
    return loop.summary(kernels)
