"""`gpt1 convert`: import the original GPT-1 release or a transformers model, or export to transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import Gpt1Error
from ..progress import console as make_console


def convert(
    from_openai: Optional[Path] = typer.Option(None, "--from-openai", help="The original release's model folder (params_shapes.json, params_0.npy ... params_9.npy, encoder_bpe_40000.json, vocab_40000.bpe)."),
    from_hf: Optional[Path] = typer.Option(None, "--from-hf", help="A transformers OpenAI GPT or GPT-2 directory (config.json + model.safetensors)."),
    to_hf: Optional[Path] = typer.Option(None, "--to-hf", help="Write --ckpt as a transformers directory here: weights, config, tokenizer.json (AutoTokenizer), generation config and a README.md model card."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New run directory for an import (--from-openai, --from-hf)."),
    ckpt: Optional[Path] = typer.Option(None, "--ckpt", help="Checkpoint or run directory to export (--to-hf)."),
    arch: Optional[str] = typer.Option(None, help="--from-hf: gpt1 (OpenAI GPT) or gpt2 (default: from config.json)."),
    tokenizer: Optional[str] = typer.Option(None, help="--from-hf: the model's tokenizer: a SentencePiece .model, a tokenizer .json (ours or a tokenizers tokenizer.json) or openai:DIR (default: the copy an export of ours leaves, else the folder's own: vocab.json + merges.txt or tokenizer.json; GPT-2's needs the tokenizers package)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="--from-hf: read pytorch_model.bin (with torch.load(weights_only=True)) when there is no safetensors file."),
    n_head: Optional[int] = typer.Option(None, help="--from-openai: attention heads (not recorded in the release) (default: d_model / 64, 12 for GPT-1)."),
    drop_head: bool = typer.Option(False, "--drop-head", help="--to-hf: export a classify/entail/similar checkpoint's decoder without its task head."),
    seed: int = typer.Option(0, help="--from-openai: seed of the N(0, 0.02) rows added for special tokens the release lacks (--from-hf starts such rows at the mean token embedding)."),
) -> None:
    """Convert weights: the original GPT-1 release or transformers -> a run of ours, or a checkpoint -> transformers."""
    chosen = [name for name, value in (("--from-openai", from_openai), ("--from-hf", from_hf), ("--to-hf", to_hf)) if value is not None]
    if len(chosen) != 1:
        raise Gpt1Error("give exactly one of --from-openai DIR, --from-hf DIR or --to-hf DIR"
                        + (f" (got {', '.join(chosen)})" if chosen else ""))
    from ..interop import export_hf, import_hf, import_openai_release

    console = make_console()
    if to_hf is not None:
        if ckpt is None:
            raise Gpt1Error("--to-hf needs --ckpt RUN (the checkpoint or run directory to export)")
        summary = export_hf(ckpt, to_hf, drop_head=drop_head)
        console.print(f"wrote {summary.architecture} to {summary.out}: {', '.join(summary.files)}")
        for note in summary.notes:
            console.print(f"note: {note}")
        return
    if out is None:
        raise Gpt1Error(f"{chosen[0]} needs --out RUN (a new run directory)")
    if from_openai is not None:
        summary = import_openai_release(from_openai, out, n_head=n_head, seed=seed)
    else:
        summary = import_hf(from_hf, out, tokenizer=tokenizer, arch=arch, allow_pickle=allow_pickle, seed=seed)
    config = summary.config
    task = f", {summary.task} head" if summary.task else ""
    console.print(f"wrote {summary.checkpoint}: {config.arch}, {config.n_layer} layers, d_model {config.d_model}, "
                  f"{config.n_head} heads, context {config.n_ctx}, vocabulary {config.vocab_size:,}{task}")
    for note in summary.notes:
        console.print(f"note: {note}")
