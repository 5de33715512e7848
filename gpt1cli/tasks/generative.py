"""The generate task: fine-tuning on prompt/completion pairs, its evaluation, and batch generation.

Each example is read as ``[start; prompt; delim; completion; eos]``. The loss is the LM loss on
the completion's tokens and the end token (``loss_on_prompt`` adds the prompt and the delimiter).
There is no head: the result is an ordinary decoder checkpoint whose ``task`` is
``{"name": "generate", ...}``, so ``gpt1 generate`` loads it and wraps prompts the same way.

Truncation: the completion is kept and the prompt loses tokens from its left; a completion that
alone exceeds the context is cut on its right (and then has no end token).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import number
from ..errors import Gpt1Error
from ..model.generation.completion import Completion, DecodeSettings, complete
from ..model.gpt import GPT
from ..model.loading import model_from_checkpoint
from ..progress import progress_bar
from ..runtime import autocast, seed_everything
from ..settings import setting
from ..tokenizer import load_tokenizer
from ..train.distributed import World, all_reduce_mean, full_model_state
from ..train.loop import Trainer
from .data import records
from .gen_metrics import HIGHER_IS_BETTER, generation_metrics
from .outputs import check_output, output_lines
from .training import FinetuneLoop, FinetuneSettings, Objective, begin_run, check_settings, finished_summary, run_session
from .transforms import task_prompt

TASK = "generate"
METRICS = ("loss", "bleu", "chrf", "rougeL", "exact")
FORMAT = "[start; prompt; delim; completion; eos]"
IGNORE = -100


# ---------------------------------------------------------------------------------------------
# Files


@dataclass
class GenExample:
    prompt: str
    completion: str | None
    where: str
    record: dict


def load_pairs(path: str | Path, *, require_completion: bool = True) -> list[GenExample]:
    """Prompt/completion pairs from JSONL, CSV or Parquet: ``prompt`` and ``completion`` fields,
    or ``input`` and ``output``. Without ``require_completion`` (batch generation) only the prompt
    is needed."""
    examples = []
    for where, record in records(Path(path)):
        names = ("prompt", "completion") if "prompt" in record or "input" not in record else ("input", "output")
        prompt = record.get(names[0])
        if prompt is None:
            raise Gpt1Error(f"{where}: missing the 'prompt' field (each line needs prompt and completion, "
                            f"or input and output)")
        if not isinstance(prompt, str):
            raise Gpt1Error(f"{where}: '{names[0]}' must be a string")
        completion = record.get(names[1])
        if completion is None and require_completion:
            raise Gpt1Error(f"{where}: missing the '{names[1]}' field (each line needs {names[0]} and {names[1]})")
        if completion is not None and not isinstance(completion, str):
            raise Gpt1Error(f"{where}: '{names[1]}' must be a string")
        examples.append(GenExample(prompt, completion, where, record))
    if not examples:
        raise Gpt1Error(f"{path} holds no examples")
    return examples


# ---------------------------------------------------------------------------------------------
# Sequences and losses


def encode_pair(tokenizer, prompt: str, completion: str, n_ctx: int) -> tuple[list[int], int]:
    """``[start; prompt; delim; completion; eos]`` within ``n_ctx`` tokens, and the index of the
    first completion token."""
    prompt_ids = tokenizer.encode(prompt)
    completion_ids = tokenizer.encode(completion) + [tokenizer.eos_id]
    budget = n_ctx - 2  # start and delim
    if len(completion_ids) > budget:
        completion_ids = completion_ids[:budget]
    room = budget - len(completion_ids)
    if len(prompt_ids) > room:
        prompt_ids = prompt_ids[len(prompt_ids) - room:]
    tokens = [tokenizer.start_id, *prompt_ids, tokenizer.delim_id, *completion_ids]
    return tokens, len(prompt_ids) + 2


def collate_pairs(pairs: list[tuple[list[int], int]], pad_id: int, loss_on_prompt: bool = False):
    """Inputs ``(B, T-1)`` and targets ``(B, T-1)``: the next token where it counts, else -100."""
    length = max(len(tokens) for tokens, _ in pairs)
    inputs = torch.full((len(pairs), length - 1), pad_id, dtype=torch.long)
    targets = torch.full((len(pairs), length - 1), IGNORE, dtype=torch.long)
    for row, (tokens, first) in enumerate(pairs):
        seq = torch.tensor(tokens, dtype=torch.long)
        inputs[row, : len(tokens) - 1] = seq[:-1]
        targets[row, : len(tokens) - 1] = seq[1:]
        if not loss_on_prompt:
            targets[row, : first - 1] = IGNORE  # positions that predict the prompt and the delimiter
    return inputs, targets


@torch.no_grad()
def reference_loss(model, pairs: list[tuple[list[int], int]], pad_id: int, device, batch_size: int = 16) -> dict:
    """Mean NLL per completion token (the end token included) of the references, and perplexity."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(pairs), batch_size):
            inputs, targets = collate_pairs(pairs[start : start + batch_size], pad_id)
            with autocast(device):
                loss = model(inputs.to(device), targets=targets.to(device), reduction="sum")
            total += float(loss)
            count += int((targets != IGNORE).sum())
    finally:
        model.train(was_training)
    mean = total / count if count else math.nan
    return {"loss": mean, "ppl": math.exp(min(mean, 50.0)) if count else math.nan, "tokens": count}


