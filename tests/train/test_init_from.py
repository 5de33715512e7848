"""`gpt1 pretrain --init-from RUN`: continued pre-training starts from a checkpoint's weights."""

from __future__ import annotations

import support
from gpt1cli.checkpoint import load_checkpoint

TINY_RUN = ["--steps", "2", "--batch-size", "2", "--eval-every", "2", "--eval-tokens", "64", "--log-every", "1", "--device", "cpu",
            "-q"]


def test_continues_from_the_weights_and_records_the_real_model(assets, tmp_path, capsys):
    start = load_checkpoint(assets.run)
    support.assert_ok(support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "more",
                                        "--init-from", assets.run, "--lr", "1e-12", "--warmup", "1", *TINY_RUN], capsys))
    more = load_checkpoint(tmp_path / "more")
    assert more.config.n_ctx == start.config.n_ctx and more.config.d_model == start.config.d_model
    assert max(float((more.state_dict[k] - v).abs().max()) for k, v in start.state_dict.items()) < 1e-6
    recorded = support.records(tmp_path / "more", "config")[0]["config"]
    assert recorded["init_from"] == str(assets.run) and recorded["n_ctx"] == start.config.n_ctx
    # a fresh run of the same preset starts elsewhere: the first losses differ
    support.assert_ok(support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "fresh",
                                        "--lr", "1e-12", "--warmup", "1", "--n-ctx", str(start.config.n_ctx),
                                        *TINY_RUN], capsys))
    assert support.train_losses(tmp_path / "more")[1] < support.train_losses(tmp_path / "fresh")[1] - 0.5
    # and it resumes like any run
    support.assert_ok(support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "more", "--resume",
                                        "--steps", "3", "--device", "cpu", "-q"], capsys))
    assert load_checkpoint(tmp_path / "more").step == 3


def test_refuses_a_shape_option_and_other_shards(assets, tmp_path, capsys):
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "x", "--init-from", assets.run,
                               "--n-ctx", "8", *TINY_RUN], capsys)
    support.assert_one_error_line(result, "--n-ctx shapes the model, which --init-from")
    other = tmp_path / "other"
    support.assert_ok(support.run_main(["tokenize", assets.corpus, "--out", other, "--vocab-size", "320", "--quiet"],
                                       capsys))
    result = support.run_main(["pretrain", "--shards", other, "--out", tmp_path / "y", "--init-from", assets.run,
                               *TINY_RUN], capsys)
    support.assert_one_error_line(result, "was made with a different tokenizer than --init-from")
    assert not (tmp_path / "y" / "checkpoints").exists()
