"""`gpt1 generate`: continue a prompt (streaming tokens as they come), or every prompt of a file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
import typer

from ..checks import SEED, option
from ..errors import Gpt1Error, Interrupted, interrupt_leaves
from ..model.generation.completion import DecodeSettings, complete
from ..model.generation.sampling import check_prompt
from ..model.loading import model_from_checkpoint, tokenizer_for
from ..progress import console as make_console
from ..runtime import pick_device
from ..tasks.outputs import check_output, is_stdout, where
from ..tasks.transforms import task_prompt
from .options import Options, command, device_option


@command(DecodeSettings)
def generate(
    ckpt: Path = typer.Option(..., help="Checkpoint folder or run directory (its latest checkpoint)."),
    prompt: Optional[str] = typer.Option(None, help="Text to continue (or --input FILE).", show_default="none"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="JSONL of prompts, one {\"prompt\": ...} (or {\"input\": ...}) per line.", show_default="none"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --input: JSONL written with each line's fields plus completion and finish (and beams with --beams > 1); - is standard output. Ctrl-C keeps the lines done in OUT.partial.", show_default="none"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out file."),
    *,
    options: Options,
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="End the output where this string appears (it is not printed; \\n is a line break); repeatable.", show_default="none"),
    task_format: bool = typer.Option(False, "--task-format", help="Wrap the prompt as \\[start; prompt; delim] and print only the completion (on by itself for a checkpoint fine-tuned with --task generate)."),
    plain: bool = typer.Option(False, "--plain", help="Continue the prompt as plain text even for a generate-task checkpoint."),
    seed: int = typer.Option(0, callback=option(**SEED), help="Sampling seed (line i of --input uses seed + i)."),
    device: str = device_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar for --input."),
) -> None:
    """Generate a continuation of --prompt (or of each prompt in --input) with a KV cache."""
    if (prompt is None) == (input_file is None):
        raise Gpt1Error("give exactly one of --prompt TEXT or --input FILE")
    if input_file is not None and out is None:
        raise Gpt1Error("--input needs --out FILE for the completions (- for standard output)")
    if out is not None and input_file is None:
        raise Gpt1Error("--out goes with --input FILE; a --prompt's completion is printed")
    if task_format and plain:
        raise Gpt1Error("--task-format and --plain contradict each other: give one")
    settings = options.config(DecodeSettings, stop=tuple(s.replace("\\n", "\n") for s in stop or ())).check()
    if input_file is not None:
        check_output(out, overwrite)  # before the model is loaded
    dev = pick_device(device)
    model, checkpoint = model_from_checkpoint(ckpt, dev)
    tokenizer = tokenizer_for(checkpoint)
    wrap = task_format or (not plain and (checkpoint.task or {}).get("name") == "generate")
    if input_file is not None:
        from ..tasks.generative import generate_file

        count = generate_file(model, tokenizer, input_file, out, settings, task_format=wrap, seed=seed,
                              show_progress=not quiet, overwrite=overwrite)
        make_console(stderr=is_stdout(out)).print(f"{count} completions written to {where(out)}")
        return
    prompt_ids = tokenizer.encode(prompt)
    if wrap:
        prompt_ids = task_prompt(tokenizer, prompt_ids, model.config.n_ctx, settings.max_new_tokens)
    check_prompt(model, prompt_ids)
    head = "" if wrap else prompt
    generator = torch.Generator(device=dev).manual_seed(seed)
    try:
        if settings.beams == 1:
            sys.stdout.write(head)

            def show(text: str) -> None:
                sys.stdout.write(text)
                sys.stdout.flush()

            try:
                complete(model, tokenizer, prompt_ids, settings, task_format=wrap, generator=generator, on_text=show)
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                sys.stdout.flush()
                raise Interrupted("the output above stops where generation was interrupted") from None
            sys.stdout.write("\n")
            sys.stdout.flush()
            return
        with interrupt_leaves("beam search was interrupted before it finished; nothing was printed"):
            outputs = complete(model, tokenizer, prompt_ids, settings, task_format=wrap)
        for rank, beam in enumerate(outputs, start=1):
            sys.stdout.write(f"[beam {rank}] score {beam.score:.4f} (log P {beam.logprob:.4f}, {len(beam.tokens)} "
                             f"tokens, {beam.finish})\n{head}{beam.text}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()  # the reader (e.g. `| head`) has what it wanted


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
