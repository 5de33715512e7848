"""The optimisation every training loop shares: pre-training and each fine-tuning task kind.

A loop supplies its objective (``forward_backward``: back-propagate the loss of one step's batch
and return the figures to log, ``loss`` first) and decides when to log, evaluate and checkpoint.
A :class:`Trainer` does the rest the same way for all of them: the optimiser with its parameter
groups, the learning rate of each step, dropout masks seeded by the step (so a resumed run draws
the masks an uninterrupted one would), gradient clipping, the precision (bf16 or fp16 autocast, or fp32; fp16 with a loss scaler), the
non-finite guard (a step whose loss or gradient is not finite is skipped, the weights left as
they were), the train-state in one layout sharded or not, and graceful stops on SIGINT and SIGTERM.

Under fp16 a finite loss whose scaled gradient overflowed is the loss scaler's business, not the
guard's: the step is skipped, the scale lowered, and the step counts as done (an *overflow*, in
``metrics.jsonl`` and the summary), not as a bad step. Only once the scale has fallen below
:data:`MIN_LOSS_SCALE` is a non-finite gradient taken for what it then is, a bad step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn

import torch

from ..errors import Gpt1Error, TrainingStopped
from ..progress import Bar, progress_bar
from ..runtime import autocast, grad_scaler, precision_scope, resolve_precision, step_seed
from ..signals import StopRequest, graceful_stop
from .distributed import World, any_rank, full_model_state, wrap_model
from .metrics_log import MetricsLog
from .optim import make_optimizer
from .optimizer_state import load_optimizer_state, optimizer_state


def due(done: int, every: int, last: int) -> bool:
    """Whether a periodic action (a log line, an evaluation, a checkpoint) falls after step ``done``."""
    return done % every == 0 or done == last


MIN_LOSS_SCALE = 1.0  # below it an fp16 gradient overflow is no longer the scaler's to absorb
SCALER_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")


@dataclass
class SkippedSteps:
    """The non-finite guard's count: steps skipped in a row (a run gives up at ``--max-bad-steps``)
    and in all, and whether the last step was one; and the fp16 loss scaler's skipped steps
    (overflows, which are not bad steps)."""

    bad_steps: int = 0
    skipped_steps: int = 0
    last_step_bad: bool = False
    overflow_steps: int = 0


@dataclass
class StepResult:
    """What one step did, for the loop to log."""

    done: int  # steps done, this one included
    lr: float
    figures: dict | None  # the objective's; None when it had no batch for this step
    grad_norm: float = math.nan
    applied: bool = False  # False: skipped, the loss or the gradient was not finite
    overflow: bool = False  # skipped by the fp16 loss scaler (a finite loss, an overflowed gradient)

    @property
    def good(self) -> bool:
        """The step is done and the weights are sound: applied, or skipped by the loss scaler."""
        return self.applied or self.overflow


@dataclass
class TrainState:
    """The full weights and optimiser state (on rank 0 alone when sharded)."""

    model: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_groups: list[dict]
    finite: bool  # every weight on every rank
    not_finite: str | None  # the first weight of this rank that is not
    scaler: dict | None = None  # the fp16 loss scaler's state (None for bf16 and fp32)


def run_precision(precision: str | None, device: torch.device, *, sharded: bool) -> str:
    """The precision a training run computes in (``--precision``; None: auto), checked against its
    device and parallelism."""
    resolved = resolve_precision(precision, device)
    if sharded and resolved == "fp16":
        raise Gpt1Error("--precision fp16 needs a loss scaler, which runs with --parallel ddp only: use --precision "
                        "bf16 or --parallel ddp")
    if sharded and torch.device(device).type == "cuda" and resolved != "bf16":
        raise Gpt1Error(f"--parallel fsdp computes in bf16 on CUDA, so --precision {resolved} cannot apply: "
                        "use --precision bf16 or --parallel ddp")
    return resolved


class Trainer:
    """A model's optimisation: placed on ``device``, wrapped for data parallelism (``parallel``),
    stepped by AdamW at the learning rate ``schedule(step)`` in ``precision`` (``--precision``;
    None: auto); skipped steps and stops go to ``log``."""

    def __init__(self, model: torch.nn.Module, *, world: World, device: torch.device, parallel: str, lr: float,
                 weight_decay: float, grad_clip: float, seed: int, schedule: Callable[[int], float], log: MetricsLog,
                 precision: str | None = None):
        self.sharded = world.distributed and parallel == "fsdp"
        self.precision = run_precision(precision, device, sharded=self.sharded)
        self.scaler = grad_scaler(self.precision, device)
        self.model = model.to(device)
        self.world, self.device = world, device
        self.wrapped = wrap_model(model, parallel, world, device)
        self.optimizer = make_optimizer(model, lr, weight_decay)
        self.grad_clip, self.seed, self.schedule, self.log = grad_clip, seed, schedule, log
        self._stop: StopRequest | None = None

    @property
    def eval_model(self) -> torch.nn.Module:
        """The module to evaluate with: a sharded model evaluates in its shards."""
        return self.wrapped if self.sharded else self.model

    def train_mode(self) -> None:
        self.model.train()
        self.wrapped.train()

    # --- steps

    def autocast(self):
        """The forward pass's autocast for the run's precision."""
        return autocast(self.device, self.precision)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled under fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, step: int, forward_backward: Callable[[], dict | None], skipped: SkippedSteps,
             bar: Bar) -> StepResult:
        """Optimiser step ``step`` (0-based): apply it, or skip it when not finite (counted in ``skipped``)."""
        lr = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(step_seed(self.seed, self.world.rank, step))
        figures = forward_backward()
        if figures is None:
            return StepResult(step + 1, lr, None)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clipping and the guard see the true gradient
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        applied = math.isfinite(figures["loss"]) and math.isfinite(grad_norm)
        overflow = (not applied and self.scaler is not None and math.isfinite(figures["loss"])
                    and self.scaler.get_scale() >= MIN_LOSS_SCALE)
        if applied:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            skipped.bad_steps, skipped.last_step_bad = 0, False
        elif overflow:
            self.scaler.step(self.optimizer)  # skips the update: the unscaled gradient holds an inf or a nan
            self.scaler.update()  # and lowers the scale
            skipped.overflow_steps += 1
            skipped.last_step_bad = False
            self.log.write("overflow", step=step + 1, loss=figures["loss"], scale=self.scaler.get_scale())
        else:
            if self.scaler is not None:
                self.scaler.update(self.scaler.get_scale())  # a bad step leaves the scaler as it was
            skipped.bad_steps += 1
            skipped.skipped_steps += 1
            skipped.last_step_bad = True
            self.log.write("skip", step=step + 1, loss=figures["loss"], grad_norm=grad_norm)
            bar.log(f"[yellow]step {step + 1}: non-finite loss or gradient, step skipped ({skipped.bad_steps} in a row)")
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(step + 1, lr, figures, grad_norm, applied, overflow)

    # --- stops

    @contextlib.contextmanager
    def running(self, description: str, total: int, done: int, *, show_progress: bool) -> Iterator[Bar]:
        """The block of steps: a progress bar from ``done`` of ``total`` (plain lines when the caller passes
        a status, if standard error is not a terminal), SIGINT and SIGTERM asking to stop, and the run's
        precision for every :func:`~gpt1cli.runtime.autocast` inside (evaluations, a task kind's loss)."""
        with graceful_stop() as request, precision_scope(self.precision), \
                progress_bar(description, total, enabled=show_progress, unit="step", completed=done, every_s=None) as bar:
            self._stop = request
            yield bar

    def stop_requested(self) -> bool:
        """Whether a stop signal reached any rank (every rank asks after the same step)."""
        return any_rank(self._stop.requested, self.world, self.device)

    def stopped(self, step: int, checkpoint: str) -> NoReturn:
        """End a run stopped on request whose state at ``step`` is in ``checkpoint`` (the CLI exits 75)."""
        self.log.write("stop", step=step, signal=self._stop.signal)
        raise TrainingStopped(step, checkpoint)

    # --- the train-state

    def train_state(self) -> TrainState:
        """The state to checkpoint, gathered from the shards (every rank must call)."""
        weights = full_model_state(self.wrapped) if self.sharded else self.model.state_dict()
        tensors, groups = optimizer_state(self.model, self.optimizer, sharded=self.sharded)
        broken = next((name for name, tensor in weights.items()
                       if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())), None)
        finite = not any_rank(broken is not None, self.world, self.device)
        scaler = self.scaler.state_dict() if self.scaler is not None else None
        return TrainState(weights, tensors, groups, finite, broken, scaler)

    def restore(self, groups: list, tensors: dict, scaler: dict | None = None, *, source=None) -> None:
        """Load a train-state's optimiser state (its weights are loaded before the Trainer wraps the model)
        and, under fp16, its loss scaler's (a run that was not fp16 before starts a fresh scaler)."""
        load_optimizer_state(self.model, self.optimizer, groups, tensors, sharded=self.sharded)
        if self.scaler is not None and scaler is not None:
            self.scaler.load_state_dict(checked_scaler(scaler, source))


def checked_scaler(state, source) -> dict:
    """A saved loss-scaler state, checked before it is used."""
    ok = isinstance(state, dict) and set(state) == set(SCALER_KEYS) and all(
        not isinstance(state[key], bool) and isinstance(state[key], (int, float)) and math.isfinite(state[key])
        for key in SCALER_KEYS) and state["scale"] > 0 and state["_growth_tracker"] >= 0
    if not ok:
        raise Gpt1Error(f"{source or 'the training state'} records a loss scaler state that is not one: it is corrupt")
    return state
