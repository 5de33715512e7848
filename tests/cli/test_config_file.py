"""`--config FILE`: every setting from a TOML, YAML or JSON file, checked as the options are; the
options typed on the command line win; a file's values are given values for the resume rules;
the run config a training run saves repeats the run."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

import support
from gpt1cli import settings
from gpt1cli.cli import config_file
from gpt1cli.cli.options import offered
from gpt1cli.errors import Gpt1Error
from gpt1cli.tasks.finetune import FinetuneConfig
from gpt1cli.tasks.generative import GenerativeConfig
from gpt1cli.tasks.training import settings_of
from gpt1cli.train.pretrain_config import PretrainConfig

FINETUNE = (FinetuneConfig, GenerativeConfig)


def dry_run(capsys, *argv) -> dict[str, str]:
    """``gpt1 pretrain ARGV --dry-run``'s settings line, by setting."""
    result = support.run_main(["pretrain", *argv, "--dry-run"], capsys)
    assert result.code == 0, result.err
    line = next(line for line in result.out.splitlines() if line.startswith("settings "))
    return dict(item.split("=", 1) for item in line.split(None, 1)[1].split(", "))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def plain(value) -> str:
    """A value as the dry run's settings line prints it."""
    return str(value)


@pytest.fixture
def base(assets, tmp_path):
    """The shards and a fresh run directory, as TOML, YAML and JSON writers share them."""
    return {"shards": str(assets.shards), "out": str(tmp_path / "run")}


# ---------------------------------------------------------------------------------------------
# The three formats, and the command line over the file


def test_toml_gives_every_kind_of_setting(base, tmp_path, capsys):
    path = write(tmp_path / "run.toml", f"""
shards = "{base['shards']}"
out = "{base['out']}"
preset = "tiny"
n-ctx = 32             # the option's spelling
batch_size = 4
lr = 0.002
steps = 7
compile = false
device = "cpu"
""")
    shown = dry_run(capsys, "--config", path)
    assert {k: shown[k] for k in ("shards", "out", "preset", "n_ctx", "batch_size", "lr", "steps", "compile", "device")} == {
        "shards": base["shards"], "out": base["out"], "preset": "tiny", "n_ctx": "32", "batch_size": "4", "lr": "0.002",
        "steps": "7", "compile": "False", "device": "cpu"}
    assert shown["warmup"] == "1"  # what the file leaves out keeps its default (steps/10, at least 1)


def test_yaml_and_json_give_the_same_run_as_toml(base, tmp_path, capsys):
    toml = write(tmp_path / "a.toml", f'shards = "{base["shards"]}"\nout = "{base["out"]}"\nn_ctx = 32\n'
                                      'batch_size = 4\nlr = 3e-3\ndevice = "cpu"\nseed = 5\n')
    # YAML 1.1 reads 3e-3 as a string: a number written as a string is read as the option reads it.
    yaml = write(tmp_path / "a.yaml", f'shards: {base["shards"]}\nout: {base["out"]}\nn-ctx: 32\n'
                                      'batch-size: 4\nlr: 3e-3\ndevice: cpu\nseed: 5\n')
    data = {"shards": base["shards"], "out": base["out"], "n_ctx": 32, "batch_size": 4, "lr": 0.003, "device": "cpu",
            "seed": 5}
    jsonf = write(tmp_path / "a.json", json.dumps(data))
    runs = [dry_run(capsys, "--config", path) for path in (toml, yaml, jsonf)]
    assert runs[0] == runs[1] == runs[2]
    assert runs[0]["lr"] == "0.003" and runs[0]["seed"] == "5" and runs[0]["n_ctx"] == "32"


def test_options_on_the_command_line_override_the_file(base, tmp_path, capsys):
    path = write(tmp_path / "run.toml", f'shards = "{base["shards"]}"\nout = "{base["out"]}"\nn_ctx = 32\n'
                                        'batch_size = 4\nseed = 5\ndevice = "cpu"\ncompile = true\n')
    shown = dry_run(capsys, "--config", path, "--batch-size", "8", "--seed", "6", "--out", Path(base["out"]).with_name("b"))
    assert (shown["batch_size"], shown["seed"], shown["out"]) == ("8", "6", str(Path(base["out"]).with_name("b")))
    assert shown["n_ctx"] == "32" and shown["compile"] == "True"  # the rest still from the file


