"""The Python API (`gpt1cli.api`) gives what the command line gives, with the same defaults."""

from __future__ import annotations

import json

import pytest

import support
from gpt1cli import api

PROMPT = "The dog"


def _cli_generate(assets, capsys, *extra) -> str:
    result = support.assert_ok(support.run_main(["generate", "--ckpt", assets.run, "--prompt", PROMPT, "--device", "cpu",
                                                 "--max-new-tokens", "12", *extra], capsys))
    assert result.out.startswith(PROMPT)
    return result.out[len(PROMPT):].removesuffix("\n")


def test_generate_defaults_match_the_command(assets, capsys):
    model, tokenizer = api.load(assets.run, device="cpu")
    # No temperature given on either side: both sample at the command's default (0.8) with seed 0.
    sampled = api.generate(model, tokenizer, PROMPT, max_new_tokens=12)
    assert sampled == _cli_generate(assets, capsys)
    assert api.DecodeSettings().temperature == 0.8
    greedy = api.generate(model, tokenizer, PROMPT, max_new_tokens=12, temperature=0.0)
    assert greedy == _cli_generate(assets, capsys, "--temperature", "0")
    # a different seed samples something else (the comparison above is not between two greedy runs)
    others = {api.generate(model, tokenizer, PROMPT, max_new_tokens=12, seed=s) for s in range(1, 6)}
    assert len(others | {sampled}) > 1


def test_beams_come_back_best_first(trained):
    model, tokenizer = trained
    beams = api.generate(model, tokenizer, PROMPT, beams=3, max_new_tokens=6)
    assert len(beams) == 3
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)


def test_evaluate_lm_matches_the_command(assets, tmp_path, capsys):
    figures = api.evaluate_lm(assets.run, shards=assets.shards, device="cpu")
    support.assert_ok(support.run_main(["eval", "--ckpt", assets.run, "--shards", assets.shards, "--device", "cpu",
                                        "--json", tmp_path / "lm.json", "-q"], capsys))
    cli = json.loads((tmp_path / "lm.json").read_text())
    assert figures["loss"] == pytest.approx(cli["loss"], rel=1e-9)
    assert figures["ppl"] == pytest.approx(cli["ppl"], rel=1e-9) and figures["ppl"] > 1


def test_pretrain_keywords_take_the_command_defaults(assets, tmp_path, capsys):
    api.pretrain(shards=str(assets.shards), out=str(tmp_path / "api"), preset="tiny", steps=2, n_ctx=16,
                 batch_size=2, device="cpu", show_progress=False)
    support.assert_ok(support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "cli", "--preset",
                                        "tiny", "--steps", "2", "--n-ctx", "16", "--batch-size", "2", "--device", "cpu",
                                        "-q"], capsys))
    saved = [support.records(tmp_path / name, "config")[0]["config"] for name in ("api", "cli")]
    assert {**saved[0], "out": None} == {**saved[1], "out": None}
    assert support.train_losses(tmp_path / "api") == support.train_losses(tmp_path / "cli")


def test_bad_settings_raise_the_commands_error(assets, tmp_path):
    with pytest.raises(api.Gpt1Error, match="--lr"):
        api.pretrain(shards=str(assets.shards), out=str(tmp_path / "x"), lr=float("nan"), show_progress=False)
    with pytest.raises(TypeError, match="not both"):
        api.pretrain(api.PretrainConfig(shards=str(assets.shards), out=str(tmp_path / "x")), steps=3)


def test_lm_eval_refuses_shards_of_another_tokenizer_alike_from_python_and_the_command(assets, tmp_path, capsys):
    other = tmp_path / "other"
    support.assert_ok(support.run_main(["tokenize", assets.corpus, "--out", other, "--vocab-size", "320", "--quiet"],
                                       capsys))
    message = "was made with a different tokenizer than"
    with pytest.raises(api.Gpt1Error, match=f"{message} .*: re-tokenize with its tokenizer.model"):
        api.evaluate_lm(assets.run, shards=other, device="cpu")
    result = support.run_main(["eval", "--ckpt", assets.run, "--shards", other, "--device", "cpu"], capsys)
    support.assert_one_error_line(result, message, "re-tokenize with its tokenizer.model")
