"""Training-side hardening: interrupts, one writer per run, checkpoint trust, absurd sizes, bad
numbers, resume semantics, unusable output directories, and kills while a step is re-written."""

from __future__ import annotations

import json
import math
import re
import signal
import time
from pathlib import Path

import pytest
import torch

import support
from gpt1cli.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from gpt1cli.config import ModelConfig, count_parameters, preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.fileio import file_hash
from gpt1cli.model.gpt import GPT
from gpt1cli.train.memory import estimate_memory, flops_per_token
from gpt1cli.train.metrics_log import read_records
from gpt1cli.train.pretrain import PretrainConfig, pretrain
from gpt1cli.verify import verify

# The shared run: tiny preset, n_ctx 32, 24 steps of 4 sequences, lr 3e-3, seed 0.
SHORT = ["--n-ctx", "32", "--steps", "2", "--batch-size", "2", "--eval-tokens", "64", "--device", "cpu", "-q"]


def pretrain_cli(capsys, shards, out, *extra):
    return support.run_main(["pretrain", "--shards", shards, "--out", out, *extra], capsys)


def config(shards, out, **changes) -> PretrainConfig:
    settings = dict(shards=str(shards), out=str(out), n_ctx=32, steps=4, batch_size=2, eval_every=100, eval_tokens=64,
                    ckpt_every=100, log_every=1, device="cpu")
    settings.update(changes)
    return PretrainConfig(**settings)


# ---------------------------------------------------------------------------------------------
# 1. Interrupts say what they leave, and exit 130


def test_ctrl_c_while_the_model_is_built_exits_130_with_no_checkpoint(assets, tmp_path, capsys, monkeypatch):
    def interrupted(self, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(GPT, "__init__", interrupted)
    out = tmp_path / "runs" / "new" / "run"
    result = pretrain_cli(capsys, assets.shards, out, *SHORT)
    assert result.code == 130, result.err
    assert result.err_lines == ["interrupted: no checkpoint written"]
    assert list(tmp_path.iterdir()) == []  # the directories it created for the lock are gone again


def test_a_second_sigint_in_the_loop_exits_130_naming_the_last_checkpoint(assets, tmp_path):
    run = tmp_path / "run"
    # A step of 256 sequences takes over a second; both signals land early in step 3 (the first
    # while step 2's checkpoint is written or just after, when the loop has already looked for it).
    with support.reaped(support.start_cli("pretrain", "--shards", assets.shards, "--out", run, "--steps", "1000",
                                          "--batch-size", "256", "--ckpt-every", "1", "--log-every", "1",
                                          "--eval-every", "1000", "-q", text=True)) as process:
        support.wait_for(support.reached_step(run, 2), process, what="step 2")
        process.send_signal(signal.SIGINT)
        time.sleep(0.25)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    step = load_checkpoint(run).step
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"interrupted: last checkpoint step {step} in {run / 'checkpoints'}; continue with --resume"]


# ---------------------------------------------------------------------------------------------
# 2. One writer per run directory


def test_a_second_pretrain_on_the_same_run_fails_at_once_naming_the_first(assets, tmp_path, capsys):
    run = tmp_path / "run"
    first = support.start_cli("pretrain", "--shards", assets.shards, "--out", run, "--steps", "100000", "--log-every", "1",
                              "--ckpt-every", "1", "--n-ctx", "32", "--batch-size", "2", "--eval-every", "1000", "-q")
    try:
        support.wait_for(support.reached_step(run, 1), first, what="step 1")
        started = time.perf_counter()
        result = pretrain_cli(capsys, assets.shards, run, "--resume", "--device", "cpu", "-q")
        elapsed = time.perf_counter() - started
        support.assert_one_error_line(result, f"run directory {run} is in use by another gpt1 process (PID {first.pid})")
        assert elapsed < 10
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 75
    load_checkpoint(run)