def test_a_null_leaves_the_default(base, tmp_path, capsys):
    path = write(tmp_path / "run.json", json.dumps({**base, "n_ctx": 32, "batch_size": 4, "steps": None,
                                                    "device": "cpu"}))
    assert dry_run(capsys, "--config", path)["steps"] == "200"  # the tiny preset's


def test_required_settings_may_come_from_the_file_alone(base, tmp_path, capsys):
    path = write(tmp_path / "run.toml", f'shards = "{base["shards"]}"\nout = "{base["out"]}"\n')
    shown = dry_run(capsys, "--config", path, "--n-ctx", "32", "--batch-size", "2", "--device", "cpu")
    assert shown["shards"] == base["shards"]


def test_relative_paths_are_relative_to_the_current_directory(assets, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = write(folder / "run.toml", 'shards = "shards"\nout = "runs/one"\nn_ctx = 32\nbatch_size = 2\ndevice = "cpu"\n')
    monkeypatch.chdir(assets.shards.parent)
    shown = dry_run(capsys, "--config", path)
    assert (shown["shards"], shown["out"]) == ("shards", "runs/one")  # as written; the run reads them from the cwd


# ---------------------------------------------------------------------------------------------
# Bad files: one error line naming the file (and the key)


@pytest.mark.parametrize("line, key, value", [("batch_size = 0", "batch_size", 0), ("dropout = 1.5", "dropout", 1.5),
                                              ("grad-clip = -1.0", "grad-clip", -1.0),
                                              ('preset = "huge"', "preset", "huge")])
def test_a_bad_value_fails_the_settings_rule_naming_the_file_and_key(base, tmp_path, capsys, line, key, value):
    path = write(tmp_path / "bad.toml", line + "\n")
    field = next(f for f in settings.fields(PretrainConfig) if f.name == key.replace("-", "_"))
    with pytest.raises(Gpt1Error) as expected:
        settings.declared(field).rule(value, key)
    result = support.run_main(["pretrain", "--config", path, "--shards", base["shards"], "--out", base["out"]], capsys)
    line = support.assert_one_error_line(result, f"{path}: {expected.value}")
    assert not Path(base["out"]).exists(), line


@pytest.mark.parametrize("text, message", [
    ("batch_size = 2.5", "batch_size must be an integer, not 2.5"),
    ("batch_size = true", "batch_size must be an integer, not true"),
    ('compile = "yes"', "compile must be true or false, not 'yes'"),
    ("lr = [1]", "lr must be a number, not [1]"),
    ('lr = "fast"', "lr must be a number, not 'fast'"),
    ("shards = 3", "shards must be a string, not 3"),
])
def test_a_value_of_the_wrong_type_names_the_file_and_key(base, tmp_path, capsys, text, message):
    path = write(tmp_path / "bad.toml", text + "\n")
    result = support.run_main(["pretrain", "--config", path, "--shards", base["shards"], "--out", base["out"]], capsys)
    support.assert_one_error_line(result, f"{path}: {message}")


def test_an_unknown_key_lists_the_known_ones(base, tmp_path, capsys):
    path = write(tmp_path / "bad.toml", "batchsize = 4\n")
    result = support.run_main(["pretrain", "--config", path, *_required(base)], capsys)
    line = support.assert_one_error_line(result, f"{path}: unknown setting 'batchsize'")
    listed = re.search(r"the known ones are ([\w, ]+?) \(", line).group(1).split(", ")
    assert listed == sorted(settings.names(PretrainConfig))


def test_two_spellings_of_one_setting_are_refused(base, tmp_path, capsys):
    path = write(tmp_path / "bad.toml", "batch_size = 4\nbatch-size = 8\n")
    result = support.run_main(["pretrain", "--config", path, *_required(base)], capsys)
    support.assert_one_error_line(result, f"{path}: 'batch_size' and 'batch-size' both set batch_size")


@pytest.mark.parametrize("name, text, message", [
    ("run.toml", "batch_size = ", "not valid TOML"),
    ("run.json", "{'batch_size': 4}", "not valid JSON"),
    ("run.yaml", "batch_size: [4\n", "not valid YAML"),
    ("run.json", "[1, 2]", "a config file holds a mapping of settings, not list"),
    ("run.ini", "batch_size = 4", "a config file must end in .toml, .yaml, .yml, .json, .jsonl"),
    ("run.jsonl", '{"kind": "train", "step": 1}\n', "no run config record"),
])
def test_a_file_that_does_not_parse_is_one_error_line(base, tmp_path, capsys, name, text, message):
    path = write(tmp_path / name, text)
    result = support.run_main(["pretrain", "--config", path, *_required(base)], capsys)
    support.assert_one_error_line(result, f"{path}: {message}")


def test_a_missing_file(base, tmp_path, capsys):
    result = support.run_main(["pretrain", "--config", tmp_path / "absent.toml", *_required(base)], capsys)
    support.assert_one_error_line(result, f"cannot read the config file {tmp_path / 'absent.toml'}: No such file")


def test_yaml_without_pyyaml_says_what_to_install(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    path = write(tmp_path / "run.yaml", "batch_size: 4\n")
    result = support.run_main(["pretrain", "--config", path, *_required(base)], capsys)
    support.assert_one_error_line(result, f"{path}: reading YAML needs PyYAML (pip install pyyaml)")


def _required(base) -> list[str]:
    return ["--shards", base["shards"], "--out", base["out"]]


# ---------------------------------------------------------------------------------------------
# A file's values are given values (for the resume rules, and for what one task kind refuses)


def test_resume_refuses_a_fixed_setting_the_file_changes(assets, run_copy, tmp_path, capsys):
    path = write(tmp_path / "run.toml", "batch_size = 8\n")
    result = support.run_main(["pretrain", "--config", path, "--shards", assets.shards, "--out", run_copy, "--resume",
                               "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, "cannot honour --batch-size 8 (the run has 4)")


def test_resume_accepts_the_runs_own_saved_config(assets, run_copy, capsys):
    result = support.run_main(["pretrain", "--config", run_copy / "metrics.jsonl", "--out", run_copy, "--resume",
                               "--shards", assets.shards, "-q"], capsys)
    assert result.code == 0, result.err
    assert result.out.startswith(f"nothing to do: {run_copy} already reached step 24"), result.out


def test_finetune_refuses_a_head_setting_from_the_file_for_the_generate_task(tmp_path, capsys):
    path = write(tmp_path / "ft.toml", "lm_coef = 0.25\n")
    result = support.run_main(["finetune", "--config", path, "--task", "generate", "--train", tmp_path / "t.jsonl",
                               "--val", tmp_path / "v.jsonl", "--from", tmp_path / "run", "--out", tmp_path / "out"], capsys)
    support.assert_one_error_line(result, "--lm-coef applies to the tasks with a head")


# ---------------------------------------------------------------------------------------------
# The saved run config repeats the run


def saved_config(run: Path) -> dict:
    return json.loads((support.latest_folder(run) / "trainer.json").read_text(encoding="utf-8"))["config"]


def test_the_saved_trainer_json_is_a_config_file(assets, tmp_path, capsys):
    trainer = support.latest_folder(assets.run) / "trainer.json"
    shown = dry_run(capsys, "--config", trainer, "--out", tmp_path / "again")
    saved = saved_config(assets.run)
    assert shown == {name: plain(tmp_path / "again") if name == "out" else plain(value) for name, value in saved.items()}


def test_a_run_repeated_from_its_metrics_log_is_the_same_run(assets, tmp_path, capsys):
    again = tmp_path / "again"
    result = support.run_main(["pretrain", "--config", assets.run / "metrics.jsonl", "--out", again, "-q"], capsys)
    assert result.code == 0, result.err
    assert saved_config(again) == {**saved_config(assets.run), "out": str(again)}
    assert support.train_losses(again) == support.train_losses(assets.run)


def test_a_metrics_log_with_a_half_written_last_line(assets, tmp_path, capsys):
    """A run killed while it wrote a record leaves its log so; the config record is still read."""
    log = tmp_path / "metrics.jsonl"
    log.write_text((assets.run / "metrics.jsonl").read_text(encoding="utf-8") + '{"kind": "train", "st', encoding="utf-8")
    shown = dry_run(capsys, "--config", log, "--out", tmp_path / "again")
    assert shown["batch_size"] == plain(saved_config(assets.run)["batch_size"]) and shown["out"] == str(tmp_path / "again")


def test_the_saved_config_of_a_generate_finetuning_run_gives_its_task_and_settings(tmp_path):
    """train-state/checkpoints/step_*/trainer.json of a --task generate run: the task beside the settings."""
    run = GenerativeConfig(train="t.jsonl", val="v.jsonl", from_run="pre", out="ft", lr=1e-4, epochs=2, max_new_tokens=9)
    trainer = {"driver": "generative", "task": "generate", "step": 6, "config": settings_of(run), "data": {},
               "progress": {"step": 6}, "optimizer_groups": [], "world_size": 1, "tensors_blake2b": "0" * 64}
    path = write(tmp_path / "trainer.json", json.dumps(trainer))
    known = config_file.known_settings(offered(*FINETUNE), FINETUNE)
    read = config_file.read_settings(path, known)
    assert read["task"] == "generate"
    assert {k: read[k] for k in ("train", "val", "from_run", "out", "lr", "epochs", "max_new_tokens")} == {
        "train": "t.jsonl", "val": "v.jsonl", "from_run": "pre", "out": "ft", "lr": 1e-4, "epochs": 2, "max_new_tokens": 9}
    assert "grad_clip" not in read  # saved, not an option: only its default is accepted


def test_a_saved_setting_the_command_line_cannot_set_must_keep_its_default(tmp_path):
    known = config_file.known_settings(offered(*FINETUNE), FINETUNE)
    path = write(tmp_path / "ft.json", json.dumps({"config": {"grad_clip": 2.0}}))
    with pytest.raises(Gpt1Error, match=re.escape(f"{path}: grad_clip cannot be set from the command line or a config "
                                                  "file: it is 1.0 here, not 2.0")):
        config_file.read_settings(path, known)


def test_the_option_spelling_of_a_renamed_setting(tmp_path):
    """--from is from_run, --threads num_threads: either name works in a file."""
    from gpt1cli.data.pipeline import TokenizeConfig

    known = config_file.known_settings(offered(*FINETUNE), FINETUNE)
    assert config_file.read_settings(write(tmp_path / "a.toml", 'from = "pre"\n'), known) == {"from_run": "pre"}
    known = config_file.known_settings(offered(TokenizeConfig), (TokenizeConfig,))
    assert config_file.read_settings(write(tmp_path / "b.toml", "threads = 2\n"), known) == {"num_threads": 2}


def test_tokenize_reads_its_settings_from_a_file(assets, tmp_path, capsys):
    path = write(tmp_path / "tok.yaml", f"tokenizer: {assets.tokenizer}\nthreads: 1\ntokens-per-shard: 700\n"
                                        "val_fraction: 0.2\n")
    out = tmp_path / "shards"
    result = support.run_main(["tokenize", assets.corpus, "--out", out, "--config", path, "-q"], capsys)
    assert result.code == 0, result.err
    manifest = support.read_manifest(out)
    assert (manifest["tokens_per_shard"], manifest["val_fraction"], manifest["stats"]["threads"]) == (700, 0.2, 1)
    assert manifest["tokenizer"]["blake2b"] == support.read_manifest(assets.shards)["tokenizer"]["blake2b"]


def built_commands() -> dict[str, tuple]:
    from gpt1cli.cli.app import COMMANDS, function

    return {name: function(name).configs for name in COMMANDS if hasattr(function(name), "configs")}


@pytest.mark.parametrize("name", sorted(built_commands()))
def test_every_setting_of_every_command_reads_back_its_default(name, tmp_path):
    """Each offered setting's default, written to a JSON file by its field name, reads back equal."""
    configs = built_commands()[name]
    pairs = offered(*configs)
    defaults = {field.name: field.default for _, field in pairs if field.default not in (None, dataclasses.MISSING)}
    path = write(tmp_path / "all.json", json.dumps(defaults))
    read = config_file.read_settings(path, config_file.known_settings(pairs, configs))
    assert read == defaults and {type(v) for v in read.values()} <= {bool, int, float, str}
    assert len(defaults) >= 3
