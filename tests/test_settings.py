"""Every setting has one home: a config dataclass field with its default, help text and rule.

The commands' options (defaults, help, names, parse-time checks), the resume rules and the run
config saved with a checkpoint all follow from the fields; each model size is one preset record,
and an explicit --arch is honoured, never silently replaced.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer

import support
from gpt1cli import settings
from gpt1cli.cli.app import COMMANDS, app, function
from gpt1cli.config import PRESETS, Preset, preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.generation.completion import DecodeSettings
from gpt1cli.tasks.finetune import FinetuneConfig
from gpt1cli.tasks.generative import GenerativeConfig
from gpt1cli.tasks.training import settings_of
from gpt1cli.train.pretrain_config import FROM_PRESET, PretrainConfig, continued

CALLBACKS = {name: function(name) for name in COMMANDS}
# Commands whose options are built from config dataclasses, and those configs.
BUILT = {name: callback.configs for name, callback in CALLBACKS.items() if hasattr(callback, "configs")}
RUN_CONFIGS = (PretrainConfig, FinetuneConfig, GenerativeConfig)
# eval words the decoding settings for --task generate itself; the defaults and rules are DecodeSettings'.
EVAL_DECODING = {"beams": "beams", "length_penalty": "length_alpha", "length_norm": "length_norm",
                 "repetition_penalty": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram_size"}


def click_command(name: str):
    return typer.main.get_command(app).commands[name]


def help_text(name: str) -> dict[str, str]:
    """Each option's help as --help renders it (with its ``[default: ...]``), by parameter name."""
    command = click_command(name)
    ctx = command.make_context(name, [], resilient_parsing=True)
    return {param.name: (param.get_help_record(ctx) or ("", ""))[1] for param in command.params}


def declaring(configs, name: str) -> dataclasses.Field:
    """The field of the first config that declares setting ``name``."""
    return next(f for config in configs for f in settings.fields(config) if f.name == name)


def option_names(field: dataclasses.Field) -> set[str]:
    declared = settings.declared(field)
    if declared.flags:
        return {part for flag in declared.flags for part in flag.split("/")}
    name = "--" + field.name.replace("_", "-")
    return {name, "--no-" + name[2:]} if isinstance(field.default, bool) else {name}


def test_the_commands_with_settings_are_built_from_their_configs():
    assert {"pretrain", "finetune", "tokenize", "generate"} <= set(BUILT)


@pytest.mark.parametrize("name", sorted(BUILT))
def test_help_defaults_and_words_are_the_config_fields(name):
    configs = BUILT[name]
    offered = {f.name for config in configs for f in settings.fields(config) if settings.declared(f).option}
    params = {param.name: param for param in click_command(name).params if param.name in offered}
    assert set(params) == offered, "a setting is missing from the command line"
    shown = help_text(name)
    for param_name, param in params.items():
        field = declaring(configs, param_name)
        declared = settings.declared(field)
        if field.default is dataclasses.MISSING:
            assert param.required or (declared.resume_fills and param.default is None), param_name
        else:
            assert param.default == field.default, f"{name} {param_name}: {param.default!r} != {field.default!r}"
        assert shown[param_name].startswith(declared.help), param_name
        if isinstance(declared.show_default, str):
            assert f"[default: ({declared.show_default})]" in shown[param_name], shown[param_name]
        elif field.default not in (None, dataclasses.MISSING) and not isinstance(field.default, bool):
            assert f"[default: {field.default}]" in shown[param_name], shown[param_name]
        assert {*param.opts, *param.secondary_opts} == option_names(field), param_name
        assert (param.callback is not None) == (declared.rule is not None), f"{param_name}: the rule is not applied"


def test_eval_decoding_options_are_decode_settings():
    params = {param.name: param for param in click_command("eval").params}
    for option, setting in EVAL_DECODING.items():
        field = declaring([DecodeSettings], setting)
        assert params[option].default == field.default, option
        assert set(params[option].opts) == option_names(field), option
        assert params[option].callback is not None or settings.declared(field).rule is None
    # eval's own default: the budget comes from the references, not DecodeSettings' 100.
    assert params["max_new_tokens"].default is None