def test_hidden_entries_of_a_run_are_ignored_and_stale_pointer_files_cleaned(run_copy, assets):
    root = run_copy / "checkpoints"
    (run_copy / ".gpt1.lock").write_text("12345\n")
    (root / ".tmp-step_00000030-999").mkdir()
    (root / ".trash-step_00000008-999").mkdir()
    (root / ".trash-step_00000008-999" / "model.safetensors").write_bytes(b"half")
    (root / ".latest.abcd.tmp").write_text("step_00000099\n")  # a pointer write cut short by a kill
    assert all(check.ok for check in verify(run_copy))
    assert resolve_checkpoint(run_copy) == root / "step_00000024"
    model = GPT(load_checkpoint(run_copy).config)
    save_checkpoint(run_copy, 25, model_state=model.state_dict(), config=model.config,
                    tokenizer_path=assets.tokenizer, keep=5)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------------------------
# 3. What a checkpoint or manifest names is checked before it is opened


def _generate(run, capsys):
    return support.run_main(["generate", "--ckpt", run, "--prompt", "The dog", "--max-new-tokens", "3",
                             "--temperature", "0", "--device", "cpu"], capsys)


@pytest.mark.parametrize("name", ["/etc/hostname", "../../../../etc/hostname", "sub/tokenizer.model"])
def test_a_checkpoint_naming_a_tokenizer_outside_its_folder_is_refused(run_copy, capsys, name):
    meta_path = support.latest_folder(run_copy) / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer_file"] = name
    meta_path.write_text(json.dumps(meta))
    support.assert_one_error_line(_generate(run_copy, capsys), str(meta_path), "not a plain file name")
    with pytest.raises(Gpt1Error, match="not a plain file name"):
        verify(run_copy)


def test_a_swapped_tokenizer_in_a_checkpoint_is_refused(run_copy, capsys):
    tokenizer = support.latest_folder(run_copy) / "tokenizer.model"
    data = bytearray(tokenizer.read_bytes())
    data[-1] ^= 0xFF
    tokenizer.write_bytes(bytes(data))
    support.assert_one_error_line(_generate(run_copy, capsys), str(tokenizer), "does not match the tokenizer hash")


def test_a_manifest_naming_a_file_elsewhere_is_never_trained_on_nor_called_ok(assets, tmp_path, capsys):
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN PRIVATE KEY----- not for checkpoints\n")
    shards = support.copy_shards(assets.shards, tmp_path / "shards")
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["tokenizer"]["file"] = str(secret)
    manifest["tokenizer"]["blake2b"] = file_hash(secret)  # a consistent, deliberately edited manifest
    (shards / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    result = pretrain_cli(capsys, shards, out, *SHORT)
    support.assert_one_error_line(result, "not a plain file name")
    assert not (out / "checkpoints").exists()
    with pytest.raises(Gpt1Error, match="not a plain file name"):
        verify(shards)


def test_a_missing_tokenizer_fails_before_training(assets, tmp_path, capsys):
    shards = support.copy_shards(assets.shards, tmp_path / "shards")
    (shards / "tokenizer.model").unlink()
    out = tmp_path / "run"
    support.assert_one_error_line(pretrain_cli(capsys, shards, out, *SHORT), "tokenizer.model")
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_a_tokenizer_deleted_during_training_is_still_in_every_checkpoint(assets, tmp_path, monkeypatch):
    from gpt1cli.train import metrics_log

    shards = support.copy_shards(assets.shards, tmp_path / "shards")
    original = (shards / "tokenizer.model").read_bytes()
    write = metrics_log.MetricsLog.write

    def write_then_delete(self, kind, **values):
        write(self, kind, **values)
        if kind == "train":
            (shards / "tokenizer.model").unlink(missing_ok=True)

    monkeypatch.setattr(metrics_log.MetricsLog, "write", write_then_delete)
    run = tmp_path / "run"
    pretrain(config(shards, run, ckpt_every=2), show_progress=False)
    for step in (2, 4):
        folder = run / "checkpoints" / f"step_{step:08d}"
        assert (folder / "tokenizer.model").read_bytes() == original
    assert load_checkpoint(run).step == 4


def test_a_latest_pointer_that_is_not_text_is_one_error(run_copy, assets, capsys):
    pointer = run_copy / "checkpoints" / "latest"
    pointer.write_bytes(b"\xff\xfestep\x00\n")
    support.assert_one_error_line(_generate(run_copy, capsys), str(pointer), "does not hold a checkpoint folder name")
    result = pretrain_cli(capsys, assets.shards, run_copy, "--resume", "--device", "cpu", "-q")
    support.assert_one_error_line(result, str(pointer))
    checks = verify(run_copy)
    assert [c.path for c in checks if not c.ok] == [pointer]


@pytest.mark.parametrize("field, value, message", [
    ("step", "24", "records step '24'"),
    ("step", -1, "records step -1"),
])
def test_checkpoint_json_numbers_are_checked_on_load(run_copy, field, value, message):
    meta_path = support.latest_folder(run_copy) / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = value
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Gpt1Error, match=re.escape(message)):
        load_checkpoint(run_copy)


