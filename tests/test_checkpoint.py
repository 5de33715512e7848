"""Checkpoints: folder contents, hashes, pruning, loading, and clear errors for damaged ones."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import load_file

import support
from gpt1cli.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from gpt1cli.config import preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import file_hash
from gpt1cli.model.gpt import GPT
from gpt1cli.model.loading import model_from_checkpoint

FILES = {"model.safetensors", "checkpoint.json", "tokenizer.model", "trainer.json", "trainer.safetensors"}


# ---------------------------------------------------------------------------------------------
# What a run leaves


def test_run_directory_layout_and_pruning(assets):
    checkpoints = assets.run / "checkpoints"
    # ckpt-every 8 over 24 steps with --keep 2: steps 16 and 24 remain, latest is 24.
    folders = sorted(p.name for p in checkpoints.iterdir() if p.is_dir())
    assert folders == ["step_00000016", "step_00000024"]
    assert (checkpoints / "latest").read_text() == "step_00000024\n"
    pointers = {p.name for p in checkpoints.iterdir() if p.is_file()}
    assert pointers - {"best"} == {"latest"}, pointers  # no temporary or stray files
    if "best" in pointers:  # the lowest validation loss was at the last step
        assert (checkpoints / "best").read_text() == "step_00000024\n"
    for step in (16, 24):
        assert {p.name for p in (checkpoints / f"step_{step:08d}").iterdir()} == FILES
    assert (assets.run / "metrics.jsonl").is_file()


def test_checkpoint_metadata_matches_the_files(assets):
    folder = support.latest_folder(assets.run)
    meta = json.loads((folder / "checkpoint.json").read_text())
    manifest = support.read_manifest(assets.shards)
    assert meta["format"] == "gpt1-checkpoint" and meta["version"] == 1
    assert meta["step"] == support.RUN_STEPS
    assert meta["kind"] == "pretrain" and meta["task"] is None
    assert meta["weights_blake2b"] == file_hash(folder / "model.safetensors")
    assert meta.get("tokenizer_file", "tokenizer.model") == "tokenizer.model"
    assert meta["tokenizer_blake2b"] == file_hash(folder / "tokenizer.model") == manifest["tokenizer"]["blake2b"]
    assert (folder / "tokenizer.model").read_bytes() == assets.tokenizer.read_bytes()
    assert meta["model"] == preset("tiny", support.VOCAB, n_ctx=32).to_dict()
    val = meta["metrics"]["val"]
    assert val["loss"] > 0 and val["ppl"] == pytest.approx(2.718281828 ** val["loss"], rel=1e-6)
    last_eval = support.records(assets.run, "eval")[-1]
    assert val["loss"] == last_eval["val_loss"]

    trainer = json.loads((folder / "trainer.json").read_text())
    assert trainer["step"] == support.RUN_STEPS
    assert trainer["tensors_blake2b"] == file_hash(folder / "trainer.safetensors")
    assert trainer["config"]["steps"] == support.RUN_STEPS and trainer["config"]["batch_size"] == support.RUN_BATCH
    assert trainer["best_val"] <= val["loss"]
    assert [g["weight_decay"] for g in trainer["optimizer_groups"]] == [0.01, 0.0]


def test_weights_and_trainer_state_are_complete(assets):
    folder = support.latest_folder(assets.run)
    weights = load_file(str(folder / "model.safetensors"))
    model = GPT(preset("tiny", support.VOCAB, n_ctx=32))
    assert set(weights) == set(model.state_dict())
    assert not any(k.startswith("head") for k in weights)
    assert weights["tok_emb.weight"].shape == (support.VOCAB, 64)
    loaded, checkpoint = model_from_checkpoint(assets.run, torch.device("cpu"))
    assert not loaded.training
    assert checkpoint.path == folder and checkpoint.step == support.RUN_STEPS
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    # A trained model differs from a fresh one.
    assert not torch.equal(weights["tok_emb.weight"], model.state_dict()["tok_emb.weight"])

    trainer = load_file(str(folder / "trainer.safetensors"))
    for name, param in model.named_parameters():
        assert trainer[f"optim.{name}.exp_avg"].shape == param.shape
        assert trainer[f"optim.{name}.exp_avg_sq"].shape == param.shape
        assert float(trainer[f"optim.{name}.step"]) == support.RUN_STEPS


def test_save_checkpoint_keeps_the_newest(tmp_path, assets):
    model = GPT(preset("tiny", 300, n_ctx=16))
    for step in range(1, 6):
        final = save_checkpoint(tmp_path, step, model_state=model.state_dict(), config=model.config,
                                tokenizer_path=assets.tokenizer, keep=2)
        assert final == tmp_path / "checkpoints" / f"step_{step:08d}"
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert folders == ["step_00000004", "step_00000005"]
    assert resolve_checkpoint(tmp_path).name == "step_00000005"
    loaded = load_checkpoint(tmp_path / "checkpoints" / "step_00000004")
    assert loaded.step == 4 and loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict[name], tensor)
    # weights-only checkpoint: no trainer files, and resuming from it is refused
    assert not (tmp_path / "checkpoints" / "step_00000005" / "trainer.json").exists()
    with pytest.raises(Gpt1Error, match="weights only"):
        load_checkpoint(tmp_path, with_trainer=True)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoint_files_follow_the_umask(tmp_path, assets, umask):
    # safetensors writes its files 0600; every output follows the umask like any other tool's.
    model = GPT(preset("tiny", 300, n_ctx=16))
    previous = os.umask(umask)
    try:
        final = save_checkpoint(tmp_path, 1, model_state=model.state_dict(), config=model.config,
                                tokenizer_path=assets.tokenizer, trainer_tensors={"x": torch.zeros(2)},
                                trainer_meta={"note": 1})
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in final.iterdir()}
    assert set(modes) >= {"model.safetensors", "trainer.safetensors", "checkpoint.json"}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes
    assert stat.S_IMODE(final.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "checkpoints" / "latest").stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints


def _generate(run, capsys):
    return support.run_main(["generate", "--ckpt", run, "--prompt", "The dog", "--max-new-tokens", "3",
                             "--temperature", "0", "--device", "cpu"], capsys)


def test_flipped_bytes_in_weights_give_a_hash_mismatch(run_copy, capsys):
    weights = support.latest_folder(run_copy) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    for i in range(len(data) - 64, len(data) - 32):  # inside the tensor data, size unchanged
        data[i] ^= 0xFF
    weights.write_bytes(bytes(data))
    line = support.assert_one_error_line(_generate(run_copy, capsys), str(weights), "does not match the hash")
    assert "corrupt" in line


def test_truncated_weights_are_reported(run_copy, capsys):
    weights = support.latest_folder(run_copy) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    support.assert_one_error_line(_generate(run_copy, capsys), str(weights))


def test_truncated_checkpoint_json_is_reported(run_copy, capsys):
    meta = support.latest_folder(run_copy) / "checkpoint.json"
    meta.write_text(meta.read_text()[:40])
    support.assert_one_error_line(_generate(run_copy, capsys), str(meta), "not valid JSON")


def test_checkpoint_json_of_another_tool_is_reported(run_copy, capsys):
    meta = support.latest_folder(run_copy) / "checkpoint.json"
    meta.write_text(json.dumps({"format": "something-else"}))
    support.assert_one_error_line(_generate(run_copy, capsys), str(meta), "not a gpt1 checkpoint")


def test_missing_tokenizer_in_checkpoint_is_reported(run_copy, capsys):
    folder = support.latest_folder(run_copy)
    (folder / "tokenizer.model").unlink()
    support.assert_one_error_line(_generate(run_copy, capsys), str(folder), "tokenizer.model")


def test_latest_pointer_to_a_missing_folder_is_reported(run_copy, capsys):
    shutil.rmtree(support.latest_folder(run_copy))
    support.assert_one_error_line(_generate(run_copy, capsys), "step_00000024", "missing or incomplete")


def test_missing_checkpoint_path_is_reported(tmp_path, capsys):
    support.assert_one_error_line(_generate(tmp_path / "nope", capsys), "checkpoint not found", str(tmp_path / "nope"))
    support.assert_one_error_line(_generate(tmp_path, capsys), str(tmp_path), "neither a checkpoint")


def test_corrupt_trainer_state_stops_resume(run_copy, assets, capsys):
    trainer = support.latest_folder(run_copy) / "trainer.safetensors"
    data = bytearray(trainer.read_bytes())
    data[-10] ^= 0x55
    trainer.write_bytes(bytes(data))
    before = (run_copy / "metrics.jsonl").read_bytes()
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", run_copy, "--resume",
                               "--steps", "30", "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, str(trainer), "does not match the hash")
    assert (run_copy / "metrics.jsonl").read_bytes() == before
    assert (run_copy / "checkpoints" / "latest").read_text() == "step_00000024\n"