def default_max_new_tokens(tokenizer, references: list[str], n_ctx: int) -> int:
    """The decoding budget when none is given: the longest reference plus 8 tokens, within the context."""
    longest = max((len(tokenizer.encode(r)) for r in references), default=0)
    return max(1, min(longest + 8, n_ctx))


def decode_all(model, tokenizer, prompts: list[str], settings: DecodeSettings, *, show_progress: bool = False,
               seed: int = 0) -> list[list[Completion]]:
    """Completions of every prompt in the task format (one list per prompt, best first)."""
    n_ctx = model.config.n_ctx
    device = next(model.parameters()).device
    results = []
    was_training = model.training  # decoding switches the model to eval mode; training must get dropout back
    try:
        with progress_bar("generating", len(prompts), enabled=show_progress, count=True) as bar:
            for index, prompt in enumerate(prompts):
                ids = task_prompt(tokenizer, tokenizer.encode(prompt), n_ctx, settings.max_new_tokens)
                generator = torch.Generator(device=device).manual_seed(seed + index)
                results.append(complete(model, tokenizer, ids, settings, task_format=True, generator=generator))
                bar.advance(1)
    finally:
        model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass(kw_only=True)
class GenerativeConfig(FinetuneSettings):
    """A generate-task fine-tuning run (``metric`` defaults to loss)."""

    loss_on_prompt: bool = setting(False, "generate: also train on the prompt's tokens, not only the completion's.",
                                   flags=("--loss-on-prompt",))
    max_new_tokens: int | None = setting(None, "generate with a decoding --metric: most tokens per output.",
                                         rule=number(minimum=1), show_default="the longest val completion + 8")

    def check(self) -> "GenerativeConfig":
        metric = self.metric or "loss"
        if metric not in METRICS:
            raise Gpt1Error(f"--metric for the generate task must be one of {', '.join(METRICS)}, not {metric!r}")
        check_settings(self)
        return dataclasses.replace(self, metric=metric)


def finetune_generate(config: GenerativeConfig, *, show_progress: bool = True, say=None) -> dict:
    """Fine-tune ``config.from_run`` on prompt/completion pairs; keep the best checkpoint by
    validation loss (lowest) or by a decoding metric (highest, greedy decoding of the val prompts;
    a tie goes to the lower validation loss).

    Stops, resumes and run directories work as for :func:`~gpt1cli.tasks.finetune.finetune`.
    Under torchrun each step's batch is split across the ranks; rank 0 alone logs and saves.
    """
    return run_session(config, _finetune, show_progress=show_progress, say=say)


