"""`gpt1 eval`: language-model metrics, task metrics, generation metrics, zero- and few-shot learning."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..checks import SEED, option
from ..errors import Gpt1Error, interrupt_leaves
from ..model.generation.completion import DecodeSettings
from ..runtime import pick_device
from ..tasks.outputs import check_output, is_stdout, write_json
from .options import setting_option, was_given


GENERATION_OPTIONS = ("beams", "max_new_tokens", "length_penalty", "length_norm", "repetition_penalty",
                      "no_repeat_ngram_size", "predictions")
FEWSHOT_OPTIONS = ("shots_from", "template", "verbalizer", "seed")


def eval_(
    ctx: typer.Context,
    ckpt: Path = typer.Option(..., help="Checkpoint folder or run directory."),
    shards: Optional[Path] = typer.Option(None, help="LM evaluation on the validation split of this shard directory."),
    text: Optional[Path] = typer.Option(None, help="LM evaluation on a text corpus (.txt, .jsonl, .parquet)."),
    task: Optional[str] = typer.Option(None, help="Task evaluation: classify, entail, similar, mcq or generate (with --data)."),
    data: Optional[Path] = typer.Option(None, help="Labelled examples for --task (generate: prompt/completion pairs)."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="mcq without a head: score choices by LM likelihood."),
    shots: Optional[str] = typer.Option(None, help="In-context learning, no weight updates: K solved examples per prompt, answers scored by LM likelihood; a list such as 0,1,8 gives one row per K.", show_default="off"),
    shots_from: Optional[Path] = typer.Option(None, help="--shots: draw the solved examples from this labelled file.", show_default="--data itself, never the query"),
    template: Optional[str] = typer.Option(None, help="--shots: prompt template with the task's {fields} and one {answer}; \\n is a line break.", show_default="per task, e.g. classify '{text}\\nAnswer: {answer}'"),
    verbalizer: Optional[str] = typer.Option(None, help="--shots: JSON object (inline or a file) mapping labels to answer words.", show_default="each label as written"),
    seed: int = typer.Option(0, callback=option(**SEED), help="--shots: seed of the draw of solved examples (per query; nested across K)."),
    # Decoding settings, worded for --task generate; their defaults and rules are DecodeSettings'.
    beams: int = setting_option(DecodeSettings, "beams", help="generate: beams of beam search (1 is greedy decoding)."),
    max_new_tokens: Optional[int] = setting_option(DecodeSettings, "max_new_tokens", default=None, help="generate: most tokens per output.", show_default="the longest reference + 8"),
    length_penalty: float = setting_option(DecodeSettings, "length_alpha", help="generate: beam search length penalty alpha (0: none; see gpt1 generate)."),
    length_norm: str = setting_option(DecodeSettings, "length_norm", help="generate: gnmt ((5 + length) / 6)^alpha or power length^alpha."),
    repetition_penalty: float = setting_option(DecodeSettings, "repetition_penalty", help="generate: CTRL repetition penalty (1 is none)."),
    no_repeat_ngram_size: int = setting_option(DecodeSettings, "no_repeat_ngram_size", help="generate: never repeat an n-gram of this size (0 is off)."),
    predictions: Optional[Path] = typer.Option(None, help="generate: also write each prompt, reference and output as JSONL here (- is standard output).", show_default="none"),
    max_tokens: Optional[int] = typer.Option(None, callback=option(minimum=1), help="Most tokens evaluated with --shards (validation split) or --text.", show_default="all"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here; - prints the JSON to standard output (the table then goes to standard error).", show_default="none"),
    overwrite: bool = typer.Option(False, help="Replace existing --json and --predictions files."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
) -> None:
    """Evaluate a checkpoint: loss/perplexity/bits-per-byte, accuracy/F1/MCC/correlations on a task,
    BLEU/chrF/ROUGE of generated text, or zero-/few-shot in-context learning."""
    from ..data.shards import ShardDataset
    from ..model.loading import model_from_checkpoint
    from ..tasks.fewshot import zero_shot_mcq
    from ..tasks.head_eval import evaluate_task
    from ..train.lm_eval import evaluate_lm, lm_text_eval

    modes = sum(x is not None for x in (shards, text, task))
    if modes != 1:
        raise Gpt1Error("give exactly one of --shards, --text or --task (with --data)")
    given = {name for name in (*GENERATION_OPTIONS, *FEWSHOT_OPTIONS) if was_given(ctx, name)}
    if task != "generate" and given & set(GENERATION_OPTIONS):
        raise Gpt1Error(f"--{sorted(given & set(GENERATION_OPTIONS))[0].replace('_', '-')} applies to --task generate")
    if shots is None and given & set(FEWSHOT_OPTIONS):
        raise Gpt1Error(f"--{sorted(given & set(FEWSHOT_OPTIONS))[0].replace('_', '-')} applies to in-context "
                        f"learning: add --shots K")
    check_output(json_out, overwrite)  # before any work
    check_output(predictions, overwrite)
    if is_stdout(json_out) and is_stdout(predictions):
        raise Gpt1Error("--json - and --predictions - would both go to standard output: give one of them a file")
    console = Console(stderr=is_stdout(json_out) or is_stdout(predictions))
    with interrupt_leaves("evaluation stopped before its results were written"):
        dev = pick_device(device)
        if shards is not None:
            data_set = ShardDataset(shards)
            model, checkpoint = model_from_checkpoint(ckpt, dev)
            if checkpoint.meta.get("tokenizer_blake2b") != data_set.tokenizer_hash:
                raise Gpt1Error(f"{shards} was made with a different tokenizer than {checkpoint.path}: re-tokenize with its tokenizer.model")
            results = evaluate_lm(model, data_set.val, device=dev, max_tokens=max_tokens)
        elif text is not None:
            results = lm_text_eval(ckpt, text, dev, max_tokens=max_tokens, show_progress=sys.stderr.isatty())
        else:
            if data is None:
                raise Gpt1Error("--task needs --data FILE")
            if zero_shot and shots is not None:
                raise Gpt1Error("--zero-shot is the mcq K=0 path; with --shots give 0 among the counts instead")
            if task == "generate":
                if zero_shot or shots is not None:
                    raise Gpt1Error("--zero-shot and --shots score answers of labelled tasks, not --task generate")
                from ..tasks.generative import evaluate_generation

                settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=0.0, beams=beams,
                                          length_alpha=length_penalty, length_norm=length_norm,
                                          repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
                results = evaluate_generation(ckpt, data, dev, settings=settings, predictions=predictions,
                                              overwrite=overwrite)
            elif shots is not None:
                from ..tasks.fewshot import fewshot_eval, parse_shots

                results = fewshot_eval(ckpt, task, data, dev, shots=parse_shots(shots), shots_from=shots_from,
                                       template=None if template is None else template.replace("\\n", "\n"),
                                       verbalizer=verbalizer, seed=seed)
                _print_fewshot(results, console)
                if json_out is not None:
                    write_json(json_out, results)
                return
            elif zero_shot:
                if task != "mcq":
                    raise Gpt1Error("--zero-shot scores multiple choice: use it with --task mcq")
                results = zero_shot_mcq(ckpt, data, dev)
            else:
                results = evaluate_task(ckpt, task, data, dev)
        _print(results, console)
        if json_out is not None:
            write_json(json_out, results)


def _print_fewshot(results: dict, console: Console) -> None:
    table = Table(title=f"in-context learning: {results['task']} (chance {results['chance']:.4f}, "
                        f"context {results['n_ctx']} tokens)")
    for column in ("shots", "accuracy", "macro_f1", "mcc", "examples", "shots used (mean / min / max)",
                   "fewer shots", "truncated queries"):
        table.add_column(column, justify="right")
    for row in results["results"]:
        table.add_row(str(row["shots"]), f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}", f"{row['mcc']:.4f}",
                      str(row["examples"]),
                      f"{row['shots_used_mean']:.2f} / {row['shots_used_min']} / {row['shots_used_max']}",
                      str(row["fewer_shots"]), str(row["truncated_queries"]))
    console.print(table)


def _print(results: dict, console: Console) -> None:
    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        if key in ("confusion", "labels"):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    if "confusion" in results:
        labels = [str(x) for x in results.get("labels", range(len(results["confusion"])))]
        matrix = Table(title="confusion (rows: true, columns: predicted)")
        matrix.add_column("")
        for label in labels:
            matrix.add_column(label, justify="right")
        for label, row in zip(labels, results["confusion"]):
            matrix.add_row(label, *[str(v) for v in row])
        console.print(matrix)
