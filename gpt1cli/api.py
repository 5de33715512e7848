"""The Python API: the main operations of the command line, with the same defaults.

Every default here is the command's, because both read the same config dataclasses (a command's
options are built from them)::

    from gpt1cli import api

    api.tokenize(["corpus.txt"], "shards", vocab_size=8000)
    api.pretrain(shards="shards", out="runs/lm", preset="mini", steps=800)
    model, tokenizer = api.load("runs/lm")
    print(api.generate(model, tokenizer, "The meaning of", temperature=0.0, max_new_tokens=40))
    api.finetune(task="mcq", train="train.jsonl", val="val.jsonl", from_run="runs/lm", out="runs/cloze")
    print(api.evaluate("runs/cloze", task="mcq", data="test.jsonl")["accuracy"])
    print(api.evaluate_lm("runs/lm", shards="shards")["ppl"])

Bad input raises :class:`Gpt1Error` with the same one-line message the command prints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.pipeline import TokenizeConfig, tokenize_corpus
from .errors import Gpt1Error
from .model.generation.completion import DecodeSettings, complete
from .model.gpt import GPT
from .model.loading import model_from_checkpoint, tokenizer_for
from .runtime import pick_device
from .tasks.finetune import FinetuneConfig
from .tasks.finetune import finetune as _finetune
from .tasks.generative import GenerativeConfig, finetune_generate
from .tasks.head_eval import BATCH_SIZE as TASK_BATCH
from .tasks.head_eval import evaluate_task
from .tasks.head_eval import predict as _predict
from .train.pretrain import pretrain as _pretrain
from .train.pretrain_config import PretrainConfig

__all__ = ["DecodeSettings", "FinetuneConfig", "GenerativeConfig", "Gpt1Error", "PretrainConfig", "TokenizeConfig",
           "evaluate", "evaluate_lm", "finetune", "generate", "load", "predict", "pretrain", "tokenize"]

LM_BATCH = 8  # windows per forward pass, as `gpt1 eval --shards/--text`


def tokenize(inputs: list[str | Path], out: str | Path, *, show_progress: bool = True, **settings) -> dict:
    """`gpt1 tokenize INPUTS --out OUT`: train (or reuse) a tokenizer and write Arrow shards; ``settings``
    are :class:`TokenizeConfig`'s (``vocab_size``, ``text_field``, ...). Returns the manifest's summary."""
    return tokenize_corpus([str(p) for p in inputs], out, show_progress=show_progress, **settings)


def pretrain(config: PretrainConfig | None = None, *, show_progress: bool = True, **settings) -> dict:
    """`gpt1 pretrain`: a :class:`PretrainConfig`, or its settings as keywords. Returns the run's summary."""
    return _pretrain(_config(PretrainConfig, config, settings), show_progress=show_progress)


def finetune(config: FinetuneConfig | GenerativeConfig | None = None, *, show_progress: bool = True,
             **settings) -> dict:
    """`gpt1 finetune`: a :class:`FinetuneConfig` (a task with a head), a :class:`GenerativeConfig`, or
    the settings as keywords (``task="generate"`` picks the generative config)."""
    if config is None:
        kind = GenerativeConfig if settings.get("task") == "generate" else FinetuneConfig
        if kind is GenerativeConfig:
            settings = {k: v for k, v in settings.items() if k != "task"}
        config = _config(kind, None, settings)
    elif settings:
        raise TypeError("give a config or keyword settings, not both")
    if isinstance(config, GenerativeConfig):
        return finetune_generate(config, show_progress=show_progress)
    return _finetune(config, show_progress=show_progress)


def load(ckpt: str | Path, device: str = "auto") -> tuple[GPT, object]:
    """A checkpoint folder or run directory (a fine-tuning run: its best) as ``(model, tokenizer)``,
    the model in eval mode on ``device`` (auto, cpu, cuda, cuda:N)."""
    model, checkpoint = model_from_checkpoint(ckpt, pick_device(device))
    model.eval()
    return model, tokenizer_for(checkpoint)


def generate(model: GPT, tokenizer, prompt: str, settings: DecodeSettings | None = None, *, seed: int = 0,
             **decode) -> str | list:
    """`gpt1 generate --prompt`: the continuation of ``prompt`` (text only, without the prompt).

    ``settings`` or ``decode`` keywords are :class:`DecodeSettings`' (the command's defaults:
    temperature 0.8, 100 new tokens; ``temperature=0.0`` is greedy). With ``beams`` > 1 returns the
    beams (each with ``text``, ``score``, ``logprob``), best first."""
    if settings is None:
        settings = DecodeSettings(**decode)
    elif decode:
        raise TypeError("give settings or decoding keywords, not both")
    settings = settings.check()
    device = next(model.parameters()).device
    prompt_ids = tokenizer.encode(prompt)
    if settings.beams > 1:
        return complete(model, tokenizer, prompt_ids, settings)
    generator = torch.Generator(device=device).manual_seed(seed)
    [result] = complete(model, tokenizer, prompt_ids, settings, generator=generator)
    return result.text


def evaluate_lm(ckpt: str | Path, *, shards: str | Path | None = None, text: str | Path | None = None,
                device: str = "auto", max_tokens: int | None = None, batch_size: int = LM_BATCH) -> dict:
    """`gpt1 eval --shards` (the validation split) or `--text`: loss, perplexity and bits per byte."""
    from .train.lm_eval import lm_shards_eval, lm_text_eval

    if (shards is None) == (text is None):
        raise Gpt1Error("give exactly one of shards or text")
    dev = pick_device(device)
    if text is not None:
        return lm_text_eval(ckpt, text, dev, max_tokens=max_tokens, batch_size=batch_size)
    return lm_shards_eval(ckpt, shards, dev, max_tokens=max_tokens, batch_size=batch_size)


def evaluate(ckpt: str | Path, *, task: str, data: str | Path, device: str = "auto", batch_size: int = TASK_BATCH,
             fields=None) -> dict:
    """`gpt1 eval --task TASK --data FILE` on a fine-tuned checkpoint: the task's metrics with the
    accuracy's standard error and the chance baselines."""
    return evaluate_task(ckpt, task, data, pick_device(device), batch_size=batch_size, fields=fields)


def predict(ckpt: str | Path, *, data: str | Path, out: str | Path, device: str = "auto",
            batch_size: int = TASK_BATCH, overwrite: bool = False, fields=None) -> list[dict]:
    """`gpt1 predict`: one JSON line per example in ``out`` (id, input fields, label, probabilities); returns them."""
    return _predict(ckpt, data, out, pick_device(device), overwrite=overwrite, batch_size=batch_size, fields=fields)


def _config(kind, config, settings: dict):
    if config is not None:
        if settings:
            raise TypeError("give a config or keyword settings, not both")
        return config
    return kind(**settings)
