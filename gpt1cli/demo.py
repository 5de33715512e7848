"""The end-to-end demo on the embedded corpus: tokenize -> pretrain -> evaluate -> generate."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch

from .corpus_builder import build_stdlib_corpus
from .data.pipeline import tokenize_corpus
from .data.shards import ShardDataset
from .model.generate import generate_tokens
from .model.loading import model_from_checkpoint, tokenizer_for
from .runtime import pick_device
from .train.evaluate import evaluate_lm
from .train.pretrain import PretrainConfig, pretrain

DEMO_PROMPT = "Return a new list"


def run_demo(
    out_dir: str | Path = "demo-out",
    *,
    preset: str = "mini",
    steps: int = 600,
    vocab_size: int = 4000,
    corpus_bytes: int = 8_000_000,
    device: str = "auto",
    show_progress: bool = True,
    log=print,
) -> dict:
    """Run the whole pipeline in ``out_dir`` (replacing an earlier demo there); return its figures."""
    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    results: dict = {"stages": {}}

    def stage(name: str, t0: float) -> None:
        results["stages"][name] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    log("1/4 building the embedded corpus from the standard library's docstrings")
    corpus = build_stdlib_corpus(out / "corpus.jsonl", max_bytes=corpus_bytes)
    results["corpus"] = corpus
    stage("corpus", t0)

    t0 = time.perf_counter()
    log("2/4 training the tokenizer and writing shards")
    manifest = tokenize_corpus([corpus["path"]], out / "shards", vocab_size=vocab_size, val_fraction=0.02,
                               show_progress=show_progress)
    results["tokenize"] = {
        "vocab_size": manifest["tokenizer"]["vocab_size"],
        "train_tokens": manifest["splits"]["train"]["tokens"],
        "val_tokens": manifest["splits"]["val"]["tokens"],
        "encode_mb_per_s": manifest["stats"]["encode_mb_per_s"],
    }
    stage("tokenize", t0)

    t0 = time.perf_counter()
    log(f"3/4 pre-training the {preset} preset for {steps} steps")
    dev = pick_device(device)
    run = out / "run"
    summary = pretrain(PretrainConfig(shards=str(out / "shards"), out=str(run), preset=preset, steps=steps,
                                      eval_every=max(1, steps // 4), ckpt_every=steps, device=device),
                       show_progress=show_progress)
    results["pretrain"] = {k: summary[k] for k in ("parameters", "tokens_per_s", "loss", "val", "kernels")}
    stage("pretrain", t0)

    t0 = time.perf_counter()
    log("4/4 evaluating and generating")
    data = ShardDataset(out / "shards")
    model, checkpoint = model_from_checkpoint(run, dev)
    torch.manual_seed(0)
    untrained = type(model)(checkpoint.config).to(dev)
    results["eval"] = {
        "untrained": evaluate_lm(untrained, data.val, device=dev),
        "pretrained": evaluate_lm(model, data.val, device=dev),
    }
    tokenizer = tokenizer_for(checkpoint)
    ids = list(generate_tokens(model, tokenizer.encode(DEMO_PROMPT), max_new_tokens=30, temperature=0.0,
                               stop_ids=(tokenizer.eos_id,)))
    results["sample"] = {"prompt": DEMO_PROMPT, "completion": tokenizer.decode([i for i in ids if i != tokenizer.eos_id])}
    stage("eval+generate", t0)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results
