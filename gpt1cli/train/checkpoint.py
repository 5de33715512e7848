"""Checkpoints: safetensors tensors + JSON metadata, never pickle.

A run directory keeps ``checkpoints/step_XXXXXXXX/`` folders and a ``checkpoints/latest``
pointer. Each folder is built under a temporary name and renamed into place, then the pointer
is replaced atomically, so a crash at any moment leaves the previous checkpoint loadable.

A checkpoint folder holds:
* ``model.safetensors`` - the weights (the tied output shares the token embedding);
* ``checkpoint.json``   - model config, tokenizer hash, weights hash, task, metrics, step;
* ``tokenizer.model``   - a copy of the tokenizer, so the checkpoint stands alone (another
  tokenizer kind keeps its own suffix; ``checkpoint.json`` names the file);
* ``trainer.safetensors`` + ``trainer.json`` (training checkpoints only) - optimiser moments,
  RNG states and loop state for an exact ``--resume``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..errors import Gpt1Error
from ..fileio import atomic_write_json, atomic_write_text, clean_trash, file_hash, read_json, remove_tree

FORMAT = "gpt1-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
WEIGHTS = "model.safetensors"
META = "checkpoint.json"
TOKENIZER = "tokenizer.model"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_META = "trainer.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it is, its metadata, config and weights."""

    path: Path
    meta: dict
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    trainer_meta: dict | None = None
    trainer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / str(self.meta.get("tokenizer_file", TOKENIZER))

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def task(self) -> dict | None:
        return self.meta.get("task")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    config: ModelConfig,
    tokenizer_path: str | Path,
    meta: dict | None = None,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_meta: dict | None = None,
    keep: int = 3,
    best: bool = False,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically; keep the newest ``keep`` and the best.

    ``best`` marks this checkpoint as the best so far (``checkpoints/best`` names it); the best
    is never pruned.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a writer that was killed
            shutil.rmtree(stale, ignore_errors=True)
        clean_trash(root)
        tmp.mkdir()
        _save_tensors(model_state, tmp / WEIGHTS)
        tokenizer_name = TOKENIZER if Path(tokenizer_path).suffix == ".model" else "tokenizer" + Path(tokenizer_path).suffix
        shutil.copyfile(tokenizer_path, tmp / tokenizer_name)
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "step": step,
            "model": config.to_dict(),
            "weights_blake2b": file_hash(tmp / WEIGHTS),
            "tokenizer_file": tokenizer_name,
            "tokenizer_blake2b": file_hash(tmp / tokenizer_name),
            **(meta or {}),
        }
        if trainer_tensors is not None:
            _save_tensors(trainer_tensors, tmp / TRAINER_TENSORS)
            atomic_write_json(tmp / TRAINER_META, {**(trainer_meta or {}), "tensors_blake2b": file_hash(tmp / TRAINER_TENSORS)})
        atomic_write_json(tmp / META, record)
        _fsync_dir(tmp)
        if final.exists():  # re-writing a step: the old folder vanishes whole, never half-deleted
            remove_tree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST, name + "\n")
        if best:
            atomic_write_text(root / BEST, name + "\n")
    except (OSError, SafetensorError, Gpt1Error) as exc:  # Gpt1Error: an atomic JSON write that failed
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise Gpt1Error(f"cannot write checkpoint {final}: {reason}; the previous checkpoint is intact") from None
    protect = [name]
    if (root / BEST).is_file():
        protect.append((root / BEST).read_text().strip())
    _prune(root, keep, protect=tuple(protect))
    return final


def _prune(root: Path, keep: int, protect: tuple[str, ...]) -> None:
    steps = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for name in steps[:-keep] if keep > 0 else []:
        if name not in protect:
            remove_tree(root / name)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from either that folder or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    pointer = path / CHECKPOINTS / LATEST
    if pointer.is_file():
        target = path / CHECKPOINTS / pointer.read_text().strip()
        if (target / META).is_file():
            return target
        raise Gpt1Error(f"{pointer} names {target.name}, which is missing or incomplete")
    if not path.exists():
        raise Gpt1Error(f"checkpoint not found: {path}")
    raise Gpt1Error(f"{path} is neither a checkpoint nor a run directory with checkpoints")


