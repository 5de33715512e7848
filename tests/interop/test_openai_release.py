"""`gpt1 convert --from-openai`: the original release's layout, written here from a random model of ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import support
from support import random_gpt, tiny_config, write_release_tokenizer, write_release_weights
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.model.loading import model_from_checkpoint
from gpt1cli.tokenizer import load_tokenizer
from gpt1cli.tokenizer.openai_bpe import OpenAIBPETokenizer


@pytest.fixture(scope="module")
def source(toy_bpe, tmp_path_factory):
    """A release-layout folder and the model of ours it was written from."""
    vocab, merges = toy_bpe
    folder = write_release_tokenizer(tmp_path_factory.mktemp("release"), vocab, merges)
    model = random_gpt(tiny_config(len(vocab) + 5), seed=11)
    write_release_weights(folder, model, n_vocab=len(vocab))
    return folder, model, len(vocab)


def convert(argv, capsys):
    return support.run_main(["convert", *argv], capsys)


def damaged_copy(source, tmp_path):
    import shutil

    return shutil.copytree(source[0], tmp_path / "release")


def test_release_converts_to_the_same_model(source, tmp_path, capsys):
    folder, reference, n_vocab = source
    assert len(list(folder.glob("params_*.npy"))) == 10
    result = convert(["--from-openai", folder, "--out", tmp_path / "run", "--n-head", "2"], capsys)
    assert result.code == 0, result.err
    assert "5 token rows added" in result.out
    model, checkpoint = model_from_checkpoint(tmp_path / "run", torch.device("cpu"))
    config = checkpoint.config
    assert (config.arch, config.n_ctx, config.n_layer, config.n_head, config.d_model, config.d_ff) == ("gpt1", 24, 2, 2, 32, 128)
    assert config.vocab_size == n_vocab + 5
    ids = torch.randint(0, n_vocab, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference.logits(reference(ids))[..., :n_vocab]
        got = model.logits(model(ids))[..., :n_vocab]
    assert torch.equal(got, expected)  # the same float32 values, only moved: no rounding anywhere
    ours = reference.state_dict()
    for name, tensor in checkpoint.state_dict.items():
        want = ours[name][:n_vocab] if name == "tok_emb.weight" else ours[name]
        got_tensor = tensor[:n_vocab] if name == "tok_emb.weight" else tensor
        assert torch.equal(got_tensor, want), name
    added = checkpoint.state_dict["tok_emb.weight"][n_vocab:]
    assert added.shape == (5, 32) and 0.005 < added.std().item() < 0.05
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    assert tokenizer.kind == "openai-bpe"
    assert tokenizer.to_bytes() == OpenAIBPETokenizer.from_release_dir(folder).to_bytes()
    assert [tokenizer.start_id, tokenizer.delim_id, tokenizer.extract_id] == [n_vocab, n_vocab + 1, n_vocab + 2]
    assert checkpoint.meta["source"]["format"] == "openai-release" and checkpoint.task is None


def test_added_rows_follow_the_seed(source, tmp_path, capsys):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert convert(["--from-openai", source[0], "--out", tmp_path / name, "--n-head", "2", "--seed", str(seed)], capsys).code == 0
    rows = {n: load_checkpoint(tmp_path / n).state_dict["tok_emb.weight"][source[2]:] for n in "abc"}
    assert torch.equal(rows["a"], rows["b"]) and not torch.equal(rows["a"], rows["c"])


def test_imported_run_generates_text(source, tmp_path, capsys):
    assert convert(["--from-openai", source[0], "--out", tmp_path / "run", "--n-head", "2"], capsys).code == 0
    result = support.run_main(["generate", "--ckpt", tmp_path / "run", "--prompt", "The dog sat", "--max-new-tokens", "6",
                               "--temperature", "0", "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    assert result.out.startswith("The dog sat")


def test_missing_files_are_named(source, tmp_path, capsys):
    out = tmp_path / "run"
    support.assert_one_error_line(convert(["--from-openai", tmp_path / "nowhere", "--out", out], capsys), "not found")
    for name, expect in (("params_shapes.json", "params_shapes.json"), ("encoder_bpe_40000.json", "encoder"),
                         ("vocab_40000.bpe", "merges"), ("params_0.npy", "params_0.npy")):
        folder = damaged_copy(source, tmp_path / name)
        (folder / name).unlink()
        support.assert_one_error_line(convert(["--from-openai", folder, "--out", out, "--n-head", "2"], capsys), expect)
    support.assert_one_error_line(convert(["--from-openai", source[0]], capsys), "needs --out")
    assert not out.exists()


def test_shape_mismatches_are_listed_and_nothing_is_written(source, tmp_path, capsys):
    folder = damaged_copy(source, tmp_path)
    shapes = json.loads((folder / "params_shapes.json").read_text())
    per_layer = 12
    shapes[2 + per_layer + 0] = [1, 32, 64]  # h1/attn/c_attn/w
    shapes[2 + 5] = [30]  # h0/ln_1/b
    (folder / "params_shapes.json").write_text(json.dumps(shapes))
    result = convert(["--from-openai", folder, "--out", tmp_path / "run", "--n-head", "2"], capsys)
    line = support.assert_one_error_line(result, "h1/attn/c_attn/w is (1, 32, 64) where (1, 32, 96) fits",
                                         "h0/ln_1/b is (30,) where (32,) fits", "values but params_shapes.json needs")
    assert "nothing was written" in line
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]


def test_other_misfits(source, tmp_path, capsys):
    folder = damaged_copy(source, tmp_path)
    support.assert_one_error_line(convert(["--from-openai", folder, "--out", tmp_path / "run"], capsys),
                                  "d_model 32 is not a multiple of 64", "--n-head")
    support.assert_one_error_line(convert(["--from-openai", folder, "--out", tmp_path / "run", "--n-head", "5"], capsys),
                                  "--n-head 5 does not divide d_model 32")
    encoder = json.loads((folder / "encoder_bpe_40000.json").read_text())
    encoder["zzzz</w>"] = len(encoder)
    (folder / "encoder_bpe_40000.json").write_text(json.dumps(encoder))
    support.assert_one_error_line(convert(["--from-openai", folder, "--out", tmp_path / "run", "--n-head", "2"], capsys),
                                  f"has {len(encoder) - 1} rows but the encoder {len(encoder)} tokens")
    np.save(folder / "params_3.npy", np.arange(4, dtype=np.int64))
    support.assert_one_error_line(convert(["--from-openai", folder, "--out", tmp_path / "run", "--n-head", "2"], capsys),
                                  "params_3.npy holds int64 values")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    support.assert_one_error_line(convert(["--from-openai", source[0], "--out", tmp_path / "run", "--n-head", "2"], capsys),
                                  "not empty")


@pytest.mark.parametrize("arch, attention", [("gpt1", "dense"), ("gpt2", "dense"), ("gpt1", "alternating")])
def test_layout_knows_every_tensor_of_our_model(arch, attention):
    from gpt1cli.interop.layout import name_pairs, our_shapes
    from gpt1cli.model.gpt import GPT

    config = tiny_config(50, arch, d_ff=72, attention=attention, window=4)
    real = {name: tuple(t.shape) for name, t in GPT(config).state_dict().items()}
    assert our_shapes(config) == real
    assert sorted(ours for ours, _, _ in name_pairs(config)) == sorted(real)
