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
  RNG states and loop state for an exact ``--resume`` (the optimiser's layout in them is
  :mod:`gpt1cli.train.optimizer_state`'s).

This module sits below the model, training, tasks and interop layers, which all read or write
checkpoints; it knows the model only by its settings (:class:`~gpt1cli.config.ModelConfig`).
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checks import check_number
from .config import ModelConfig
from .errors import Gpt1Error
from .fileio import (atomic_write_json, atomic_write_text, clean_trash, file_hash, follow_umask, plain_name, read_json,
                     remove_tree)

FORMAT = "gpt1-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
TRAIN_STATE = "train-state"  # a fine-tuning run's resumable state (its checkpoints/ hold the best model)
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
        return self.path / plain_name(self.meta.get("tokenizer_file", TOKENIZER), "tokenizer file", self.path / META)

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
    follow_umask(path)  # safetensors creates 0600
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
    tokenizer_bytes: bytes | None = None,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically; keep the newest ``keep`` and the best.

    ``best`` marks this checkpoint as the best so far (``checkpoints/best`` names it); the best
    is never pruned. ``tokenizer_bytes``, when given, is written as the tokenizer instead of a
    copy of ``tokenizer_path`` (whose suffix still names the file): a run stores the tokenizer it
    checked at its start, whatever happens to the source file later.
    """
    root = Path(run_dir) / CHECKPOINTS
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(root)
        tmp.mkdir()
        _save_tensors(model_state, tmp / WEIGHTS)
        tokenizer_name = TOKENIZER if Path(tokenizer_path).suffix == ".model" else "tokenizer" + Path(tokenizer_path).suffix
        if tokenizer_bytes is not None:
            (tmp / tokenizer_name).write_bytes(tokenizer_bytes)
        else:
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
        _move_into_place(tmp, final)
        _fsync_dir(root)
        atomic_write_text(root / LATEST, name + "\n")
        if best:
            atomic_write_text(root / BEST, name + "\n")
    except (OSError, SafetensorError, Gpt1Error) as exc:  # Gpt1Error: an atomic JSON write that failed
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or str(exc)
        raise Gpt1Error(f"cannot write checkpoint {final}: {reason}; the previous checkpoint is intact") from None
    protect = [name]
    best_name = read_pointer(root / BEST, strict=False)
    if best_name:
        protect.append(best_name)
    _prune(root, keep, protect=tuple(protect))
    return final


def _clean_leftovers(root: Path) -> None:
    """Remove what killed writers left in ``root``: checkpoint folders and pointer files being
    written (hidden names no reader looks at) and folders being deleted."""
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".*.tmp"):  # atomic_write_text's temporary pointer files
        if stale.is_file():
            stale.unlink(missing_ok=True)
    clean_trash(root)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``.

    Re-writing a step that exists (a resumed run redoing a step whose folder was written but not
    yet named by ``latest``, or any caller saving a step twice) swaps the folders atomically, so
    no moment exists at which ``final`` is missing while a pointer may name it. Where the swap
    is unsupported, the old folder is renamed away whole first (never left half-deleted).
    """
    if final.exists():
        if _exchange(tmp, final):
            remove_tree(tmp)  # now the old folder
            return
        remove_tree(final)
    os.replace(tmp, final)


def _prune(root: Path, keep: int, protect: tuple[str, ...]) -> None:
    steps = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for name in steps[:-keep] if keep > 0 else []:
        if name not in protect:
            remove_tree(root / name)


def read_pointer(pointer: str | Path, *, strict: bool = True) -> str | None:
    """The folder name that ``checkpoints/latest`` (or ``best``) holds; None when there is no pointer.

    A pointer that is not a short line of text naming a plain folder is an error (``strict``) or
    ignored.
    """
    pointer = Path(pointer)
    try:
        with open(pointer, "rb") as handle:
            data = handle.read(4097)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not strict:
            return None
        raise Gpt1Error(f"cannot read {pointer}: {exc.strerror or exc}") from None
    try:
        if len(data) > 4096:
            raise ValueError("too long")
        return plain_name(data.decode("ascii").strip(), "checkpoint folder", pointer)
    except (UnicodeDecodeError, ValueError, Gpt1Error):
        if not strict:
            return None
        raise Gpt1Error(f"{pointer} does not hold a checkpoint folder name (it is corrupt): write the name of a "
                        f"complete step_XXXXXXXX folder of {pointer.parent} into it, or remove it") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from either that folder or a run directory: a pre-training run's latest
    checkpoint, a fine-tuning run's (it keeps ``train-state/``) best, the one it is used through."""
    path = Path(path)
    if (path / META).is_file():
        return path
    root = path / CHECKPOINTS
    pointer = root / (BEST if (path / TRAIN_STATE).is_dir() and (root / BEST).is_file() else LATEST)
    if pointer.is_file():
        target = path / CHECKPOINTS / read_pointer(pointer)
        if (target / META).is_file():
            return target
        raise Gpt1Error(f"{pointer} names {target.name!r}, which is missing or incomplete")
    if not path.exists():
        raise Gpt1Error(f"checkpoint not found: {path}")
    raise Gpt1Error(f"{path} is neither a checkpoint nor a run directory with checkpoints")


def _load_tensors(path: Path, expected_hash: str | None, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise Gpt1Error(f"{what} missing: {path}")
    if not isinstance(expected_hash, str):
        raise Gpt1Error(f"no hash of {path} is recorded with it: the checkpoint metadata is corrupt or not ours")
    if file_hash(path) != expected_hash:
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


def _recorded_step(value, source: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Gpt1Error(f"{source} records step {value!r}, not a whole number: it is corrupt")
    try:
        return check_number(value, "step", minimum=0, maximum=2**62)
    except Gpt1Error:
        raise Gpt1Error(f"{source} records step {value!r}, outside 0..2^62: it is corrupt") from None


def _check_trainer_meta(trainer: dict, step: int, source: Path) -> None:
    """The loop state a resume relies on, checked before any of it is used."""
    if _recorded_step(trainer.get("step"), source) != step:
        raise Gpt1Error(f"{source} records step {trainer.get('step')}, but its checkpoint is step {step}: it is corrupt")
    if not isinstance(trainer.get("config"), dict):
        raise Gpt1Error(f"{source} lacks the run's settings (config): it is corrupt")
    groups = trainer.get("optimizer_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise Gpt1Error(f"{source} lacks the optimiser's parameter groups: it is corrupt")
    for group in groups:
        for key, value in group.items():
            if key in ("lr", "weight_decay", "eps", "initial_lr"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                    raise Gpt1Error(f"{source}: optimiser setting {key} is {value!r}, not a finite number >= 0: it is corrupt")
            elif key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"):
                if value is not None and not isinstance(value, bool):
                    raise Gpt1Error(f"{source}: optimiser setting {key} is {value!r}, not true/false: it is corrupt")
            elif key == "betas":
                if not (isinstance(value, list) and len(value) == 2
                        and all(not isinstance(b, bool) and isinstance(b, (int, float)) and 0 <= b < 1 for b in value)):
                    raise Gpt1Error(f"{source}: optimiser betas {value!r} are not two numbers in [0, 1): it is corrupt")
    best = trainer.get("best_val", math.inf)
    if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):
        raise Gpt1Error(f"{source} records best_val {best!r}, not a number: it is corrupt")


def load_checkpoint(path: str | Path, *, with_trainer: bool = False) -> Checkpoint:
    """Load and verify a checkpoint (folder or run directory): weights, tokenizer and trainer hashes."""
    folder = resolve_checkpoint(path)
    meta = read_json(folder / META, "checkpoint metadata")
    if meta.get("format") != FORMAT:
        raise Gpt1Error(f"{folder / META} is not a gpt1 checkpoint")
    if not isinstance(meta.get("model"), dict):
        raise Gpt1Error(f"{folder / META} lacks the model settings: it is corrupt")
    step = _recorded_step(meta.get("step", 0), folder / META)
    config = ModelConfig.from_dict(meta["model"])
    checkpoint = Checkpoint(folder, meta, config, {})
    tokenizer = checkpoint.tokenizer_path
    if not tokenizer.is_file():
        raise Gpt1Error(f"{folder} lacks {tokenizer.name!r}: the checkpoint is incomplete")
    if file_hash(tokenizer) != meta.get("tokenizer_blake2b"):
        raise Gpt1Error(f"{tokenizer} does not match the tokenizer hash recorded in {folder / META}: the file was "
                        "replaced or damaged; restore the tokenizer the model was trained with")
    checkpoint.state_dict = _load_tensors(folder / WEIGHTS, meta.get("weights_blake2b"), "weights")
    _check_shapes(config, checkpoint.state_dict, folder)
    if with_trainer:
        if not (folder / TRAINER_META).is_file():
            raise Gpt1Error(f"{folder} holds weights only, no training state to resume from")
        checkpoint.trainer_meta = read_json(folder / TRAINER_META, "trainer state")
        _check_trainer_meta(checkpoint.trainer_meta, step, folder / TRAINER_META)
        checkpoint.trainer_tensors = _load_tensors(
            folder / TRAINER_TENSORS, checkpoint.trainer_meta.get("tensors_blake2b"), "trainer state"
        )
    return checkpoint
