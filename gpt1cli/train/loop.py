"""The optimisation every training loop shares: pre-training and each fine-tuning task kind.

A loop supplies its objective (``forward_backward``: back-propagate the loss of one step's batch
and return the figures to log, ``loss`` first) and decides when to log, evaluate and checkpoint.
A :class:`Trainer` does the rest the same way for all of them: the optimiser with its parameter
groups, the learning rate of each step, dropout masks seeded by the step (so a resumed run draws
the masks an uninterrupted one would), gradient clipping, the non-finite guard (a step whose loss
or gradient is not finite is skipped, the weights left as they were), the train-state in one
layout sharded or not, and graceful stops on SIGINT and SIGTERM.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn

import torch

from ..errors import TrainingStopped
from ..progress import Bar, progress_bar
from ..runtime import step_seed
from ..signals import StopRequest, graceful_stop
from .distributed import World, any_rank, full_model_state, wrap_model
from .metrics_log import MetricsLog
from .optim import make_optimizer
from .optimizer_state import load_optimizer_state, optimizer_state


def due(done: int, every: int, last: int) -> bool:
    """Whether a periodic action (a log line, an evaluation, a checkpoint) falls after step ``done``."""
    return done % every == 0 or done == last


@dataclass
class SkippedSteps:
    """The non-finite guard's count: steps skipped in a row (a run gives up at ``--max-bad-steps``)
    and in all, and whether the last step was one."""

    bad_steps: int = 0
    skipped_steps: int = 0
    last_step_bad: bool = False


@dataclass
class StepResult:
    """What one step did, for the loop to log."""

    done: int  # steps done, this one included
    lr: float
    figures: dict | None  # the objective's; None when it had no batch for this step
    grad_norm: float = math.nan
    applied: bool = False  # False: skipped, the loss or the gradient was not finite


@dataclass
class TrainState:
    """The full weights and optimiser state (on rank 0 alone when sharded)."""

    model: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_groups: list[dict]
    finite: bool  # every weight on every rank
    not_finite: str | None  # the first weight of this rank that is not


class Trainer:
    """A model's optimisation: placed on ``device``, wrapped for data parallelism (``parallel``),
    stepped by AdamW at the learning rate ``schedule(step)``; skipped steps and stops go to ``log``."""

    def __init__(self, model: torch.nn.Module, *, world: World, device: torch.device, parallel: str, lr: float,
                 weight_decay: float, grad_clip: float, seed: int, schedule: Callable[[int], float], log: MetricsLog):
        self.model = model.to(device)
        self.world, self.device = world, device
        self.sharded = world.distributed and parallel == "fsdp"
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
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip))
        applied = math.isfinite(figures["loss"]) and math.isfinite(grad_norm)
        if applied:
            self.optimizer.step()
            skipped.bad_steps, skipped.last_step_bad = 0, False
        else:
            skipped.bad_steps += 1
            skipped.skipped_steps += 1
            skipped.last_step_bad = True
            self.log.write("skip", step=step + 1, loss=figures["loss"], grad_norm=grad_norm)
            bar.log(f"[yellow]step {step + 1}: non-finite loss or gradient, step skipped ({skipped.bad_steps} in a row)")
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(step + 1, lr, figures, grad_norm, applied)

    # --- stops

    @contextlib.contextmanager
    def running(self, description: str, total: int, done: int, *, show_progress: bool) -> Iterator[Bar]:
        """The block of steps: a progress bar from ``done`` of ``total``, SIGINT and SIGTERM asking to stop."""
        with graceful_stop() as request, progress_bar(description, total, enabled=show_progress, count=True) as bar:
            self._stop = request
            bar.advance(done)
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
        return TrainState(weights, tensors, groups, finite, broken)

    def restore(self, groups: list, tensors: dict) -> None:
        """Load a train-state's optimiser state (its weights are loaded before the Trainer wraps the model)."""
        load_optimizer_state(self.model, self.optimizer, groups, tensors, sharded=self.sharded)
