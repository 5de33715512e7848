"""Fine-tuning with the auxiliary LM objective: L3 = L2 + lambda * L1."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import number
from ..data.tables import TRAIN_SPLITS, VALIDATION_SPLITS
from ..errors import Gpt1Error
from ..model import ops
from ..model.gpt import GPT
from ..runtime import autocast, seed_everything
from ..settings import one_of, setting
from ..tokenizer import load_tokenizer
from ..train.distributed import World, all_reduce_mean
from .data import ALL_TASKS, GENERATE, TASKS, fields_setting, label_set, load_examples, parse_fields
from .label_metrics import classification_report, positive_class, regression_report
from .heads import TaskModel
from .inference import batches, encode_examples, infer, label_indices, module_state, predictions, task_state
from .training import FinetuneLoop, FinetuneSettings, Objective, begin_run, check_settings, finished_summary, run_session

METRICS = ("accuracy", "macro_f1", "mcc", "f1", "pearson", "spearman")


@dataclass(kw_only=True)
class FinetuneConfig(FinetuneSettings):
    """A fine-tuning run of a task with a head (``metric`` defaults to accuracy, or pearson with
    ``regression``)."""

    # The command line also takes generate here (it runs the generate task's config), so the rule
    # lists every task and check() refuses generate.
    task: str = setting(help="classify, entail, similar, mcq, or generate (prompt/completion pairs, no head). Required, "
                        "except with --resume.", rule=one_of(ALL_TASKS, "task"), show_default="none", resume_fills=True)
    regression: bool = setting(False, "similar only: a numeric target with MSE loss (as STS-B).", flags=("--regression",))
    lm_coef: float = setting(0.5, "lambda of the auxiliary LM loss L1 (0 turns it off).", rule=number(minimum=0))
    head_dropout: float = setting(0.1, "Dropout before the linear head (0 to below 1).", rule=number(minimum=0, below=1))
    fields: list[str] | None = setting(
        None, "Read a task field from a column of another name, NAME=COLUMN, repeatable: --field premise=sentence1 "
        "--field label=gold_label. Names: classify text; entail premise, hypothesis; similar a, b; mcq context, "
        "choices (one list column, or several text columns: choices=end0,end1); every task label. Applies to "
        "--train and --val.", flags=("--field",), rule=fields_setting, show_default="each field from its own column")

    def check(self) -> "FinetuneConfig":
        if self.task == GENERATE:
            raise Gpt1Error("the generate task has no head: fine-tune it with GenerativeConfig and finetune_generate "
                            "(gpt1 finetune --task generate does)")
        check_settings(self)
        if self.task not in TASKS:  # a config built without the rule's check (check_settings passes None on)
            raise Gpt1Error(f"unknown task {self.task!r}; choose one of {', '.join(ALL_TASKS)}")
        if self.regression and self.task != "similar":
            raise Gpt1Error("--regression applies to the similar task only")
        parse_fields(self.fields, self.task)  # every NAME is one of the task's fields
        metric = self.metric or ("pearson" if self.regression else "accuracy")
        if metric not in METRICS:
            raise Gpt1Error(f"--metric must be one of {', '.join(METRICS)}, not {self.metric!r}")
        if metric == "f1" and self.task == "mcq":
            raise Gpt1Error("--metric f1 is the F1 of a two-label task's positive class; mcq scores choices: use accuracy")
        if self.regression != (metric in ("pearson", "spearman")):
            raise Gpt1Error(f"--metric {metric} does not fit a {'regression' if self.regression else 'classification'} task")
        return dataclasses.replace(self, metric=metric, fields=fields_setting(self.fields, "--field"))


def finetune(config: FinetuneConfig, *, show_progress: bool = True, say=None) -> dict:
    """Fine-tune ``config.from_run`` on a labelled task; the best checkpoint by validation metric is kept.

    SIGINT or SIGTERM stops at the next step boundary with a training state
    (:class:`~gpt1cli.errors.TrainingStopped`); ``config.resume`` continues from it exactly.
    Under torchrun each step's batch is split across the ranks; rank 0 alone logs and saves.
    ``say`` receives notes for the user (such as a resume that found nothing to resume).
    """
    return run_session(config, _finetune, show_progress=show_progress, say=say)


def _finetune(config: FinetuneConfig, world: World, device: torch.device, show_progress: bool, say) -> dict:
    # A DatasetDict folder gives its train split to --train and its validation split to --val.
    train_examples = load_examples(config.train, config.task, regression=config.regression, fields=config.fields,
                                   splits=TRAIN_SPLITS)
    val_examples = load_examples(config.val, config.task, regression=config.regression, fields=config.fields,
                                 splits=VALIDATION_SPLITS)
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
        if config.metric == "f1" and n_outputs != 2:
            raise Gpt1Error(f"--metric f1 is the F1 of a two-label task's positive class, but {config.train} has "
                            f"{n_outputs} labels: use macro_f1")
    targets = label_indices(train_examples, labels, config.regression) if config.task != "mcq" else [e.label for e in train_examples]
    val_targets = label_indices(val_examples, labels, config.regression) if config.task != "mcq" else [e.label for e in val_examples]

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
    n_ctx = start.config.n_ctx
    encoded = encode_examples(train_examples, config.task, tokenizer, n_ctx)
    val_encoded = encode_examples(val_examples, config.task, tokenizer, n_ctx)
    task_info = {"name": config.task, "labels": labels, "regression": config.regression, "n_outputs": n_outputs,
                 "n_choices": n_choices, "metric": config.metric, "lm_coef": config.lm_coef, "init": config.init}
    if config.fields:  # eval and predict read other files of the task through the same mapping by default
        task_info["fields"] = config.fields
    loop = FinetuneLoop(config, start, "classifier", task_info, world, device, model, len(encoded),
                        logged=dict(labels=labels, train_examples=len(encoded), val_examples=len(val_encoded)),
                        rename=task_state, show_progress=show_progress and world.is_main)
    trainer = loop.trainer

    def loss(mine: list[int], batch_ids: list[int]) -> tuple[torch.Tensor, dict]:
        _, batch = next(batches([encoded[i] for i in mine], [targets[i] for i in mine], tokenizer.pad_id,
                                len(mine), config.regression))
        batch = batch.to(device)
        with autocast(device):
            logits, lm_loss = trainer.wrapped(batch, with_lm_loss=config.lm_coef > 0)
            if config.regression:
                task_loss = F.mse_loss(logits.float().view(-1), batch.labels)
            else:
                task_loss = ops.cross_entropy(logits.float(), batch.labels)
            total = task_loss if lm_loss is None else task_loss + config.lm_coef * lm_loss
        figures = {"loss": all_reduce_mean(float(total.detach()), world, device), "task_loss": float(task_loss.detach()),
                   "lm_loss": None if lm_loss is None else float(lm_loss.detach())}
        # DDP averages gradients over ranks; weighting by this rank's share makes that the global mean.
        return total * (len(mine) * world.world_size / len(batch_ids)), figures

    def evaluate() -> dict:
        logits = infer(trainer.eval_model, val_encoded, tokenizer.pad_id, device, regression=config.regression)
        preds, _ = predictions(logits, config.regression)
        if config.regression:
            return regression_report(val_targets, preds)
        return classification_report(val_targets, preds, logits.shape[-1],
                                     positive=positive_class(config.task, logits.shape[-1]))

    def better(report: dict, best: dict) -> bool:
        score = report[config.metric]
        return not math.isnan(score) and (math.isnan(best[config.metric]) or score > best[config.metric])

    def describe(step: int, report: dict) -> str:
        return f"step {step}: val {config.metric} {report[config.metric]:.4f}"

    return loop.run(Objective(loss, evaluate, better, describe))