def _finetune(config: GenerativeConfig, world: World, device: torch.device, show_progress: bool, say) -> dict:
    train_examples = load_pairs(config.train)
    val_examples = load_pairs(config.val)
    start = begin_run(config, driver="generate", task=TASK, world=world, say=say)
    if start.progress.finished:
        return finished_summary(start, config, TASK)
    tokenizer = load_tokenizer(start.tokenizer_path)
    n_ctx = start.config.n_ctx
    if n_ctx < 4:
        raise Gpt1Error(f"the model's context ({n_ctx}) is too short for [start; prompt; delim; completion; eos]")
    encoded = [encode_pair(tokenizer, e.prompt, e.completion, n_ctx) for e in train_examples]
    val_encoded = [encode_pair(tokenizer, e.prompt, e.completion, n_ctx) for e in val_examples]
    references = [e.completion for e in val_examples]
    budget = config.max_new_tokens or default_max_new_tokens(tokenizer, references, n_ctx)
    decode_settings = DecodeSettings(max_new_tokens=budget, temperature=0.0)
    # How many completions lost their end (cut on the right) or prompts lost their start.
    cut_completions = sum(1 for (tokens, _) in encoded if tokens[-1] != tokenizer.eos_id)
    cut_prompts = sum(1 for e, (_, first) in zip(train_examples, encoded)
                      if first - 2 < len(tokenizer.encode(e.prompt)))

    seed_everything(config.seed)
    model = GPT(start.config)
    if start.weights is not None:
        model.load_state_dict(start.weights)
    task_info = {"name": TASK, "format": FORMAT, "loss_on_prompt": config.loss_on_prompt, "metric": config.metric,
                 "max_new_tokens": budget, "init": config.init}
    loop = FinetuneLoop(config, start, "generate", task_info, world, device, model, len(encoded),
                        logged=dict(task=TASK, train_examples=len(encoded), val_examples=len(val_encoded),
                                    truncated_prompts=cut_prompts, truncated_completions=cut_completions,
                                    max_new_tokens=budget),
                        show_progress=show_progress and world.is_main)
    trainer = loop.trainer
    higher = HIGHER_IS_BETTER[config.metric]

    def loss(mine: list[int], batch_ids: list[int]) -> tuple[torch.Tensor, dict]:
        inputs, targets = collate_pairs([encoded[i] for i in mine], tokenizer.pad_id, config.loss_on_prompt)
        # The global token count, so every rank's sum weighs as a share of the global mean.
        global_tokens = sum(_target_count(encoded[i], config.loss_on_prompt) for i in batch_ids)
        with trainer.autocast():  # the run's --precision
            loss_sum = trainer.wrapped(inputs.to(device), targets=targets.to(device), reduction="sum")
        loss_value = all_reduce_mean(float(loss_sum.detach()) * world.world_size / global_tokens, world, device)
        # DDP averages gradients over ranks; scaling by world / global tokens makes that the global mean.
        return loss_sum * (world.world_size / global_tokens), {"loss": loss_value, "tokens": global_tokens}

    def evaluate() -> dict:
        report = reference_loss(trainer.eval_model, val_encoded, tokenizer.pad_id, device)
        if config.metric != "loss":
            decoder = _decoding_model(trainer, start.config, device)
            hypotheses = [c[0].text for c in decode_all(decoder, tokenizer, [e.prompt for e in val_examples],
                                                        decode_settings)]
            metrics = generation_metrics(hypotheses, references)
            report.update({k: v for k, v in metrics.items() if not k.endswith("_signature")})
        return report

    def describe(step: int, report: dict) -> str:
        return (f"step {step}: val loss {report['loss']:.4f}"
                + (f", {config.metric} {report[config.metric]:.4f}" if config.metric != "loss" else ""))

    return loop.run(Objective(loss, evaluate, lambda report, best: _better(report, best, config.metric, higher),
                              describe))


def _better(report: dict, best: dict, metric: str, higher: bool) -> bool:
    """Whether ``report`` beats ``best`` on ``metric``; a tie goes to the lower validation loss."""
    score, previous = report[metric], best[metric]
    if math.isnan(score):
        return False
    if math.isnan(previous):
        return True
    if score != previous:
        return score > previous if higher else score < previous
    return metric != "loss" and report["loss"] < best["loss"]


def _target_count(pair: tuple[list[int], int], loss_on_prompt: bool) -> int:
    tokens, first = pair
    return len(tokens) - 1 if loss_on_prompt else len(tokens) - first


def _decoding_model(trainer: Trainer, config, device):
    """A plain model to decode with: the model itself, or under FSDP2 a local copy of the gathered weights."""
    if not trainer.sharded:
        return trainer.model
    state = full_model_state(trainer.wrapped, every_rank=True)
    local = GPT(config)
    local.load_state_dict(state)
    return local.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Evaluation and batch generation


def _generation_model(ckpt, device):
    model, checkpoint = model_from_checkpoint(ckpt, device)
    task = checkpoint.task
    if task and task.get("name") != TASK:
        raise Gpt1Error(f"{checkpoint.path} was fine-tuned for the {task['name']} task, which has a head, not "
                        f"text output: evaluate generation with a generate or pre-trained checkpoint")
    return model, checkpoint


