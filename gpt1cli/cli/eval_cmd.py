"""`gpt1 eval`: language-model metrics, task metrics, generation metrics, zero- and few-shot learning."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..checks import SEED, option
from ..errors import Gpt1Error, interrupt_leaves
from ..model.generation.completion import DecodeSettings
from ..progress import console as make_console
from ..runtime import pick_device
from ..settings import one_of
from ..tasks.data import fields_setting
from ..tasks.outputs import check_output, is_stdout, where, write_json
from ..tasks.paper.registry import SUITES
from .options import device_option, setting_option, was_given
from .paper_cmd import is_benchmark, task_rule


GENERATION_OPTIONS = ("beams", "max_new_tokens", "length_penalty", "length_norm", "repetition_penalty",
                      "no_repeat_ngram_size", "predictions")
FEWSHOT_OPTIONS = ("shots_from", "template", "verbalizer", "seed")
MAX_BATCH = 1 << 16
LM_BATCH = 8  # windows per forward pass of LM evaluation unless told


def eval_(
    ctx: typer.Context,
    ckpt: Optional[Path] = typer.Option(None, help="Checkpoint folder or run directory (a fine-tuning run: its best). Required, except with --suite.", show_default="none"),
    shards: Optional[Path] = typer.Option(None, help="LM evaluation on the validation split of this shard directory."),
    text: Optional[Path] = typer.Option(None, help="LM evaluation on a text corpus (.txt, .jsonl, .parquet)."),
    task: Optional[str] = typer.Option(None, callback=option(task_rule), help="Task evaluation: classify, entail, similar, mcq or generate (with --data); or a paper benchmark such as story-cloze, mnli, sst-2 (with --data-dir; gpt1 paper tasks lists them)."),
    data: Optional[Path] = typer.Option(None, help="Labelled examples for --task (generate: prompt/completion pairs)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="--task BENCHMARK: the dataset's folder in its published layout; scored with the paper's metric on the split the paper reports, beside its figure.", show_default="none"),
    split: Optional[str] = typer.Option(None, help="--data-dir: score this split only (e.g. dev, test, test-middle).", show_default="the rows the paper reports"),
    suite: Optional[str] = typer.Option(None, callback=option(one_of(tuple(SUITES), "suite")), help=f"Score every paper benchmark of a suite ({', '.join(SUITES)}) whose data is under --data-root with the runs in --ckpt-dir/NAME, and print the paper's tables (fine-tune them first with gpt1 paper suite --from RUN).", show_default="none"),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="--suite: the folder holding each dataset's published folder.", show_default="none"),
    ckpt_dir: Optional[Path] = typer.Option(None, "--ckpt-dir", help="--suite: the fine-tuned runs, one per benchmark, as CKPT_DIR/NAME.", show_default="none"),
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
    field: Optional[List[str]] = typer.Option(None, "--field", callback=option(fields_setting), help="Task field NAME=COLUMN of --data (and --shots-from), repeatable, e.g. --field premise=sentence1.", show_default="the mapping the checkpoint was fine-tuned with, else the fields' own names"),
    batch_size: Optional[int] = typer.Option(None, callback=option(minimum=1, maximum=MAX_BATCH), help="Sequences per forward pass: LM windows (--shards, --text), examples (--task with a head) or prompt + answer pairs (--zero-shot, --shots); the figures do not depend on it.", show_default="8 windows, 32 examples, 16 pairs"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results as JSON here; - prints the JSON to standard output (the table then goes to standard error).", show_default="none"),
    overwrite: bool = typer.Option(False, help="Replace existing --json and --predictions files."),
    device: str = device_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate a checkpoint: loss/perplexity/bits-per-byte, accuracy/F1/MCC/correlations on a task,
    BLEU/chrF/ROUGE of generated text, or zero-/few-shot in-context learning."""
    from ..checkpoint import resolve_checkpoint
    from ..tasks.fewshot import BATCH_SIZE as PAIRS_BATCH, zero_shot_mcq
    from ..tasks.head_eval import BATCH_SIZE as HEAD_BATCH, evaluate_task, standard_error
    from ..tasks.outputs import provenance
    from ..train.lm_eval import lm_shards_eval, lm_text_eval

    modes = sum(x is not None for x in (shards, text, task, suite))
    if modes != 1:
        raise Gpt1Error("give exactly one of --shards, --text, --task (with --data, or a benchmark with --data-dir) "
                        "or --suite")
    if suite is not None or is_benchmark(task) or data_dir is not None:
        return _benchmarks(ctx, ckpt, task, data, data_dir, split, suite, data_root, ckpt_dir, json_out, overwrite,
                           device, quiet)
    for name in ("split", "data_root", "ckpt_dir"):
        if was_given(ctx, name):
            raise Gpt1Error(f"--{name.replace('_', '-')} applies to the paper's benchmarks (--data-dir, --suite)")
    if ckpt is None:
        raise Gpt1Error("eval needs --ckpt (a checkpoint folder or run directory)")
    given = {name for name in (*GENERATION_OPTIONS, *FEWSHOT_OPTIONS) if was_given(ctx, name)}
    if task != "generate" and given & set(GENERATION_OPTIONS):
        raise Gpt1Error(f"--{sorted(given & set(GENERATION_OPTIONS))[0].replace('_', '-')} applies to --task generate")
    if shots is None and given & set(FEWSHOT_OPTIONS):
        raise Gpt1Error(f"--{sorted(given & set(FEWSHOT_OPTIONS))[0].replace('_', '-')} applies to in-context "
                        f"learning: add --shots K")
    if task == "generate" and batch_size is not None:
        raise Gpt1Error("--batch-size does not apply to --task generate: each prompt is decoded on its own")
    check_output(json_out, overwrite)  # before any work
    check_output(predictions, overwrite)
    if is_stdout(json_out) and is_stdout(predictions):
        raise Gpt1Error("--json - and --predictions - would both go to standard output: give one of them a file")
    console = make_console(stderr=is_stdout(json_out) or is_stdout(predictions))
    show_progress = not quiet
    with interrupt_leaves("evaluation stopped before its results were written"):
        dev = pick_device(device)
        settings: dict = {"device": str(dev)}
        if shards is not None:
            folder = resolve_checkpoint(ckpt)
            settings.update(mode="lm", split="val", batch_size=batch_size or LM_BATCH, max_tokens=max_tokens)
            results = lm_shards_eval(folder, shards, dev, max_tokens=max_tokens, batch_size=batch_size or LM_BATCH,
                                     show_progress=show_progress)
            sources = [shards / "manifest.json"]
        elif text is not None:
            from ..data.corpus import expand_inputs

            sources = expand_inputs([str(text)])
            folder = resolve_checkpoint(ckpt)
            settings.update(mode="lm-text", batch_size=batch_size or LM_BATCH, max_tokens=max_tokens)
            results = lm_text_eval(folder, text, dev, max_tokens=max_tokens, show_progress=show_progress,
                                   batch_size=batch_size or LM_BATCH)
        else:
            if data is None:
                raise Gpt1Error("--task needs --data FILE")
            if zero_shot and shots is not None:
                raise Gpt1Error("--zero-shot is the mcq K=0 path; with --shots give 0 among the counts instead")
            sources = [data]
            settings["task"] = task
            if task == "generate":
                if zero_shot or shots is not None:
                    raise Gpt1Error("--zero-shot and --shots score answers of labelled tasks, not --task generate")
                from ..tasks.generative import evaluate_generation

                folder = resolve_checkpoint(ckpt)
                decode = DecodeSettings(max_new_tokens=max_new_tokens, temperature=0.0, beams=beams,
                                        length_alpha=length_penalty, length_norm=length_norm,
                                        repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
                results = evaluate_generation(folder, data, dev, settings=decode, predictions=predictions,
                                              overwrite=overwrite, show_progress=show_progress)
                results["exact_stderr"] = standard_error(results["exact"], results["examples"])
                settings.update(mode="generate", beams=beams, max_new_tokens=results["max_new_tokens"],
                                length_penalty=length_penalty, length_norm=length_norm,
                                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                predictions=None if predictions is None else where(predictions))
            elif shots is not None:
                from ..tasks.fewshot import fewshot_eval, parse_shots

                folder = resolve_checkpoint(ckpt)
                counts = parse_shots(shots)
                results = fewshot_eval(folder, task, data, dev, shots=counts, shots_from=shots_from,
                                       template=None if template is None else template.replace("\\n", "\n"),
                                       verbalizer=verbalizer, seed=seed, batch_size=batch_size or PAIRS_BATCH,
                                       show_progress=show_progress, fields=field)
                settings.update(mode="few-shot", shots=counts, seed=seed, template=results["template"],
                                answers=results["answers"], batch_size=batch_size or PAIRS_BATCH)
                _print_fewshot(results, console)
                if json_out is not None:
                    results = {**results, "provenance": provenance(
                        "gpt1 eval", folder, sources + ([] if shots_from is None else [shots_from]), settings)}
                    write_json(json_out, results)
                return
            elif zero_shot:
                if task != "mcq":
                    raise Gpt1Error("--zero-shot scores multiple choice: use it with --task mcq")
                folder = resolve_checkpoint(ckpt)
                settings.update(mode="zero-shot", batch_size=batch_size or PAIRS_BATCH)
                results = zero_shot_mcq(folder, data, dev, batch_size=batch_size or PAIRS_BATCH,
                                        show_progress=show_progress, fields=field)
            else:
                folder = resolve_checkpoint(ckpt)
                settings.update(mode="head", batch_size=batch_size or HEAD_BATCH)
                results = evaluate_task(folder, task, data, dev, batch_size=batch_size or HEAD_BATCH,
                                        show_progress=show_progress, fields=field)
        _print(results, console)
        if json_out is not None:
            results = {**results, "provenance": provenance("gpt1 eval", folder, sources, settings)}
            write_json(json_out, results)


def _benchmarks(ctx, ckpt, task, data, data_dir, split, suite, data_root, ckpt_dir, json_out, overwrite, device,
                quiet) -> None:
    """--task BENCHMARK --data-dir DIR (one benchmark) or --suite NAME --data-root ROOT --ckpt-dir DIR (a table)."""
    from ..tasks.paper import evaluate_named, run_suite
    from .paper_cmd import print_scored, print_suite

    others = [name for name in ("data", "shards", "text", "zero_shot", "shots", "field", "batch_size", "predictions",
                                *GENERATION_OPTIONS, *FEWSHOT_OPTIONS) if was_given(ctx, name)]
    if others:
        raise Gpt1Error(f"--{others[0].replace('_', '-')} does not apply to the paper's benchmarks: the benchmark "
                        "picks its files, fields and metric")
    check_output(json_out, overwrite)
    if suite is not None:
        missing = [flag for flag, value in (("--data-root", data_root), ("--ckpt-dir", ckpt_dir)) if value is None]
        if missing or ckpt is not None or data_dir is not None or split is not None:
            raise Gpt1Error(f"--suite takes --data-root ROOT and --ckpt-dir DIR (not --ckpt, --data-dir or --split)"
                            + (f"; missing {', '.join(missing)}" if missing else ""))
        notes = make_console(stderr=True)
        with interrupt_leaves("evaluation stopped before its results were written"):
            result = run_suite(suite, data_root, ckpt_dir, device=device, show_progress=not quiet,
                               log=None if quiet else (lambda m: notes.print(m, markup=False)))
        print_suite(result, json_out)
        return
    if not is_benchmark(task):
        raise Gpt1Error(f"--data-dir reads a paper benchmark's published files: give its name with --task (not "
                        f"{task!r}); gpt1 paper tasks lists them")
    if data_dir is None or ckpt is None:
        raise Gpt1Error(f"--task {task} is a paper benchmark: give its folder with --data-dir and the fine-tuned run "
                        "with --ckpt")
    if data_root is not None or ckpt_dir is not None:
        raise Gpt1Error("--data-root and --ckpt-dir go with --suite")
    with interrupt_leaves("evaluation stopped before its results were written"):
        result = evaluate_named(task, data_dir, ckpt, split, device=device)
    print_scored(result, json_out)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_fewshot(results: dict, console) -> None:
    table = Table(title=f"in-context learning: {results['task']} (chance {results['chance']:.4f}, majority class "
                        f"{results['majority']:.4f}, context {results['n_ctx']} tokens)")
    for column in ("shots", "accuracy", "± s.e.", "macro_f1", "mcc", "examples", "shots used (mean / min / max)",
                   "fewer shots", "truncated queries"):
        table.add_column(column, justify="right")
    for row in results["results"]:
        table.add_row(str(row["shots"]), f"{row['accuracy']:.4f}", f"{row['accuracy_stderr']:.4f}",
                      f"{row['macro_f1']:.4f}", f"{row['mcc']:.4f}", str(row["examples"]),
                      f"{row['shots_used_mean']:.2f} / {row['shots_used_min']} / {row['shots_used_max']}",
                      str(row["fewer_shots"]), str(row["truncated_queries"]))
    console.print(table)


BASELINES = ("chance", "majority", "majority_label")


def _print(results: dict, console) -> None:
    """One row per figure; a figure's standard error (``KEY_stderr``) beside it, and for an
    accuracy what chance and the majority class score."""
    errors = {key[: -len("_stderr")] for key in results if key.endswith("_stderr")}
    baselines = "chance" in results and "accuracy" in results
    table = Table(title="evaluation")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if errors:
        table.add_column("± s.e.", justify="right")
    if baselines:
        table.add_column("chance", justify="right")
        table.add_column("majority class", justify="right")
    for key, value in results.items():
        if key in ("confusion", "labels", "provenance", *BASELINES) or key.endswith("_stderr"):
            continue
        row = [key, _number(value)]
        if errors:
            row.append(_number(results[f"{key}_stderr"]) if key in errors else "")
        if baselines:
            row += [_number(results["chance"]), f"{results['majority']:.4f} ({escape(str(results['majority_label']))})"] \
                if key == "accuracy" else ["", ""]
        table.add_row(*row)
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
