"""How an optimiser's state is stored in a training checkpoint, and restored for ``--resume``.

``trainer.safetensors`` holds one tensor per parameter and moment, named
``optim.<parameter name>.<key>`` (``exp_avg``, ``exp_avg_sq``, ``step``); ``trainer.json`` holds
the parameter groups (settings, and the parameters by name). This is PyTorch's *full* optimiser
state keyed by parameter name, flattened: an FSDP2-sharded run gathers it with
``torch.distributed.checkpoint``, an unsharded one reads it off the optimiser, and either resumes
from the other's. The files themselves are written and verified by :mod:`gpt1cli.checkpoint`.
"""

from __future__ import annotations

import torch

from ..errors import Gpt1Error

PREFIX = "optim."


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                    sharded: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """The optimiser's moments as named tensors and its groups as JSON. Sharded, every rank must
    call and rank 0 alone receives the gathered state (the others an empty one)."""
    full = _gathered(model, optimizer) if sharded else _by_name(model, optimizer)
    tensors = {f"{PREFIX}{name}.{key}": value if torch.is_tensor(value) else torch.tensor(value)
               for name, moments in full.get("state", {}).items() for key, value in moments.items()}
    return tensors, [dict(group) for group in full.get("param_groups", [])]


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, groups: list, tensors: dict, *,
                         sharded: bool) -> None:
    """Inverse of :func:`optimizer_state`, once the saved state is known to belong to ``model``."""
    params = dict(model.named_parameters())
    state = _checked(optimizer, params, groups, tensors)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                                 options=StateDictOptions(full_state_dict=True))
        return
    for group, saved in zip(optimizer.param_groups, groups):
        group.update({key: value for key, value in saved.items() if key != "params"})
    for name, moments in state.items():
        optimizer.state[params[name]] = {key: value.to(params[name].device) for key, value in moments.items()}


def _by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What ``torch.distributed.checkpoint`` gathers from shards, read off an unsharded optimiser."""
    names = {param: name for name, param in model.named_parameters()}
    groups, state = [], {}
    for group in optimizer.param_groups:
        groups.append({**{key: value for key, value in group.items() if key != "params"},
                       "params": [names[param] for param in group["params"]]})
        state.update({names[param]: optimizer.state[param] for param in group["params"] if optimizer.state.get(param)})
    return {"state": state, "param_groups": groups}


def _gathered(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _checked(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor], groups: list,
             tensors: dict) -> dict[str, dict[str, torch.Tensor]]:
    """The saved moments by parameter name, after checking they fit this model's parameters."""
    if len(groups) != len(optimizer.param_groups):
        raise Gpt1Error("the saved optimiser state does not match this model (parameter groups differ)")
    state = {}
    for group, saved in zip(optimizer.param_groups, groups):
        names = saved["params"]
        if (len(names) != len(group["params"])
                or not all(isinstance(n, str) and params.get(n) is p for n, p in zip(names, group["params"]))):
            raise Gpt1Error("the saved optimiser state does not match this model (parameters differ)")
        for name in names:
            prefix = f"{PREFIX}{name}."
            moments = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in moments and moments[key].shape != params[name].shape:
                    raise Gpt1Error(f"the saved optimiser state {prefix}{key} has shape {tuple(moments[key].shape)}, "
                                    f"the parameter {tuple(params[name].shape)}: the trainer state does not belong to "
                                    "these weights")
            if moments:
                state[name] = moments
    return state