@pytest.mark.parametrize("setting, value", [("n_layer", 2**40), ("n_ctx", 32.0), ("d_model", True),
                                            ("dropout", float("nan")), ("layer_norm_eps", 0)])
def test_model_settings_are_checked_before_anything_is_built(setting, value):
    settings = preset("tiny", 300, n_ctx=32).to_dict()
    settings[setting] = value
    with pytest.raises(Gpt1Error, match=setting):
        ModelConfig.from_dict(settings)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.update(best_val="low"), "best_val"),
    (lambda t: t["config"].update(learning_rate=1.0), "unknown settings ['learning_rate']"),
    (lambda t: t["config"].update(grad_clip=-1.0), "--grad-clip must be positive and finite, got -1.0"),
    (lambda t: t["config"].update(seed=-4), "--seed must be in [0, 2^63 - 1], got -4"),
    (lambda t: t["optimizer_groups"][0]["params"].__setitem__(0, "no.such.weight"), "parameters differ"),
    (lambda t: t["optimizer_groups"][0].update(lr="fast"), "optimiser setting lr"),
    (lambda t: t.update(step=23), "records step 23"),
])
def test_trainer_json_is_checked_before_a_resume_uses_it(run_copy, assets, capsys, change, message):
    path = support.latest_folder(run_copy) / "trainer.json"
    trainer = json.loads(path.read_text())
    change(trainer)
    path.write_text(json.dumps(trainer))
    result = pretrain_cli(capsys, assets.shards, run_copy, "--resume", "--steps", "26", "--device", "cpu", "-q")
    support.assert_one_error_line(result, message)
    assert load_checkpoint(run_copy).step == 24


# ---------------------------------------------------------------------------------------------
# 4. Sizes: estimated before anything is allocated; --dry-run


def test_an_absurd_batch_is_refused_at_once_with_the_memory_figure(assets, tmp_path, capsys):
    out = tmp_path / "run"
    started = time.perf_counter()
    result = pretrain_cli(capsys, assets.shards, out, "--batch-size", "100000000", "--device", "cpu", "-q")
    assert time.perf_counter() - started < 20
    line = support.assert_one_error_line(result, "this run needs about", "TiB of memory", "micro-batch of 100000000 x 64")
    assert "--grad-accum" in line
    assert not out.exists()


@pytest.fixture(scope="module")
def long_shards(assets, tmp_path_factory):
    """Shards with more than 100,001 training tokens (made with the session's tokenizer)."""
    root = tmp_path_factory.mktemp("long")
    corpus = support.write_txt(root / "corpus.txt", support.make_documents(6000, seed=5))
    from gpt1cli.data.pipeline import tokenize_corpus

    tokenize_corpus([str(corpus)], root / "shards", tokenizer=assets.tokenizer, val_fraction=0.01, show_progress=False)
    assert support.read_manifest(root / "shards")["splits"]["train"]["tokens"] > 100_001
    return root / "shards"


def test_an_absurd_context_is_refused_at_once_with_the_memory_figure(long_shards, tmp_path, capsys):
    out = tmp_path / "run"
    started = time.perf_counter()
    result = pretrain_cli(capsys, long_shards, out, "--n-ctx", "100000", "--device", "cpu", "-q")
    assert time.perf_counter() - started < 30
    support.assert_one_error_line(result, "this run needs about", "TiB of memory", "micro-batch of 16 x 100000")
    assert not out.exists()


def test_a_vocabulary_of_a_billion_is_priced_before_it_is_allocated():
    estimate = estimate_memory(preset("tiny", 10**9), micro_batch=16, global_batch=16, device=torch.device("cpu"))
    assert estimate.parameters == count_parameters(preset("tiny", 10**9)) > 64 * 10**9
    assert estimate.state == 16 * estimate.parameters
    assert estimate.total > 10**12


