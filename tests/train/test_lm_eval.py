"""`gpt1 eval --text` streams the corpus: same figures as evaluating it whole, --max-tokens honoured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpt1cli.model.loading import model_from_checkpoint
from gpt1cli.tokenizer import load_tokenizer
from gpt1cli.train.lm_eval import lm_text_eval, stream_windows, window_losses

import support


def whole_file_reference(assets, text_file, max_tokens=None):
    """The old way: the whole file's tokens in memory, windows of n_ctx + 1 every n_ctx tokens."""
    model, checkpoint = model_from_checkpoint(assets.run, torch.device("cpu"))
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    tokens, n_bytes = [], 0
    for doc in assets.docs:
        for line in doc:
            tokens.extend(tokenizer.encode(line))
            n_bytes += len(line.encode("utf-8")) + 1
        tokens.append(tokenizer.eos_id)
    tokens_per_byte = len(tokens) / n_bytes
    total = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    n_ctx = model.config.n_ctx
    windows = [np.asarray(tokens[s:min(s + n_ctx + 1, total)]) for s in range(0, total - 1, n_ctx)]
    loss, count = window_losses(model, [w for w in windows if len(w) >= 2], device=torch.device("cpu"))
    return loss / count, count, tokens_per_byte


def test_streamed_text_eval_matches_the_whole_file(assets):
    result = lm_text_eval(assets.run, assets.corpus, torch.device("cpu"))
    loss, count, tokens_per_byte = whole_file_reference(assets, assets.corpus)
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    assert result["bpb"] == pytest.approx(loss / math.log(2) * tokens_per_byte, rel=2e-3)


def test_max_tokens_stops_the_stream(assets):
    result = lm_text_eval(assets.run, assets.corpus, torch.device("cpu"), max_tokens=100)
    loss, count, _ = whole_file_reference(assets, assets.corpus, max_tokens=100)
    assert result["tokens"] == count == 100
    assert result["loss"] == pytest.approx(loss, rel=1e-6)


def test_stream_windows_are_the_shard_windows():
    tokens = np.arange(23)
    chunks = [tokens[:5], tokens[5:6], tokens[6:17], tokens[17:]]
    windows = [w.tolist() for w in stream_windows(iter(chunks), n_ctx=4)]
    assert windows == [list(range(s, min(s + 5, 23))) for s in range(0, 22, 4)]
    assert [w.tolist() for w in stream_windows(iter([np.arange(1)]), n_ctx=4)] == []


def test_eval_text_cli_honours_max_tokens(assets, capsys):
    result = support.run_main(["eval", "--ckpt", str(assets.run), "--text", str(assets.corpus), "--max-tokens", "64",
                               "--json", "-", "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    import json

    assert json.loads(result.out)["tokens"] == 64
