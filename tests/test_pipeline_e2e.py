"""The pipeline end to end: tokenize -> pretrain -> generate, as real processes and in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

import support
from gpt1cli.config import count_parameters, preset
from gpt1cli.fileio import file_hash
from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer


def finite(*values):
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------
# As separate processes: `python -m gpt1cli ...`


def test_tokenize_pretrain_generate_as_processes(tmp_path):
    docs = support.make_documents(80, seed=99)
    corpus = support.write_jsonl(tmp_path / "corpus" / "docs.jsonl", docs)
    shards, run = tmp_path / "shards", tmp_path / "run"

    tok = support.run_subprocess(["tokenize", corpus, "--out", shards, "--vocab-size", "360",
                                  "--tokens-per-shard", "1000", "--val-fraction", "0.15", "--threads", "1", "-q"])
    assert tok.code == 0, tok.err
    assert "Traceback" not in tok.err
    manifest = support.read_manifest(shards)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert manifest["tokenizer"]["vocab_size"] == 360
    assert manifest["tokenizer"]["blake2b"] == file_hash(shards / "tokenizer.model")
    assert manifest["dtype"] == "uint16"
    assert train["documents"] + val["documents"] == 80 and val["documents"] > 0
    assert len(train["shards"]) == math.ceil(train["tokens"] / 1000)
    # the summary table printed the same numbers
    assert f"{train['tokens']:,}" in tok.out and f"{val['tokens']:,}" in tok.out
    assert "vocabulary 360 (uint16)" in tok.out

    pre = support.run_subprocess(["pretrain", "--shards", shards, "--out", run, "--n-ctx", "32", "--steps", "6",
                                  "--batch-size", "4", "--eval-every", "3", "--eval-tokens", "200", "--log-every", "2",
                                  "--device", "cpu", "-q"])
    assert pre.code == 0, pre.err
    assert "Traceback" not in pre.err
    assert "trained to step 6 of 6" in " ".join(pre.out.split())
    folder = run / "checkpoints" / "step_00000006"
    assert (run / "checkpoints" / "latest").read_text().strip() == folder.name
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "checkpoint.json", "tokenizer.model",
                                                  "trainer.json", "trainer.safetensors"}
    assert [r["step"] for r in support.records(run, "train")] == [2, 4, 6]
    assert [r["step"] for r in support.records(run, "eval")] == [3, 6]

    gen = support.run_subprocess(["generate", "--ckpt", run, "--prompt", "The old farmer", "--max-new-tokens", "8",
                                  "--temperature", "0", "--device", "cpu"])
    assert gen.code == 0, gen.err
    assert gen.err == ""
    assert gen.out.startswith("The old farmer") and gen.out.endswith("\n")
    assert len(gen.out.strip()) > len("The old farmer")


# ---------------------------------------------------------------------------------------------
# The shared session run (24 steps on the session shards)


def test_metrics_log_has_config_train_and_eval_records(assets):
    metrics = support.read_metrics(assets.run)
    assert metrics[0]["kind"] == "config"
    config = metrics[0]
    assert config["model"] == preset("tiny", support.VOCAB, n_ctx=32).to_dict()
    assert config["parameters"] == count_parameters(preset("tiny", support.VOCAB, n_ctx=32))
    assert config["device"] == "cpu" and config["kernels"].startswith("torch")
    assert config["config"]["steps"] == support.RUN_STEPS and config["config"]["warmup"] == 2

    train = support.records(assets.run, "train")
    assert [r["step"] for r in train] == list(range(1, support.RUN_STEPS + 1))
    for r in train:
        assert finite(r["loss"], r["lr"], r["grad_norm"]) and r["loss"] > 0 and r["grad_norm"] > 0
    # warm-up over 2 steps to the peak, then cosine decay towards 0
    lrs = [r["lr"] for r in train]
    assert lrs[0] == pytest.approx(1.5e-3) and lrs[1] == pytest.approx(3e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] < 1e-4

    evals = support.records(assets.run, "eval")
    assert [r["step"] for r in evals] == [8, 16, 24]
    manifest = support.read_manifest(assets.shards)
    val = manifest["splits"]["val"]
    for r in evals:
        assert finite(r["val_loss"], r["val_ppl"], r["val_bpb"])
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]), rel=1e-9)
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) * val["tokens"] / val["text_bytes"], rel=1e-9)
        assert r["val_tokens"] == min(512, val["tokens"] - 1)


def test_loss_goes_down_on_a_repetitive_corpus(assets):
    losses = [r["loss"] for r in support.records(assets.run, "train")]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first > math.log(support.VOCAB) - 0.3  # starts near chance
    assert last < first - 0.8, f"training loss went {first:.3f} -> {last:.3f}"
    val = [r["val_loss"] for r in support.records(assets.run, "eval")]
    assert val[0] > val[-1] and val[-1] < math.log(support.VOCAB) - 1.0


# ---------------------------------------------------------------------------------------------
# Other pretrain settings, in-process


def _pretrain(capsys, assets, out, *extra):
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", out, "--n-ctx", "32", "--batch-size",
                               "4", "--log-every", "1", "--eval-every", "100", "--eval-tokens", "64", "--device", "cpu",
                               "-q", *extra], capsys)
    assert result.code == 0, result.err
    return result


def test_gpt2_architecture_run(tmp_path, assets, capsys):
    result = _pretrain(capsys, assets, tmp_path / "run", "--arch", "gpt2", "--steps", "3")
    assert "trained to step 3 of 3" in " ".join(result.out.split())
    folder = tmp_path / "run" / "checkpoints" / "step_00000003"
    meta = json.loads((folder / "checkpoint.json").read_text())
    assert meta["model"]["arch"] == "gpt2"
    weights = load_file(str(folder / "model.safetensors"))
    assert weights["ln_f.weight"].shape == (64,)
    assert sum(t.numel() for t in weights.values()) == count_parameters(preset("tiny", support.VOCAB, n_ctx=32, arch="gpt2"))


def test_gradient_accumulation_matches_the_full_batch(tmp_path, assets, capsys):
    common = ["--steps", "3", "--dropout", "0", "--seed", "5"]
    _pretrain(capsys, assets, tmp_path / "full", *common)
    _pretrain(capsys, assets, tmp_path / "accum", *common, "--grad-accum", "2")
    full = [r["loss"] for r in support.records(tmp_path / "full", "train")]
    accum = [r["loss"] for r in support.records(tmp_path / "accum", "train")]
    assert accum == pytest.approx(full, rel=1e-5)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_00000003" / "model.safetensors"))
    b = load_file(str(tmp_path / "accum" / "checkpoints" / "step_00000003" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_a_different_seed_gives_a_different_run(tmp_path, assets, capsys):
    _pretrain(capsys, assets, tmp_path / "s1", "--steps", "2", "--seed", "1")
    _pretrain(capsys, assets, tmp_path / "s2", "--steps", "2", "--seed", "2")
    _pretrain(capsys, assets, tmp_path / "s1b", "--steps", "2", "--seed", "1")
    loss = {name: [r["loss"] for r in support.records(tmp_path / name, "train")] for name in ("s1", "s2", "s1b")}
    assert loss["s1"] == loss["s1b"]
    assert loss["s1"] != loss["s2"]


def test_checkpoint_tokenizer_decodes_the_training_data(assets):
    """The tokenizer copied into the checkpoint turns the shards back into the corpus' documents."""
    folder = assets.run / "checkpoints" / "step_00000024"
    tok = SentencePieceTokenizer(folder / "tokenizer.model")
    stream = support.split_tokens(assets.shards, "train").tolist()
    documents = {" ".join(lines) for lines in assets.docs}
    start, decoded = 0, []
    for _ in range(5):
        end = stream.index(tok.eos_id, start)
        decoded.append(tok.decode(stream[start:end]))
        start = end + 1
    assert all(text in documents for text in decoded), decoded[:2]
    assert len(set(decoded)) == 5
