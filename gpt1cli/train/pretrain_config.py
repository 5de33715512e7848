"""The settings of a pre-training run, each declared once with its default, help text and rule.

`gpt1 pretrain`'s options, the checks of a config built in Python or read back from a run, what
``--resume`` may change and the run config saved with every checkpoint all follow from the fields
of :class:`PretrainConfig`. A default of None means "the preset's" (architecture, steps, batch
size, learning rate) or the setting's fallback (the run-management cadences), filled by
:meth:`PretrainConfig.resolved`; on resume, "as the run has it".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..checks import SEED, within
from ..config import ARCHS, ATTENTION, MAX_SIZE, PRESETS, ModelConfig, Preset
from ..errors import Gpt1Error
from ..runtime import DEVICE_HELP, PRECISION_DEFAULT, PRECISION_HELP, device_rule, precision_rule
from ..tracking import trackers_rule
from ..settings import (
    ANEW,
    FIXED,
    MAY_CHANGE,
    boolean,
    check_settings,
    chosen,
    fallbacks,
    names,
    one_of,
    option_name,
    path,
    setting,
    shown,
)
from .distributed import PARALLEL_MODES

MAX_COUNT = 2**62  # steps, batch sizes, token counts: beyond any real run, within every integer type used
YEAR_S = 365 * 24 * 3600
MAX_WARMUP = 2000  # the paper's warm-up; a shorter run warms up for a tenth of its steps

SIZE = within(int, "positive", minimum=1, maximum=MAX_SIZE)
COUNT = within(int, "positive", minimum=1, maximum=MAX_COUNT)
POSITIVE = within(float, "positive and finite", above=0)


def _preset_default(name: str, *examples: str) -> str:
    """How --help shows a default the preset sets: "the preset's; tiny 200"."""
    return "the preset's; " + ", ".join(f"{example} {shown(getattr(PRESETS[example], name))}" for example in examples)


_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


@dataclass
class PretrainConfig:
    """Everything a pre-training run depends on (None: the preset's or the run's default)."""

    shards: str = setting(help="Shard directory written by `gpt1 tokenize`.", rule=path, on_resume=MAY_CHANGE)
    out: str = setting(help="Run directory: checkpoints/, metrics.jsonl.", flags=("--out", "-o"), rule=path,
                       on_resume=ANEW)
    init_from: str | None = setting(None, "Start from the weights of this checkpoint or run directory (e.g. one made by "
                                    "convert --from-hf or --from-openai): its model and tokenizer (the shards must be "
                                    "tokenized with it), a fresh optimiser and schedule.", rule=path,
                                    show_default="none: random initialisation")
    preset: str = setting("tiny", f"Model size: {', '.join(PRESETS)} (gpt1 = the paper's 12 x 768; gpt3-* = the GPT-3 "
                          "table).", rule=one_of(tuple(PRESETS), "preset"))
    arch: str | None = setting(None, "gpt1 (post-LN) or gpt2 (pre-LN, final LayerNorm, scaled residual init).",
                               rule=one_of(ARCHS, "architecture"), show_default=_preset_default("arch", "tiny", "gpt3-small"))
    n_ctx: int | None = setting(None, "Context length.", rule=SIZE, show_default="the preset's")
    attention: str = setting("dense", "dense, or alternating: every second layer locally banded (GPT-3's sparse layers).",
                             rule=one_of(ATTENTION, "attention"))
    window: int | None = setting(None, "Band width of the banded layers, in tokens.", rule=SIZE,
                                 show_default=str(_MODEL_DEFAULTS["window"]))
    steps: int | None = setting(None, "Optimiser steps.", rule=COUNT, show_default=_preset_default("steps", "tiny"),
                                on_resume=MAY_CHANGE)
    batch_size: int | None = setting(None, "Sequences per step, over all micro-steps.", rule=COUNT,
                                     show_default=_preset_default("batch_size", "gpt1"))
    grad_accum: int = setting(1, "Micro-steps per optimiser step (batch-size is split over them).", rule=COUNT)
    lr: float | None = setting(None, "Peak learning rate (positive).", rule=POSITIVE,
                               show_default=_preset_default("lr", "gpt1"))
    warmup: int | None = setting(None, "Linear warm-up steps before cosine decay.",
                                 rule=within(int, ">= 0", minimum=0, maximum=MAX_COUNT),
                                 show_default=f"{MAX_WARMUP} or steps/10, whichever is smaller")
    weight_decay: float = setting(0.01, "AdamW decay on weights (not biases or gains); >= 0.",
                                  rule=within(float, ">= 0 and finite", minimum=0))
    # 0 would zero every update and a negative norm reverses the gradient: neither means "off".
    grad_clip: float = setting(1.0, "Gradient-norm clipping threshold (positive).", rule=POSITIVE)
    dropout: float = setting(0.1, "Dropout on embeddings, residuals and attention weights, in [0, 1).",
                             rule=within(float, "in [0, 1)", minimum=0, below=1))
    seed: int = setting(0, "Seed of initialisation, dropout and batch order (0 to 2^63 - 1).",
                        rule=within(int, "in [0, 2^63 - 1]", **SEED))
    eval_every: int | None = setting(None, "Evaluate on the validation split every N steps.", rule=COUNT, fallback=100,
                                     on_resume=MAY_CHANGE)
    eval_tokens: int | None = setting(None, "Validation tokens per evaluation.", rule=COUNT, fallback=65_536,
                                      on_resume=MAY_CHANGE)
    ckpt_every: int | None = setting(None, "Write a checkpoint every N steps (and at the end).", rule=COUNT, fallback=500,
                                     on_resume=MAY_CHANGE)
    keep: int | None = setting(None, "Checkpoints kept (oldest removed first), besides the best by validation loss.",
                               rule=within(int, "at least 1", minimum=1, maximum=MAX_COUNT), fallback=3,
                               on_resume=MAY_CHANGE)
    log_every: int | None = setting(None, "Log training metrics every N steps.", rule=COUNT, fallback=10,
                                    on_resume=MAY_CHANGE)
    log: str | None = setting(None, "Also send the metrics to trackers, comma-separated: tensorboard (RUN/tensorboard/), "
                              "wandb (offline unless a W&B API key is set or WANDB_MODE says otherwise), csv "
                              "(RUN/metrics.csv).", rule=trackers_rule, show_default="none", on_resume=MAY_CHANGE)
    max_bad_steps: int | None = setting(None, "Stop after this many non-finite steps in a row.", rule=COUNT, fallback=10,
                                        on_resume=MAY_CHANGE)
    # Per invocation: a resumed run does not inherit the step the last invocation stopped after.
    stop_after: int | None = setting(None, "End this invocation after step N (checkpointed) without changing the "
                                     "schedule.", rule=COUNT, on_resume=ANEW)
    device: str = setting("auto", DEVICE_HELP, rule=device_rule, on_resume=MAY_CHANGE)
    # None: auto (recorded as None; the run's log records what it resolved to on its device).
    precision: str | None = setting(None, PRECISION_HELP, rule=precision_rule, show_default=PRECISION_DEFAULT,
                                    on_resume=MAY_CHANGE)
    compile: bool = setting(False, "torch.compile the model.", flags=("--compile",), rule=boolean)
    parallel: str | None = setting(None, "Under torchrun: ddp (replicated) or fsdp (FSDP2, blocks sharded, bf16 on "
                                   "CUDA).", rule=one_of(PARALLEL_MODES), fallback="ddp", on_resume=MAY_CHANGE)
    dist_timeout: float | None = setting(None, "Seconds a rank waits for the others before the job fails.",
                                         rule=within(float, "positive and finite", above=0, maximum=YEAR_S),
                                         fallback=600.0, on_resume=MAY_CHANGE)
    resume: bool = setting(False, "Continue the run in --out from its latest checkpoint, exactly, with its saved "
                           "settings (only --shards, --device, --precision, --steps, --stop-after, --parallel, "
                           "--dist-timeout, --max-bad-steps, --log and the logging, evaluation and checkpoint cadences may be given anew; other "
                           "options must match the run). A run without a checkpoint yet starts from step 0.",
                           flags=("--resume",), rule=boolean, on_resume=ANEW)

    def check(self) -> "PretrainConfig":
        """Check every setting's type and range (the one place, for the CLI, Python callers and resumed runs)."""
        check_settings(self)
        return self

    def resolved(self) -> "PretrainConfig":
        """Fill the preset's and the run's defaults and check ranges."""
        self.check()
        record = PRESETS[self.preset]
        unset = {name for name in names(self) if getattr(self, name) is None}
        cfg = dataclasses.replace(
            self,
            **{name: value for name, value in fallbacks(self).items() if name in unset},
            **{name: getattr(record, name) for name in FROM_PRESET if name in unset},
            shards=os.fspath(self.shards),
            out=os.fspath(self.out),
        )
        if cfg.warmup is None:
            cfg.warmup = min(MAX_WARMUP, max(1, cfg.steps // 10))
        cfg.check()
        if cfg.batch_size % cfg.grad_accum:
            raise Gpt1Error(f"--batch-size {cfg.batch_size} must be divisible by --grad-accum {cfg.grad_accum}")
        return cfg

    def explicit(self) -> set[str]:
        """Settings that differ from the defaults (what a Python caller chose)."""
        return chosen(self)


# Settings a preset record supplies when they are left unset (its architecture and training defaults).
FROM_PRESET = tuple(f.name for f in dataclasses.fields(Preset) if f.name in names(PretrainConfig))
# The run-management defaults: what None stands for once the run is resolved.
RUN_DEFAULTS = fallbacks(PretrainConfig)
# Settings the model records as well: a resumed run compares them with the model it continues.
MODEL_SETTINGS = ("arch", "n_ctx", "window")


def flag(name: str) -> str:
    """The option that sets ``name`` (``--batch-size``), for messages."""
    return option_name(PretrainConfig, name)


def continued(config: PretrainConfig, saved: dict, source, model: dict, given: set[str]) -> PretrainConfig:
    """The saved settings ``saved`` of a run (from ``source``), with what may change on resume taken from ``config``.

    A setting the caller chose that the run cannot honour (it would not continue the same run)
    is an error naming it, never silently ignored. ``model`` is the run's model settings (the
    architecture, context and window it really has, whatever the preset left unset).
    """
    unknown = sorted(set(saved) - set(names(PretrainConfig)))
    if unknown:
        raise Gpt1Error(f"{source} records unknown settings {unknown}: the run is from a newer or other tool")
    try:
        saved_config = PretrainConfig(**saved)
    except TypeError as exc:
        raise Gpt1Error(f"{source} lacks run settings ({exc}): it is corrupt") from None
    conflicts = []
    for name in sorted(set(given) & set(names(PretrainConfig, FIXED))):
        value, before = getattr(config, name), getattr(saved_config, name)
        if name in MODEL_SETTINGS and name in model:
            before = model[name]
        if value != before:
            now = "on" if value is True else "off" if value is False else value
            had = "on" if before is True else "off" if before is False else before
            conflicts.append(f"{flag(name)} {now} (the run has {had})")
    if conflicts:
        may = ", ".join(flag(name) for name in names(PretrainConfig, MAY_CHANGE))
        raise Gpt1Error(f"--resume continues the run in {config.out} with its own settings and cannot honour "
                        f"{'; '.join(conflicts)}: leave {'it' if len(conflicts) == 1 else 'them'} out, or start a new "
                        f"run in another --out (on resume only {may} may change)")
    changes = {name: getattr(config, name) for name in names(PretrainConfig, MAY_CHANGE) if getattr(config, name) is not None}
    merged = dataclasses.replace(saved_config, **changes, **{name: getattr(config, name) for name in names(PretrainConfig, ANEW)})
    try:
        return merged.resolved()
    except Gpt1Error as exc:
        raise Gpt1Error(f"{source}: {exc}") from None
