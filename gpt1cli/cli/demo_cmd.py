"""`gpt1 demo`: the whole pipeline on the embedded corpus, ending in a results table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..demo import DemoConfig, run_demo
from ..fileio import atomic_write_json
from ..progress import console as make_console
from .options import Options, command


@command(DemoConfig)
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Working directory; an earlier demo's is replaced, any other existing folder only with --overwrite."),
    *,
    options: Options,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Build a corpus from the installed Python's docstrings, tokenize, pre-train, evaluate and generate."""
    console = make_console()
    config = options.config(DemoConfig)
    results = run_demo(out, config, show_progress=not quiet, log=lambda m: console.print(f"[bold cyan]{m}"))
    atomic_write_json(out / "results.json", results)
    table = Table(title="gpt1 demo: the Python standard library's documentation")
    table.add_column("what")
    table.add_column("value", justify="right")
    corpus, tok, pre, ev = results["corpus"], results["tokenize"], results["pretrain"], results["eval"]
    acc, err = results["cloze_accuracy"], results["cloze_stderr"]
    rows = [
        ("corpus (pre-training)", f"{corpus['documents']:,} documents, {corpus['bytes'] / 1e6:.2f} MB"),
        ("corpus (held out for the task)", f"{corpus['heldout_documents']:,} documents, {corpus['heldout_bytes'] / 1e6:.2f} MB"),
        ("tokenizer", f"BPE {tok['vocab_size']:,} tokens, encode {tok['encode_mb_per_s']} MB/s"),
        ("shards", f"{tok['train_tokens']:,} train / {tok['val_tokens']:,} val tokens"),
        ("model", f"{config.preset}, {pre['parameters']:,} parameters"),
        ("pre-training speed", f"{pre['tokens_per_s']:,.0f} tokens/s ({pre['kernels'].split(':')[0]})"),
        ("val loss untrained -> pretrained", f"{ev['untrained']['loss']:.3f} -> {ev['pretrained']['loss']:.3f}"),
        ("val perplexity", f"{ev['untrained']['ppl']:,.1f} -> {ev['pretrained']['ppl']:,.1f}"),
        ("val bits per byte", f"{ev['untrained']['bpb']:.3f} -> {ev['pretrained']['bpb']:.3f}"),
        ("cloze task (held-out text)", f"{results['task']['train']} train / {results['task']['val']} val / {results['task']['test']} test, 2 choices"),
        ("cloze test accuracy: chance", f"{acc['chance']:.1%}"),
        ("  zero-shot (LM likelihood)", f"{acc['zero_shot']:.1%} ± {err['zero_shot']:.1%}"),
        ("  fine-tuned from random init", f"{acc['finetuned_random']:.1%} ± {err['finetuned_random']:.1%}"),
        ("  pre-trained + fine-tuned", f"{acc['finetuned_pretrained']:.1%} ± {err['finetuned_pretrained']:.1%}"),
        ("greedy sample", f"{results['sample']['prompt']}{results['sample']['completion'][:60]}"),
        ("wall time", f"{results['seconds']} s  ({', '.join(f'{k} {v}s' for k, v in results['stages'].items())})"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"results: {out / 'results.json'}")