def evaluate_generation(ckpt: str | Path, data: str | Path, device, *, settings: DecodeSettings | None = None,
                        predictions: str | Path | None = None, show_progress: bool | None = None,
                        overwrite: bool = False) -> dict:
    """Decode every prompt of ``data`` in the task format and score the outputs against the
    completions: BLEU, chrF, ROUGE-1/2/L, exact match, and the LM loss of the references.
    ``predictions`` (``-``: standard output) is replaced only with ``overwrite``."""
    check_output(predictions, overwrite)
    model, checkpoint = _generation_model(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    examples = load_pairs(data)
    n_ctx = checkpoint.config.n_ctx
    references = [e.completion for e in examples]
    settings = settings or DecodeSettings(temperature=0.0)
    if settings.max_new_tokens is None:
        settings = dataclasses.replace(settings, max_new_tokens=default_max_new_tokens(tokenizer, references, n_ctx))
    settings = settings.check()
    pairs = [encode_pair(tokenizer, e.prompt, e.completion, n_ctx) for e in examples]
    report = {"task": TASK, "examples": len(examples)}
    loss = reference_loss(model, pairs, tokenizer.pad_id, device)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    outputs = decode_all(model, tokenizer, [e.prompt for e in examples], settings, show_progress=show_progress)
    hypotheses = [o[0].text for o in outputs]
    metrics = generation_metrics(hypotheses, references)
    report.update({k: metrics[k] for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact")})
    report.update(loss=loss["loss"], ppl=loss["ppl"], reference_tokens=loss["tokens"],
                  mean_output_tokens=sum(len(o[0].tokens) for o in outputs) / len(outputs),
                  ended_with_eos=sum(o[0].finish == "eos" for o in outputs) / len(outputs),
                  beams=settings.beams, max_new_tokens=settings.max_new_tokens,
                  bleu_signature=metrics["bleu_signature"], chrf_signature=metrics["chrf_signature"])
    if predictions is not None:
        with output_lines(predictions, total=len(examples), unit="predictions") as writer:
            for example, output in zip(examples, outputs):
                writer.write({"prompt": example.prompt, "reference": example.completion, "completion": output[0].text})
    return report


def generate_file(model, tokenizer, source: str | Path, out: str | Path, settings: DecodeSettings, *,
                  task_format: bool, seed: int = 0, show_progress: bool = True, overwrite: bool = False) -> int:
    """Complete every prompt of a JSONL (or CSV/Parquet) file; write each record with ``completion``
    and ``finish`` (with beams also ``beams``: the N best as ``{text, score, logprob, tokens,
    finish}``) to ``out`` (``-``: standard output). A record that already has a ``completion``
    keeps it as ``reference``. Line ``i`` samples with seed ``seed + i``. Returns the count.

    An existing ``out`` is replaced only with ``overwrite``. Interrupted (Ctrl-C), the records
    done so far are kept in ``OUT.partial`` and ``out`` is not written."""
    check_output(out, overwrite)
    examples = load_pairs(source, require_completion=False)
    n_ctx = model.config.n_ctx
    device = next(model.parameters()).device
    settings = settings.check()
    with output_lines(out, total=len(examples), unit="completions") as writer, \
            progress_bar("generating", len(examples), enabled=show_progress, count=True) as bar:
        for index, example in enumerate(examples):
            ids = tokenizer.encode(example.prompt)
            if task_format:
                ids = task_prompt(tokenizer, ids, n_ctx, settings.max_new_tokens)
            try:
                generator = torch.Generator(device=device).manual_seed(seed + index)
                outputs = complete(model, tokenizer, ids, settings, task_format=task_format, generator=generator)
            except Gpt1Error as exc:
                raise Gpt1Error(f"{example.where}: {exc}") from None
            record = dict(example.record)
            if "completion" in record and "reference" not in record:
                record["reference"] = record["completion"]  # a pairs file: keep its completion as the reference
            record["completion"] = outputs[0].text
            record["finish"] = outputs[0].finish
            if settings.beams > 1:
                record["beams"] = [o.to_dict() for o in outputs]
            writer.write(record)
            bar.advance(1)
    return len(examples)