def test_memory_estimate_grows_with_the_micro_batch_not_the_accumulated_batch():
    config = preset("mini", 8000)
    cpu = torch.device("cpu")
    one = estimate_memory(config, micro_batch=8, global_batch=8, device=cpu)
    two = estimate_memory(config, micro_batch=16, global_batch=16, device=cpu)
    accumulated = estimate_memory(config, micro_batch=8, global_batch=64, device=cpu)
    assert two.activations == 2 * one.activations
    assert accumulated.activations == one.activations and accumulated.total - one.total == 8 * 56
    # per token: 4 layers x (4 x (12 x 128 + 3 x 512) + 16 x 128 + 16 x 4 heads x 128) + 12 x 8000 bytes
    assert one.activations == 8 * 128 * (4 * (4 * (12 * 128 + 3 * 512) + 16 * 128 + 16 * 4 * 128) + 12 * 8000)


def test_dry_run_prints_parameters_flops_and_memory_and_writes_nothing(assets, tmp_path, capsys):
    out = tmp_path / "run"
    result = pretrain_cli(capsys, assets.shards, out, "--preset", "mini", "--device", "cpu", "--dry-run")
    assert result.code == 0, result.err
    model_config = preset("mini", support.VOCAB)
    real = GPT(model_config).num_parameters()
    text = result.out
    assert re.search(r"parameters\s+([\d,]+)", text).group(1).replace(",", "") == str(real)
    flops = float(re.search(r"FLOPs per token\s+(\S+)", text).group(1))
    assert flops == pytest.approx(6 * real + 12 * 4 * 128 * 128, rel=1e-3)
    assert flops_per_token(model_config) == 6 * real + 12 * 4 * 128 * 128
    assert re.search(r"memory estimate\s+[\d.,]+ MiB per process", text)
    assert "batch_size=16" in text and "lr=0.001" in text and "steps=1000" in text
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 5. Numbers: refused at parse time and in the library; never a non-finite checkpoint


@pytest.mark.parametrize("option, value, message", [
    ("--lr", "inf", "--lr must be positive and finite, got inf"),
    ("--lr", "nan", "--lr must be positive and finite, got nan"),
    ("--lr", "-1e-3", "--lr must be positive and finite, got -0.001"),
    ("--weight-decay", "nan", "--weight-decay must be >= 0 and finite, got nan"),
    ("--weight-decay", "-5", "--weight-decay must be >= 0 and finite, got -5.0"),
    ("--grad-clip", "nan", "--grad-clip must be positive and finite, got nan"),
    ("--grad-clip", "-1", "--grad-clip must be positive and finite, got -1.0"),
    ("--grad-clip", "0", "--grad-clip must be positive and finite, got 0.0"),
    ("--seed", "-1", "--seed must be in [0, 2^63 - 1], got -1"),
    ("--seed", str(2**63), "--seed must be at most 9223372036854775807"),
    ("--dropout", "-0.1", "--dropout must be in [0, 1), got -0.1"),
    ("--dropout", "1", "--dropout must be in [0, 1), got 1.0"),
    ("--warmup", "-1", "--warmup must be >= 0, got -1"),
    ("--dist-timeout", "nan", "--dist-timeout must be positive and finite, got nan"),
    ("--n-ctx", "0", "--n-ctx must be positive, got 0"),
    ("--window", "-4", "--window must be positive, got -4"),
])
def test_bad_numbers_are_refused_before_anything_happens(tmp_path, capsys, option, value, message):
    out = tmp_path / "run"
    # The shard directory does not even exist: the option is refused while the command line is parsed.
    result = pretrain_cli(capsys, tmp_path / "no-shards", out, option, value, "-q")
    support.assert_one_error_line(result, message)
    assert not out.exists()


