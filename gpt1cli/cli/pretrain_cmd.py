"""`gpt1 pretrain`: train a GPT decoder on token shards (language-modelling objective L1)."""

from __future__ import annotations

import math

import typer
from rich.console import Console
from rich.markup import escape

from ..progress import console as make_console
from ..train.distributed import world_from_env
from ..train.memory import human_bytes
from ..train.pretrain import pretrain as run_pretrain
from ..train.pretrain_config import PretrainConfig
from .options import Options, command


@command(PretrainConfig)
def pretrain(
    options: Options,
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, print the parameters, FLOPs per token, memory estimate and settings, and exit without writing anything."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or progress lines."),
) -> None:
    """Pre-train a GPT decoder on token shards; checkpoints are safetensors + JSON."""
    config = options.config(PretrainConfig)
    # Options typed on the command line: on --resume each must agree with the run's saved settings.
    summary = run_pretrain(config, show_progress=not quiet, dry_run=dry_run, given=options.given)
    if world_from_env().rank != 0:
        return
    console = make_console()
    if summary.get("dry_run"):
        _print_plan(console, summary)
        return
    val = summary.get("val") or {}
    figures = (f"loss {summary['loss']:.4f}, val loss {val.get('loss', math.nan):.4f}, ppl {val.get('ppl', math.nan):.2f}, "
               f"bpb {val.get('bpb', math.nan):.4f}")
    if summary.get("nothing_to_do"):
        console.print(escape(
            f"nothing to do: {config.out} already reached step {summary['stopped_at']} ({summary['limit']}); "
            f"its figures at that step: {figures}, {summary.get('tokens_per_s', math.nan):,.0f} tokens/s; "
            f"checkpoints in {config.out}/checkpoints (pass a larger --steps to train further)"))
        return
    console.print(escape(
        f"trained to step {summary['stopped_at']} of {summary['steps']}: {figures}; "
        f"{summary.get('tokens_per_s', float('nan')):,.0f} tokens/s ({summary['kernels']}, {summary['precision']})"
        + (f"; {summary['overflow_steps']} fp16 overflow steps skipped" if summary.get("overflow_steps") else "")
        + f"; checkpoints in {config.out}/checkpoints"
    ))


def _print_plan(console: Console, plan: dict) -> None:
    """The dry run's report: what the run would be and cost."""
    memory = plan["memory"]
    estimate = memory["estimate"]
    model = plan["model"]
    available = memory["available"]
    fits = available is None or memory["needed"] <= available
    lines = [
        f"dry run: nothing written ({plan['out']} untouched)",
        f"parameters       {plan['parameters']:,}",
        f"FLOPs per token  {plan['flops_per_token']:.4g} (6 x parameters + 12 x layers x d_model x n_ctx, forward and backward)",
        f"tokens per step  {plan['tokens_per_step']:,} ({plan['config']['batch_size']} x {model['n_ctx']}; micro-batch "
        f"{plan['micro_batch']} on each of {plan['world_size']} process(es))",
        f"FLOPs per step   {plan['flops_per_token'] * plan['tokens_per_step']:.4g}",
        f"memory estimate  {human_bytes(estimate.total)} per process: {human_bytes(estimate.state)} weights, gradients and "
        f"AdamW state (16 bytes x parameters), {human_bytes(estimate.activations)} activations of a micro-batch, "
        f"{human_bytes(estimate.data)} sampled windows; {human_bytes(estimate.checkpoint)} while a checkpoint is written"
        + (f"; x {memory['sharing']} processes on this machine" if memory["sharing"] > 1 else ""),
        f"memory available {human_bytes(available) if available is not None else 'unknown'} on {plan['device']}: "
        + ("fits" if fits else "does NOT fit; the run would be refused"),
        f"steps            {plan['start_step']} -> {plan['end_step']} of {plan['config']['steps']}",
        f"precision        {plan['precision']}",
        f"kernels          {plan['kernels']}",
        "model            " + ", ".join(f"{k}={v}" for k, v in model.items()),
        "settings         " + ", ".join(f"{k}={v}" for k, v in plan["config"].items()),
    ]
    for line in lines:
        console.print(escape(line))
