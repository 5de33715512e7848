"""The end-to-end demo on the embedded corpus.

Standard-library text is split by document: 70% for pre-training, 30% held out to build a
story-cloze task, so the task's passages are never seen in pre-training (as ROCStories is
not in BooksCorpus). The demo then measures the paper's central claim on it: chance,
zero-shot, fine-tuning from random weights, and fine-tuning the pre-trained model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .checks import number
from .corpus_builder import build_stdlib_corpus
from .data.pipeline import tokenize_corpus
from .data.shards import ShardDataset
from .errors import Gpt1Error
from .fileio import remove_tree
from .model.generation.completion import DecodeSettings, complete
from .model.loading import model_from_checkpoint, tokenizer_for
from .config import PRESETS
from .runtime import DEVICE_HELP, device_rule, pick_device
from .settings import one_of, setting
from .tasks.cloze import ClozeConfig, make_cloze
from .tasks.fewshot import zero_shot_mcq
from .tasks.finetune import FinetuneConfig, finetune
from .tasks.head_eval import evaluate_task
from .train.lm_eval import evaluate_lm
from .train.pretrain import PretrainConfig, pretrain

DEMO_PROMPT = "Return a new list"


@dataclass(frozen=True)
class DemoConfig:
    """The settings of `gpt1 demo` (besides its working directory)."""

    overwrite: bool = setting(False, "Replace --out even if it was not made by the demo (everything in it is deleted).")
    preset: str = setting("mini", "Model preset to pre-train.", rule=one_of(tuple(PRESETS), "preset"))
    steps: int = setting(800, "Pre-training steps.", rule=number(minimum=1))
    vocab_size: int = setting(4000, "Tokenizer vocabulary size.", rule=number(minimum=1))
    corpus_mb: float = setting(8.0, "Most megabytes of standard-library text to use.", rule=number(above=0))
    device: str = setting("auto", DEVICE_HELP, rule=device_rule)


MARKER = ".gpt1-demo"  # marks a folder the demo made, which a later demo may replace


def prepare_demo_dir(out: Path, overwrite: bool = False) -> None:
    """An empty ``out`` for the demo: an earlier demo's folder is replaced, anything else only with ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise Gpt1Error(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        made_by_demo = (out / MARKER).is_file() or (out / "results.json").is_file()
        if not made_by_demo and not overwrite:
            raise Gpt1Error(f"{out} already exists and was not made by gpt1 demo: pass --overwrite to replace it "
                            "(everything in it is deleted) or choose another --out")
        remove_tree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by gpt1 demo; the next demo replaces this folder\n")
    except OSError as exc:
        raise Gpt1Error(f"cannot write {out}: {exc.strerror or exc}; choose another --out") from None


def greedy_sample(model, tokenizer, prompt: str, max_new_tokens: int = 30) -> str:
    """The greedy continuation of ``prompt``, decoded with the prompt so the words at the join stay apart."""
    settings = DecodeSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    return complete(model, tokenizer, tokenizer.encode(prompt), settings)[0].text


def run_demo(
    out_dir: str | Path = "demo-out",
    config: DemoConfig = DemoConfig(),
    *,
    finetune_epochs: int = 3,
    finetune_lr: float = 1e-3,
    show_progress: bool = True,
    log=print,
) -> dict:
    """Run the whole pipeline in ``out_dir`` (replacing an earlier demo there); return its figures.

    An existing ``out_dir`` that is not empty and was not made by the demo is replaced (all of
    it deleted) only with ``config.overwrite``.
    """
    preset, steps, vocab_size, device, overwrite = config.preset, config.steps, config.vocab_size, config.device, config.overwrite
    corpus_bytes = int(config.corpus_mb * 1e6)
    started = time.perf_counter()
    out = Path(out_dir)
    prepare_demo_dir(out, overwrite)
    dev = pick_device(device)
    results: dict = {"stages": {}, "settings": {"preset": preset, "steps": steps, "vocab_size": vocab_size,
                                                  "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr}}

    def stage(name: str, t0: float) -> None:
        results["stages"][name] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    log("1/6 building the embedded corpus from the standard library's documentation")
    corpus = build_stdlib_corpus(out / "corpus.jsonl", max_bytes=corpus_bytes, heldout_path=out / "heldout.jsonl")
    results["corpus"] = corpus
    stage("corpus", t0)

    t0 = time.perf_counter()
    log("2/6 training the tokenizer and writing Arrow shards")
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
    log(f"3/6 pre-training the {preset} preset for {steps} steps")
    run = out / "pretrain"
    summary = pretrain(PretrainConfig(shards=str(out / "shards"), out=str(run), preset=preset, steps=steps,
                                      eval_every=max(1, steps // 4), ckpt_every=steps, device=device),
                       show_progress=show_progress)
    results["pretrain"] = {k: summary[k] for k in ("parameters", "tokens_per_s", "loss", "val", "kernels")}
    stage("pretrain", t0)

    t0 = time.perf_counter()
    log("4/6 language-model evaluation and a greedy sample")
    data = ShardDataset(out / "shards")
    model, checkpoint = model_from_checkpoint(run, dev)
    untrained = type(model)(checkpoint.config).to(dev)
    results["eval"] = {"untrained": evaluate_lm(untrained, data.val, device=dev),
                       "pretrained": evaluate_lm(model, data.val, device=dev)}
    tokenizer = tokenizer_for(checkpoint)
    results["sample"] = {"prompt": DEMO_PROMPT, "completion": greedy_sample(model, tokenizer, DEMO_PROMPT)}
    stage("lm-eval", t0)

    t0 = time.perf_counter()
    log("5/6 building a story-cloze task from the held-out documents")
    task_dir = out / "cloze"
    # Most examples go to the test split, so the comparison below has the statistical power to mean something.
    task = make_cloze([corpus["heldout_path"]], task_dir, ClozeConfig(context_sentences=2), split=(0.5, 0.1, 0.4))
    results["task"] = task["examples"]
    stage("make-task", t0)

    t0 = time.perf_counter()
    log("6/6 cloze accuracy: zero-shot, fine-tuned from scratch, fine-tuned after pre-training")
    test = task_dir / "test.jsonl"
    accuracy = {"chance": 0.5, "zero_shot": zero_shot_mcq(run, test, dev)["accuracy"]}
    # The paper's fine-tuning rate suits a 117M model over thousands of steps; this small model and
    # task take a larger one (same for both initialisations).
    for init in ("random", "pretrained"):
        finetune(FinetuneConfig(task="mcq", train=str(task_dir / "train.jsonl"), val=str(task_dir / "val.jsonl"),
                                from_run=str(run), out=str(out / f"finetune-{init}"), init=init,
                                epochs=finetune_epochs, lr=finetune_lr, batch_size=16, device=device),
                 show_progress=show_progress)
        accuracy[f"finetuned_{init}"] = evaluate_task(out / f"finetune-{init}", "mcq", test, dev)["accuracy"]
    results["cloze_accuracy"] = accuracy
    n_test = task["examples"]["test"]
    # Binomial standard error of each accuracy on the test split.
    results["cloze_stderr"] = {k: (v * (1 - v) / n_test) ** 0.5 for k, v in accuracy.items() if k != "chance"}
    stage("cloze", t0)
    results["seconds"] = round(time.perf_counter() - started, 1)
    return results