@pytest.mark.parametrize("changes, message", [
    (dict(lr=math.inf), "--lr must be positive and finite"),
    (dict(grad_clip=0.0), "--grad-clip must be positive"),
    (dict(weight_decay=math.nan), "--weight-decay must be >= 0"),
    (dict(seed=-1), "--seed must be in"),
    (dict(dropout=1.0), "--dropout must be in [0, 1)"),
    (dict(steps=2.5), "--steps must be an integer, got 2.5"),
    (dict(keep="3"), "--keep must be an integer, got '3'"),
    (dict(grad_accum=None), "--grad-accum must be given"),
    (dict(parallel="zero"), "--parallel must be ddp or fsdp"),
    (dict(compile="yes"), "--compile must be true or false"),
])
def test_python_callers_get_the_same_checks(assets, tmp_path, changes, message):
    with pytest.raises(Gpt1Error, match=re.escape(message)):
        pretrain(config(assets.shards, tmp_path / "run", **changes), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_final_step_that_is_not_finite_ends_with_a_finite_checkpoint_and_an_error(assets, tmp_path, monkeypatch):
    support.poison_forward(monkeypatch, lambda call: call == 4)
    run = tmp_path / "run"
    with pytest.raises(Gpt1Error, match=r"step 4, the last of this run, had a non-finite loss .* "
                                        r"the last good checkpoint is step 3"):
        pretrain(config(assets.shards, run, steps=4), show_progress=False)
    checkpoint = load_checkpoint(run, with_trainer=True)
    assert checkpoint.step == 3 and checkpoint.trainer_meta["step"] == 3
    assert all(bool(torch.isfinite(t).all()) for t in checkpoint.state_dict.values())
    assert [r["step"] for r in support.records(run, "skip")] == [4]


def test_weights_that_are_not_finite_are_never_saved(assets, tmp_path, monkeypatch):
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def breaking_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", breaking_step)
    run = tmp_path / "run"
    with pytest.raises(Gpt1Error, match=r"the weights are not finite after step 2 .*not saved; the last finite "
                                        r"checkpoint is step 1"):
        pretrain(config(assets.shards, run, ckpt_every=1), show_progress=False)
    assert (run / "checkpoints" / "latest").read_text() == "step_00000001\n"
    assert not (run / "checkpoints" / "step_00000002").exists()
    assert all(bool(torch.isfinite(t).all()) for t in load_checkpoint(run).state_dict.values())


# ---------------------------------------------------------------------------------------------
# 6. Resume honours what it is given, or says why not


def test_resume_refuses_options_it_cannot_honour_and_accepts_the_same_values(run_copy, assets, capsys):
    before = (run_copy / "metrics.jsonl").read_bytes()
    result = pretrain_cli(capsys, assets.shards, run_copy, "--resume", "--lr", "0.1", "--preset", "mini",
                          "--batch-size", "8", "--dropout", "0", "--seed", "5", "--device", "cpu", "-q")
    line = support.assert_one_error_line(result, "cannot honour", "--batch-size 8 (the run has 4)",
                                         "--dropout 0.0 (the run has 0.1)", "--lr 0.1 (the run has 0.003)",
                                         "--preset mini (the run has tiny)", "--seed 5 (the run has 0)")
    assert "--steps" in line  # what may change is listed
    assert (run_copy / "metrics.jsonl").read_bytes() == before
    # The run's own values, as a requeued job passes them, are honoured.
    result = pretrain_cli(capsys, assets.shards, run_copy, "--resume", *support.RUN_ARGS[:-1], "--steps", "25", "-q")
    assert result.code == 0, result.err
    assert load_checkpoint(run_copy).step == 25


@pytest.mark.parametrize("extra", [[], ["--steps", "10"], ["--stop-after", "20"]], ids=["finished", "fewer-steps", "stop-before"])
def test_resume_with_nothing_left_to_do_says_so_and_prints_the_final_figures(run_copy, assets, capsys, extra):
    with open(run_copy / "metrics.jsonl", "a") as handle:
        handle.write("[" * 50_000 + "\n" + "1" * 5000 + "\n")  # damaged lines are skipped, not fatal
    before = (run_copy / "metrics.jsonl").read_bytes()
    result = pretrain_cli(capsys, assets.shards, run_copy, "--resume", *extra, "--device", "cpu", "-q")
    assert result.code == 0, result.err
    last = [r for r in read_records(run_copy / "metrics.jsonl") if r["kind"] == "train"][-1]
    val = load_checkpoint(run_copy).meta["metrics"]["val"]
    assert "nothing to do" in result.out and "already reached step 24" in result.out
    assert f"loss {last['loss']:.4f}" in result.out and f"val loss {val['loss']:.4f}" in result.out
    assert "nan" not in result.out
    assert (run_copy / "metrics.jsonl").read_bytes() == before
    assert (run_copy / "checkpoints" / "latest").read_text() == "step_00000024\n"


def test_resume_before_the_first_checkpoint_starts_the_run_with_its_recorded_settings(assets, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    # What a run killed before its first checkpoint leaves: its config record, a step or two, no checkpoint.
    started = (assets.run / "metrics.jsonl").read_text().splitlines()[0]
    (run / "metrics.jsonl").write_text(started + "\n" + json.dumps({"kind": "train", "step": 1}) + "\n")
    result = pretrain_cli(capsys, assets.shards, run, "--resume", "--lr", "0.1", "--device", "cpu", "-q")
    support.assert_one_error_line(result, "cannot honour --lr 0.1 (the run has 0.003)")
    result = pretrain_cli(capsys, assets.shards, run, "--resume", "--steps", "3", "--device", "cpu", "-q")
    assert result.code == 0, result.err
    assert "no checkpoint yet" in result.err and "starting it from step 0" in result.err
    checkpoint = load_checkpoint(run, with_trainer=True)
    assert checkpoint.step == 3 and checkpoint.config.n_ctx == 32  # the recorded run's settings, not the defaults
    assert checkpoint.trainer_meta["config"]["batch_size"] == support.RUN_BATCH
    assert checkpoint.trainer_meta["config"]["out"] == str(run)


def test_resume_of_an_empty_directory_is_still_refused(assets, tmp_path, capsys):
    result = pretrain_cli(capsys, assets.shards, tmp_path / "empty", "--resume", *SHORT)
    support.assert_one_error_line(result, "no checkpoint to resume from")
    assert not (tmp_path / "empty").exists()


# ---------------------------------------------------------------------------------------------
# 7. Output directories that cannot be one


def test_an_out_that_is_a_file_is_one_error(assets, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    support.assert_one_error_line(pretrain_cli(capsys, assets.shards, out, *SHORT), str(out), "is not a directory")
    assert out.read_text() == "not a directory"


def _unwritable(path: Path) -> bool:
    try:
        path.mkdir()
    except OSError:
        return True
    path.rmdir()
    return False


@pytest.mark.parametrize("name", ["sys-new", "sys-existing"])
def test_an_out_that_cannot_be_written_is_one_error(assets, capsys, name):
    out = Path("/sys/gpt1-hardening-test") if name == "sys-new" else Path("/sys/kernel")
    if not Path("/sys/kernel").is_dir() or not _unwritable(Path("/sys/gpt1-hardening-probe")):
        pytest.skip("needs a directory this user cannot write")
    support.assert_one_error_line(pretrain_cli(capsys, assets.shards, out, *SHORT), str(out), "writable")


# ---------------------------------------------------------------------------------------------
# Kills while a step's folder is re-written


def test_a_kill_while_rewriting_the_step_latest_names_leaves_latest_loadable(tmp_path, assets, monkeypatch):
    from gpt1cli import checkpoint as checkpoint_module

    model = GPT(preset("tiny", support.VOCAB, n_ctx=16))
    save_checkpoint(tmp_path, 3, model_state=model.state_dict(), config=model.config, tokenizer_path=assets.tokenizer)
    for parameter in model.parameters():
        torch.nn.init.constant_(parameter, 0.5)

    def killed(path):
        raise SystemExit("killed while deleting")

    monkeypatch.setattr(checkpoint_module, "remove_tree", killed)
    with pytest.raises(SystemExit):
        save_checkpoint(tmp_path, 3, model_state=model.state_dict(), config=model.config, tokenizer_path=assets.tokenizer)
    monkeypatch.undo()
    loaded = load_checkpoint(tmp_path)  # latest still names a complete folder: the new one
    assert loaded.step == 3
    assert torch.equal(loaded.state_dict["tok_emb.weight"], torch.full_like(loaded.state_dict["tok_emb.weight"], 0.5))
    assert all(check.ok for check in verify(tmp_path))