def _load_tensors(path: Path, expected_hash: str | None, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise Gpt1Error(f"{what} missing: {path}")
    if expected_hash is not None and file_hash(path) != expected_hash:
        raise Gpt1Error(f"{path} does not match the hash recorded with it: the checkpoint is corrupt or truncated")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise Gpt1Error(f"{path} is not a readable safetensors file ({exc})") from None


def _check_shapes(config: ModelConfig, state: dict[str, torch.Tensor], folder: Path) -> None:
    """The recorded settings must describe the stored weights (before any model is built from them)."""
    expected = {
        "tok_emb.weight": (config.vocab_size, config.d_model),
        "pos_emb.weight": (config.n_ctx, config.d_model),
        f"blocks.{config.n_layer - 1}.mlp.fc.weight": (config.d_ff, config.d_model),
    }
    wrong = [f"{name} {tuple(state[name].shape) if name in state else 'missing'} (settings say {shape})"
             for name, shape in expected.items() if name not in state or tuple(state[name].shape) != shape]
    if f"blocks.{config.n_layer}.mlp.fc.weight" in state:
        wrong.append(f"more than n_layer={config.n_layer} blocks")
    if wrong:
        raise Gpt1Error(f"{folder}: the weights do not match {META}: {'; '.join(wrong)}")


def load_checkpoint(path: str | Path, *, with_trainer: bool = False) -> Checkpoint:
    """Load and verify a checkpoint (folder or run directory)."""
    folder = resolve_checkpoint(path)
    meta = read_json(folder / META, "checkpoint metadata")
    if meta.get("format") != FORMAT:
        raise Gpt1Error(f"{folder / META} is not a gpt1 checkpoint")
    if not isinstance(meta.get("model"), dict):
        raise Gpt1Error(f"{folder / META} lacks the model settings: it is corrupt")
    config = ModelConfig.from_dict(meta["model"])
    state = _load_tensors(folder / WEIGHTS, meta.get("weights_blake2b"), "weights")
    _check_shapes(config, state, folder)
    checkpoint = Checkpoint(folder, meta, config, state)
    if not checkpoint.tokenizer_path.is_file():
        raise Gpt1Error(f"{folder} lacks {checkpoint.tokenizer_path.name}: the checkpoint is incomplete")
    if with_trainer:
        if not (folder / TRAINER_META).is_file():
            raise Gpt1Error(f"{folder} holds weights only, no training state to resume from")
        checkpoint.trainer_meta = read_json(folder / TRAINER_META, "trainer state")
        checkpoint.trainer_tensors = _load_tensors(
            folder / TRAINER_TENSORS, checkpoint.trainer_meta.get("tensors_blake2b"), "trainer state"
        )
    return checkpoint


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[torch.Tensor, str]) -> tuple[dict, list]:
    """Flatten an optimizer's per-parameter state into named tensors, and its groups into JSON."""
    tensors, groups = {}, []
    for group in optimizer.param_groups:
        entry = {k: v for k, v in group.items() if k != "params"}
        entry["params"] = [names[p] for p in group["params"]]
        groups.append(entry)
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                tensors[f"optim.{names[param]}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor], groups: list, tensors: dict) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    if len(groups) != len(optimizer.param_groups):
        raise Gpt1Error("the saved optimiser state does not match this model (parameter groups differ)")
    for group, saved in zip(optimizer.param_groups, groups):
        if [params[n] is p for n, p in zip(saved["params"], group["params"])].count(True) != len(group["params"]):
            raise Gpt1Error("the saved optimiser state does not match this model (parameters differ)")
        for key, value in saved.items():
            if key != "params":
                group[key] = value
        for name in saved["params"]:
            param = params[name]
            prefix = f"optim.{name}."
            state = {k[len(prefix):]: v.to(param.device) for k, v in tensors.items() if k.startswith(prefix)}
            if state:
                optimizer.state[param] = state


def optimizer_to_full_state(full: dict) -> tuple[dict, list]:
    """Our flat layout from ``torch.distributed.checkpoint``'s full optimiser state (keyed by name)."""
    tensors = {}
    for name, state in full["state"].items():
        for key, value in state.items():
            tensors[f"optim.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, [dict(group) for group in full["param_groups"]]


def optimizer_from_full_state(model, optimizer, groups: list, tensors: dict) -> None:
    """Load our flat layout into an optimiser over sharded parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    state: dict[str, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, _, field = key[len("optim."):].rpartition(".")
            state.setdefault(name, {})[field] = value
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
