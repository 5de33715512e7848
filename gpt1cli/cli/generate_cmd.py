"""`gpt1 generate`: continue a prompt, streaming tokens as they come."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import torch
import typer

from ..errors import Gpt1Error
from ..model.generate import generate_tokens
from ..model.loading import model_from_checkpoint, tokenizer_for
from ..runtime import pick_device


def generate(
    ckpt: Path = typer.Option(..., help="Checkpoint folder or run directory (its latest checkpoint)."),
    prompt: str = typer.Option(..., help="Text to continue."),
    max_new_tokens: int = typer.Option(100, help="Tokens to generate."),
    temperature: float = typer.Option(0.8, help="Sampling temperature; 0 is greedy."),
    top_k: Optional[int] = typer.Option(None, help="Sample only from the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, help="Sample only from the smallest set of tokens reaching this probability."),
    seed: int = typer.Option(0, help="Sampling seed."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
) -> None:
    """Generate a continuation of --prompt with a KV cache, printing it as it is produced."""
    if max_new_tokens <= 0:
        raise Gpt1Error(f"--max-new-tokens must be positive, got {max_new_tokens}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise Gpt1Error(f"--top-p must be in (0, 1], got {top_p}")
    dev = pick_device(device)
    model, checkpoint = model_from_checkpoint(ckpt, dev)
    tokenizer = tokenizer_for(checkpoint)
    prompt_ids = tokenizer.encode(prompt)
    generator = torch.Generator(device=dev).manual_seed(seed)
    produced: list[int] = []
    printed = ""
    prompt_text = tokenizer.decode(prompt_ids)
    sys.stdout.write(prompt)
    for token in generate_tokens(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, stop_ids=(tokenizer.eos_id,), generator=generator):
        if token == tokenizer.eos_id:
            break
        produced.append(token)
        # Decode the whole continuation each time: pieces and byte fallbacks only make sense together.
        text = tokenizer.decode(prompt_ids + produced)[len(prompt_text):]
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[len(printed):])
            sys.stdout.flush()
            printed = text
    sys.stdout.write("\n")
