"""Data-pipeline benchmarks on generated text: tokenizer encoding and the shard reader.

Everything is made at run time in a temporary directory: a Zipf-distributed synthetic
vocabulary gives text with the skewed word frequencies BPE sees in real corpora, a
SentencePiece BPE tokenizer is trained on it, and ``tokenize_corpus`` writes real shards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gpt1cli.data.pipeline import tokenize_corpus
from gpt1cli.data.shards import ShardDataset, WindowSampler
from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer, train_sentencepiece

from .env import usable_cpus
from .harness import Settings, error_text, guarded, speedup, summarize

WINDOW = 513  # GPT-1's context of 512 plus the shifted target
BATCH = 32

_SYLLABLES = ("ka ri to ne sa lu mo vi pe da te gor ban el is on ar th st qu ing ed er ly "
              "pro con ex un re pre tion ment ous ful less").split()


def _sizes(settings: Settings) -> dict:
    if settings.quick:
        return dict(text_bytes=200_000, vocab=512, train_lines=2000, repeats=2, shard_tokens=1 << 12,
                    batches=10, rounds=3, ratio_bytes=2_000_000)
    return dict(text_bytes=4_000_000, vocab=2000, train_lines=20000, repeats=3, shard_tokens=1 << 17,
                batches=50, rounds=10, ratio_bytes=40_000_000)


def generated_documents(n_bytes: int, seed: int = 0) -> list[list[str]]:
    """Documents (lists of lines) of pseudo-words with Zipf frequencies, about ``n_bytes`` in all."""
    rng = np.random.default_rng(seed)
    n_words = 4000
    lengths = rng.integers(1, 5, size=n_words)
    words = ["".join(rng.choice(_SYLLABLES, size=int(n))) for n in lengths]
    weights = 1.0 / (np.arange(n_words) + 2.7)
    weights /= weights.sum()
    draws = rng.choice(n_words, size=n_bytes // 5 + 64, p=weights)
    sentence_lengths = rng.integers(4, 22, size=len(draws) // 4 + 1)
    documents, lines, line, used, position = [], [], [], 0, 0
    for length in sentence_lengths:
        if used >= n_bytes or position + length > len(draws):
            break
        chunk = [words[i] for i in draws[position:position + length]]
        position += int(length)
        sentence = " ".join(chunk).capitalize() + rng.choice([".", ".", ".", "?", "!", ","])
        line.append(sentence)
        if rng.random() < 0.35:
            text = " ".join(line)
            lines.append(text)
            used += len(text) + 1
            line = []
            if rng.random() < 0.2:
                documents.append(lines)
                lines = []
    if line:
        lines.append(" ".join(line))
    if lines:
        documents.append(lines)
    return documents


def _encode_case(tokenizer: SentencePieceTokenizer, lines: list[str], sizes: dict, settings: Settings) -> dict:
    n_bytes = sum(len(line.encode("utf-8")) + 1 for line in lines)
    cpus = usable_cpus()
    case = {"bench": "tokenizer-encode", "text_bytes": n_bytes, "lines": len(lines),
            "vocab_size": tokenizer.vocab_size, "baseline": "1-thread", "impls": {}}
    for name, threads in (("1-thread", 1), ("all-cores", cpus)):
        def run(threads=threads) -> dict:
            tokenizer.encode_batch(lines[:200], num_threads=threads)  # warm-up
            samples = []
            for _ in range(sizes["repeats"]):
                start = time.perf_counter()
                tokenizer.encode_batch(lines, num_threads=threads)
                samples.append((time.perf_counter() - start) * 1e3)
            record = summarize(samples, "perf_counter")
            record["threads"] = threads
            record["mb_per_s"] = n_bytes / 1e6 / (record["median_ms"] / 1e3)
            return record

        case["impls"][name] = guarded(settings, run)
        settings.log(f"data encode {name}: {_brief(case['impls'][name], 'mb_per_s', 'MB/s')}")
    base = case["impls"]["1-thread"]
    for record in case["impls"].values():
        if "median_ms" in record:
            record["speedup"] = speedup(base, record)
    return case


def _reader_case(shard_dir: Path, sizes: dict, settings: Settings) -> dict:
    data = ShardDataset(shard_dir)
    split = data.train
    case = {"bench": "shard-reader", "tokens": split.tokens, "shards": len(split.arrays), "window": WINDOW,
            "batch_size": BATCH, "batches_per_sample": sizes["batches"], "baseline": "mmap-windows", "impls": {}}

    def run() -> dict:
        sampler = WindowSampler(split, WINDOW - 1, seed=0)
        batches = sizes["batches"]
        torch.from_numpy(sampler.windows(sampler.starts(0, BATCH)))  # warm-up: touch the maps
        samples = []
        for round_ in range(sizes["rounds"]):
            start = time.perf_counter()
            for step in range(batches):
                torch.from_numpy(sampler.windows(sampler.starts(1 + round_ * batches + step, BATCH)))
            samples.append((time.perf_counter() - start) * 1e3)
        record = summarize(samples, "perf_counter", batches_per_sample=batches)
        record["tokens_per_s"] = batches * BATCH * WINDOW / (record["median_ms"] / 1e3)
        record["speedup"] = 1.0
        return record

    case["impls"]["mmap-windows"] = guarded(settings, run)
    settings.log(f"data shard reader: {_brief(case['impls']['mmap-windows'], 'tokens_per_s', 'tokens/s')}")
    return case


def _tokenize_vs_raw_encode(root: Path, tokenizer_path: Path, sizes: dict) -> dict:
    """`tokenize_corpus` end to end against SentencePiece's own batch encode of the same lines.

    Both run on all cores over one generated corpus, alternately, ``repeats`` times; the fastest
    of each is kept (the least disturbed by other load), and the ratio of the two rates recorded.
    """
    corpus = root / "ratio-corpus.txt"
    n_bytes = write_corpus(corpus, sizes["ratio_bytes"])
    threads = usable_cpus()
    with open(corpus, encoding="utf-8") as handle:
        lines = [line for line in handle.read().split("\n") if line.strip()]
    tokenizer = SentencePieceTokenizer(tokenizer_path)
    raw, end_to_end = [], []
    for _ in range(sizes["repeats"]):
        start = time.perf_counter()
        tokenizer.encode_batch(lines, num_threads=threads)
        raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        tokenize_corpus([str(corpus)], root / "ratio-shards", tokenizer=tokenizer_path, num_threads=threads,
                        overwrite=True, show_progress=False)
        end_to_end.append(time.perf_counter() - start)
    corpus.unlink()
    raw_rate, tokenize_rate = n_bytes / 1e6 / min(raw), n_bytes / 1e6 / min(end_to_end)
    return {"text_bytes": n_bytes, "threads": threads, "repeats": sizes["repeats"],
            "raw_encode_mb_per_s": raw_rate, "tokenize_mb_per_s": tokenize_rate, "ratio": tokenize_rate / raw_rate,
            "raw_seconds": raw, "tokenize_seconds": end_to_end}


def write_corpus(path: Path, n_bytes: int, block_bytes: int = 32_000_000) -> int:
    """Stream about ``n_bytes`` of generated documents to ``path`` (blocks of fresh text, never all in memory)."""
    written, seed = 0, 1
    with open(path, "w", encoding="utf-8") as handle:
        while written < n_bytes:
            block = "\n\n".join("\n".join(document) for document in generated_documents(min(block_bytes, n_bytes - written), seed))
            handle.write(block + "\n\n")
            written += len(block.encode("utf-8")) + 2
            seed += 1
    return written


def _tokenize_memory_case(root: Path, settings: Settings) -> dict:
    """Peak RSS of a whole `gpt1 tokenize` (training + encoding) on a generated corpus, in a child process."""
    n_bytes = int((5 if settings.quick else settings.corpus_mb) * 1e6)
    case = {"bench": "tokenize-memory", "baseline": "gpt1-tokenize", "impls": {}}

    def run() -> dict:
        corpus = root / "memory-corpus.txt"
        size = write_corpus(corpus, n_bytes)
        command = [sys.executable, "-m", "gpt1cli", "tokenize", str(corpus), "--out", str(root / "memory-shards"),
                   "--vocab-size", "8000", "--quiet", "--overwrite"]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        stderr = child.stderr.read().decode(errors="replace")
        child.stderr.close()
        corpus.unlink()
        if os.waitstatus_to_exitcode(status) != 0:
            return {"error": f"gpt1 tokenize failed: {stderr.strip().splitlines()[-1] if stderr.strip() else status}"}
        return {"corpus_bytes": size, "seconds": seconds, "mb_per_s": size / 1e6 / seconds,
                "peak_rss_mb": usage.ru_maxrss / 1024, "speedup": 1.0}  # ru_maxrss is in KiB on Linux

    case["impls"]["gpt1-tokenize"] = guarded(settings, run)
    settings.log(f"data tokenize peak RSS: {_brief(case['impls']['gpt1-tokenize'], 'peak_rss_mb', 'MB')}")
    return case


def _brief(record: dict, key: str, unit: str) -> str:
    if key in record:
        return f"{record[key]:,.1f} {unit}"
    return record.get("error") or record.get("skipped") or "?"


def run_data(settings: Settings) -> dict:
    """Tokenizer encode MB/s (1 thread, all cores; and `tokenize` end to end against it), shard-reader
    tokens/s, and `gpt1 tokenize` peak RSS."""
    sizes = _sizes(settings)
    cases: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpt1-bench-data-") as tmp:
        root = Path(tmp)
        documents = generated_documents(sizes["text_bytes"])
        lines = [line for document in documents for line in document]
        corpus = root / "corpus.txt"
        corpus.write_text("\n\n".join("\n".join(document) for document in documents) + "\n", encoding="utf-8")
        tokenizer_path = root / "tokenizer.model"
        try:
            tokenizer = train_sentencepiece(iter(lines), tokenizer_path, sizes["vocab"],
                                            max_sentences=sizes["train_lines"], num_threads=usable_cpus())
        except Exception as exc:  # recorded like any other failure
            return {"error": f"tokenizer training failed: {error_text(exc)}", "cases": []}
        cases.append(_encode_case(tokenizer, lines, sizes, settings))
        shard_dir = root / "shards"
        try:
            tokenize_corpus([str(corpus)], shard_dir, tokenizer=tokenizer_path, tokens_per_shard=sizes["shard_tokens"],
                            val_fraction=0.01, num_threads=usable_cpus(), show_progress=False)
        except Exception as exc:
            cases.append({"bench": "shard-reader", "baseline": "mmap-windows",
                          "impls": {"mmap-windows": {"error": f"writing shards failed: {error_text(exc)}"}}})
        else:
            cases.append(_reader_case(shard_dir, sizes, settings))
        cases.append(_tokenize_memory_case(root, settings))
        # Last: its raw encode holds a big corpus in this process, and a child's peak RSS (the memory
        # case) would start from this process's.
        ratio = guarded(settings, lambda: _tokenize_vs_raw_encode(root, tokenizer_path, sizes))
        cases[0]["tokenize_vs_raw_encode"] = ratio
        if "ratio" in ratio:
            settings.log(f"data tokenize vs raw encode ({ratio['text_bytes'] / 1e6:.0f} MB, {ratio['threads']} threads): "
                         f"{ratio['tokenize_mb_per_s']:.2f} vs {ratio['raw_encode_mb_per_s']:.2f} MB/s, "
                         f"ratio {ratio['ratio']:.2f}")
        else:
            settings.log(f"data tokenize vs raw encode: {_brief(ratio, 'ratio', '')}")
    return {"cases": cases}