def test_the_commands_with_settings_build_their_options_from_configs():
    """Every command with settings of its own declares them once; the rest take only paths and flags."""
    assert {"tokenize", "pretrain", "finetune", "generate", "make-task", "demo"} <= set(BUILT)

@pytest.mark.parametrize("name", sorted(BUILT))
def test_a_rule_refuses_a_bad_option_while_the_command_line_is_parsed(name, capsys):
    """One bad number per command: the field's rule, applied by its option (before any work)."""
    configs, bad = BUILT[name], -10**21

    def refuses(field) -> bool:
        try:
            settings.declared(field).rule(bad, "--x")
        except Gpt1Error:
            return True
        return False

    field = next(f for config in configs for f in settings.fields(config) if settings.declared(f).option
                 and settings.declared(f).rule is not None and type(f.default) is int and refuses(f))
    flag = settings.option_name(configs[0], field.name)
    with pytest.raises(Gpt1Error) as expected:
        settings.declared(field).rule(bad, flag)
    result = support.run_main([name, flag, str(bad)], capsys)
    support.assert_one_error_line(result, str(expected.value))


# ---------------------------------------------------------------------------------------------
# Resume rules and saved run configs


@pytest.mark.parametrize("config", RUN_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_of_a_run_config_is_a_declared_setting_with_one_resume_policy(config):
    fields = [f.name for f in dataclasses.fields(config)]
    assert list(settings.names(config)) == fields, "a field is not declared with setting()"
    by_policy = [settings.names(config, policy) for policy in settings.POLICIES]
    assert sorted(n for names in by_policy for n in names) == sorted(fields)
    for field in settings.fields(config):
        assert settings.declared(field).help or not settings.declared(field).option, f"{field.name} has no help"


def test_finetune_resume_help_names_exactly_what_may_change():
    help_ = settings.declared(declaring([FinetuneConfig], "resume")).help
    named = set(re.findall(r"--[a-z-]+", help_[help_.index("(only"):help_.index(")")]))
    assert named == {settings.option_name(FinetuneConfig, n) for n in settings.names(FinetuneConfig, settings.MAY_CHANGE)}


def test_pretrain_resume_help_names_only_settings_that_may_change():
    help_ = settings.declared(declaring([PretrainConfig], "resume")).help
    named = set(re.findall(r"--[a-z-]+", help_)) - {"--out", "--resume"}
    fixed = {settings.option_name(PretrainConfig, n) for n in settings.names(PretrainConfig, settings.FIXED)}
    assert named and not named & fixed


def other_value(config, name: str, value):
    """A valid value of setting ``name`` other than ``value``."""
    field = declaring([config], name)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value / 2 if isinstance(value, float) else value + 1
    for choices in (tuple(PRESETS), ("gpt1", "gpt2"), ("dense", "alternating"), ("auto", "cpu", "cuda"), ("ddp", "fsdp")):
        if value in choices:
            return next(c for c in choices if c != value)
    if value is None:
        return {"n_ctx": 48, "window": 8, "stop_after": 3, "init_from": "another-run", "log": "csv",
                "precision": "fp32"}.get(name)
    assert isinstance(field.default, str) or field.default is dataclasses.MISSING, name
    return f"{value}-other"


def test_pretrain_resume_refuses_exactly_the_fixed_settings():
    run = PretrainConfig(shards="s", out="o", n_ctx=32, window=16, grad_accum=2, batch_size=4).resolved()
    saved = settings.saved(run)
    assert set(saved) == set(settings.names(PretrainConfig)), "the saved run config is not every setting"
    model = {"arch": run.arch, "n_ctx": 32, "window": 16}
    for name in set(settings.names(PretrainConfig)) - {"resume"}:
        changed = other_value(PretrainConfig, name, getattr(run, name))
        given = dataclasses.replace(run, **{name: changed}, resume=True)
        if name in settings.names(PretrainConfig, settings.FIXED):
            with pytest.raises(Gpt1Error, match=re.escape(f"cannot honour {settings.option_name(PretrainConfig, name)} ")):
                continued(given, saved, "trainer.json", model, {name})
        else:
            assert getattr(continued(given, saved, "trainer.json", model, {name}), name) == changed, name


def test_pretrain_resume_compares_the_architecture_with_the_model_it_continues():
    """A run saved before --arch meant "the preset's" records arch gpt1 beside a gpt2 model."""
    run = PretrainConfig(shards="s", out="o", preset="gpt3-small", n_ctx=32).resolved()
    saved = {**settings.saved(run), "arch": "gpt1"}
    given = dataclasses.replace(run, resume=True)
    assert continued(given, saved, "trainer.json", {"arch": "gpt2", "n_ctx": 32}, {"arch"}).resume
    with pytest.raises(Gpt1Error, match=r"--arch gpt1 \(the run has gpt2\)"):
        continued(dataclasses.replace(given, arch="gpt1"), saved, "trainer.json", {"arch": "gpt2"}, {"arch"})


@pytest.mark.parametrize("config", [FinetuneConfig, GenerativeConfig], ids=lambda c: c.__name__)
def test_finetune_saved_config_is_the_saved_settings(config):
    extra = {"task": "classify"} if config is FinetuneConfig else {}
    run = config(train="t", val="v", from_run="r", out="o", **extra)
    assert set(settings_of(run)) == {f.name for f in settings.fields(config) if settings.declared(f).saved}
    assert {"resume", "overwrite"} <= set(settings.names(config)) - set(settings_of(run))


def test_a_real_run_saves_every_pretrain_setting(assets):
    trainer = json.loads(next((Path(assets.run) / "checkpoints").glob("step_*/trainer.json")).read_text())
    assert set(trainer["config"]) == set(settings.names(PretrainConfig))


# ---------------------------------------------------------------------------------------------
# Presets: one record per model size; --arch is the preset's unless given


def test_each_preset_is_one_record_of_architecture_shape_and_training_defaults():
    training = {f.name for f in dataclasses.fields(Preset)} - {"shape"}
    assert set(FROM_PRESET) == training <= set(settings.names(PretrainConfig))
    for name, record in PRESETS.items():
        model = preset(name, 1000)
        assert model.arch == record.arch and {k: getattr(model, k) for k in record.shape} == record.shape
        resolved = PretrainConfig(shards="s", out="o", preset=name).resolved()
        assert {k: getattr(resolved, k) for k in FROM_PRESET} == {k: getattr(record, k) for k in FROM_PRESET}


@pytest.mark.parametrize("name", ["tiny", "gpt3-small"])
@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_an_explicit_arch_is_honoured_on_every_preset(name, arch):
    assert preset(name, 1000, arch=arch).arch == arch
    assert PretrainConfig(shards="s", out="o", preset=name, arch=arch).resolved().arch == arch


def test_the_cli_builds_the_architecture_it_is_given(assets, tmp_path, capsys):
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "run", "--preset", "gpt3-small",
                               "--arch", "gpt1", "--n-ctx", "32", "--batch-size", "2", "--device", "cpu", "--dry-run"],
                              capsys)
    assert result.code == 0, result.err
    assert re.search(r"^model .*arch=gpt1", result.out, re.M) and re.search(r"^settings .*arch=gpt1", result.out, re.M)
    result = support.run_main(["pretrain", "--shards", assets.shards, "--out", tmp_path / "run", "--preset", "gpt3-small",
                               "--n-ctx", "32", "--batch-size", "2", "--device", "cpu", "--dry-run"], capsys)
    assert result.code == 0, result.err
    assert re.search(r"^model .*arch=gpt2", result.out, re.M)
