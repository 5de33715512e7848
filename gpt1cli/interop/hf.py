"""transformers' GPT directories (``config.json`` + ``model.safetensors``), read and written as files.

Import reads ``OpenAIGPTLMHeadModel`` / ``OpenAIGPTDoubleHeadsModel`` / ``OpenAIGPTModel`` (our
``gpt1`` architecture) and ``GPT2LMHeadModel`` / ``GPT2DoubleHeadsModel`` / ``GPT2Model`` (``gpt2``).
A double-heads model's multiple-choice head (one linear layer on the classification token)
becomes our ``mcq`` task head. ``pytorch_model.bin`` is a pickle and is read only when asked
(``allow_pickle``), with ``torch.load(weights_only=True)``.

The tokenizer comes, in this order, from ``--tokenizer``, from the copy of ours an export leaves
(``gpt1-tokenizer.*``), or from the folder's own files: for OpenAI GPT, ``vocab.json`` +
``merges.txt`` (or the BPE inside ``tokenizer.json``) as the original GPT-1 BPE of
:mod:`gpt1cli.tokenizer.openai_bpe`; for GPT-2, ``tokenizer.json`` (or the byte-level
``vocab.json`` + ``merges.txt``) through the ``tokenizers`` library
(:mod:`gpt1cli.tokenizer.hf_tokenizers`), its end-of-text token as our eos and our other special
tokens appended. Embedding rows for appended special tokens start at the mean token embedding, so
greedy generation is transformers' until fine-tuning.

Export writes the LM-head class of the checkpoint's architecture, or the double-heads class for
an ``mcq`` checkpoint, with the GELU, LayerNorm epsilon and dropouts of ours, so transformers
computes the same function. Our own settings that transformers has no place for (the task and
its label set) travel in ``config.json`` under ``"gpt1cli"`` and come back on import. Beside the
weights: ``tokenizer.json`` (ours as a ``tokenizers`` pipeline, :mod:`gpt1cli.tokenizer.to_tokenizers`)
with ``tokenizer_config.json`` and ``special_tokens_map.json`` for ``AutoTokenizer``,
``generation_config.json`` (greedy, stopping at our eos) and a ``README.md`` model card
(:mod:`.model_card`). The folder and its files follow the umask.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoint import load_checkpoint
from ..config import ModelConfig
from ..errors import Gpt1Error
from ..fileio import atomic_write_bytes, atomic_write_json, plain_name, read_json
from ..tokenizer import load_tokenizer
from ..tokenizer.openai_bpe import ENCODER_NAMES, MERGES_NAMES, SPECIAL_TOKENS, WORD_END, OpenAIBPETokenizer
from .model_card import model_card
from .layout import (
    EMBEDDINGS, HF_BASE, HF_LM_HEAD, HF_MC_HEAD, OUR_HEAD, from_hf, hf_shapes, is_hf_buffer, to_hf,
)
from .problems import Problems
from .runs import ImportSummary, check_against_model, check_empty_target, fit_embedding, staged_directory, write_run

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
OUR_KEY = "gpt1cli"  # our settings inside config.json
OUR_TOKENIZER = "gpt1-tokenizer"  # + the tokenizer's own suffix: a copy of our tokenizer beside the export
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"
MODEL_CARD = "README.md"

MODEL_TYPES = {"openai-gpt": "gpt1", "gpt2": "gpt2"}
HF_TYPE = {arch: model_type for model_type, arch in MODEL_TYPES.items()}
CLASSES = {
    ("gpt1", False): "OpenAIGPTLMHeadModel", ("gpt1", True): "OpenAIGPTDoubleHeadsModel",
    ("gpt2", False): "GPT2LMHeadModel", ("gpt2", True): "GPT2DoubleHeadsModel",
}
# transformers' defaults for keys a config.json may leave out.
DEFAULTS = {
    "openai-gpt": dict(vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12, afn="gelu"),
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                 activation_function="gelu_new", scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                 add_cross_attention=False),
}
COMMON_DEFAULTS = dict(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                       summary_type="cls_index", summary_use_proj=True, summary_activation=None, summary_proj_to_labels=True)
# Our model settings config.json has no key for; the others come from transformers' own keys.
_NOT_IN_HF = ("attention", "window")
# Activations equal to our tanh-form GELU. transformers' OpenAI GPT maps afn "gelu" to its tanh form.
TANH_GELU = {"gpt1": ("afn", {"gelu"}), "gpt2": ("activation_function", {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"})}


@dataclass
class ExportSummary:
    """What an export produced, for the command's report."""

    out: Path
    architecture: str
    files: list[str]
    notes: list[str]


# --- reading ---


def _load_safetensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise Gpt1Error(f"{path} is not a readable safetensors file ({exc})") from None
    return tensors


def _load_pickles(paths: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Gpt1Error(f"{path} cannot be loaded as plain tensors with torch.load(weights_only=True): {first}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in data.items()):
            raise Gpt1Error(f"{path} does not hold a state dict (names -> tensors)")
        tensors.update(data)
    return tensors


def _index_files(index: Path) -> list[Path]:
    weight_map = read_json(index, "weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise Gpt1Error(f"{index} has no weight_map: it is corrupt")
    return [index.parent / plain_name(name, "weights file", index) for name in sorted(set(weight_map.values()), key=str)]


def read_hf_weights(folder: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a transformers directory, and the file they came from."""
    if (folder / SAFETENSORS).is_file():
        return _load_safetensors([folder / SAFETENSORS]), SAFETENSORS
    if (folder / SAFETENSORS_INDEX).is_file():
        return _load_safetensors(_index_files(folder / SAFETENSORS_INDEX)), SAFETENSORS_INDEX
    pickled = PICKLE if (folder / PICKLE).is_file() else PICKLE_INDEX if (folder / PICKLE_INDEX).is_file() else None
    if pickled is None:
        raise Gpt1Error(f"{folder} holds no weights: expected {SAFETENSORS} (or {PICKLE} with --allow-pickle)")
    if not allow_pickle:
        raise Gpt1Error(f"{folder} holds only {pickled}, a pickle (loading one can run code): pass --allow-pickle to "
                        "read it with torch.load(weights_only=True), or save the model as safetensors")
    paths = [folder / PICKLE] if pickled == PICKLE else _index_files(folder / PICKLE_INDEX)
    return _load_pickles(paths), pickled


def _setting(hf: dict, key: str):
    model_defaults = DEFAULTS.get(hf.get("model_type"), {})
    return hf[key] if key in hf else model_defaults.get(key, COMMON_DEFAULTS.get(key))


def _our_config(hf: dict, arch: str, vocab_rows: int, problems: Problems) -> ModelConfig | None:
    """Our model settings from a transformers config; misfits go to ``problems``."""
    key, accepted = TANH_GELU[arch]
    if _setting(hf, key) not in accepted:
        problems.add(f"{key} {_setting(hf, key)!r}: our model computes the tanh-form GELU ({' / '.join(sorted(accepted))})")
    if arch == "gpt2":
        for name, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False), ("add_cross_attention", False)):
            if bool(_setting(hf, name)) != wanted:
                problems.add(f"{name} {_setting(hf, name)!r} is not supported (ours: {wanted})")
    # Old OpenAI GPT configs count added special tokens apart, in n_special.
    declared = _setting(hf, "vocab_size")
    if arch == "gpt1" and isinstance(declared, int) and isinstance(hf.get("n_special"), int):
        declared += hf["n_special"]
    if declared != vocab_rows:
        problems.add(f"config.json says vocab_size {declared} but the token embedding has {vocab_rows} rows")
    d_model = _setting(hf, "n_embd")
    d_ff = _setting(hf, "n_inner") if arch == "gpt2" else None
    try:
        return ModelConfig(
            vocab_size=vocab_rows, n_ctx=_setting(hf, "n_positions"), n_layer=_setting(hf, "n_layer"),
            n_head=_setting(hf, "n_head"), d_model=d_model, d_ff=d_ff if d_ff is not None else 4 * d_model,
            dropout=float(_setting(hf, "resid_pdrop")), attn_dropout=float(_setting(hf, "attn_pdrop")),
            arch=arch, layer_norm_eps=float(_setting(hf, "layer_norm_epsilon")),
        )
    except (Gpt1Error, TypeError, ValueError) as exc:
        problems.add(f"config.json: {exc}")
        return None


def _restore_our_settings(hf: dict, config: ModelConfig, problems: Problems) -> ModelConfig:
    """Settings of ours that config.json has no key for (an export of ours keeps them under "gpt1cli")."""
    ours = hf.get(OUR_KEY, {}).get("model") if isinstance(hf.get(OUR_KEY), dict) else None
    if not isinstance(ours, dict):
        return config
    extra = {k: v for k, v in ours.items() if k in _NOT_IN_HF and k in config.to_dict()}
    try:
        return config.replace(**extra)
    except (Gpt1Error, TypeError) as exc:
        problems.add(f"config.json {OUR_KEY}.model: {exc}")
        return config


def _mc_head_problems(hf: dict, tensors: dict[str, torch.Tensor], d_model: int, problems: Problems) -> None:
    """A multiple-choice head maps to ours only as one biased linear output on the classification token."""
    settings = {"summary_type": "cls_index", "summary_use_proj": True, "summary_proj_to_labels": True}
    for name, wanted in settings.items():
        if _setting(hf, name) != wanted:
            problems.add(f"multiple-choice head with {name} {_setting(hf, name)!r} (ours: {wanted!r})")
    if _setting(hf, "summary_activation"):
        problems.add(f"multiple-choice head with summary_activation {_setting(hf, 'summary_activation')!r} (ours: none)")
    for name, shape in zip(HF_MC_HEAD, ((1, d_model), (1,))):
        if name not in tensors:
            problems.add(f"multiple-choice head lacks {name}")
        elif tuple(tensors[name].shape) != shape:
            problems.add(f"{name} is {tuple(tensors[name].shape)} where {shape} fits (one score per choice)")


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _named_specials(folder: Path, hf: dict) -> dict[str, str | None]:
    """The eos and pad tokens the folder's tokenizer files name (None where they name none)."""
    names: dict[str, str | None] = {"eos": None, "pad": None}
    for file in (SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG):  # the second wins
        if (folder / file).is_file():
            settings = read_json(folder / file, "tokenizer settings")
            for name in names:
                names[name] = _token_name(settings.get(f"{name}_token")) or names[name]
    return names


def _openai_from_tokenizer_json(path: Path) -> OpenAIBPETokenizer:
    """The original GPT-1 BPE from a tokenizer.json holding it (a BPE model with ``</w>`` word ends)."""
    from ..fileio import parse_json

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read the tokenizer {path}: {exc}") from None
    model = parse_json(text, f"tokenizer {path}").get("model") if text.lstrip().startswith("{") else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != WORD_END:
        raise Gpt1Error(f"{path} does not hold the original GPT-1 BPE (a BPE model with {WORD_END} word ends): "
                        "pass --tokenizer SPEC")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise Gpt1Error(f"{path}: the BPE model lacks its vocab or merges: the file is corrupt")
    by_id = {}
    for token, index in vocab.items():
        if isinstance(index, int) and not isinstance(index, bool):
            by_id.setdefault(index, token)
    if sorted(by_id) != list(range(len(by_id))):
        raise Gpt1Error(f"{path}: the BPE vocabulary's ids do not run from 0 without gaps: the file is corrupt")
    pairs = []
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise Gpt1Error(f"{path}: merge {merge!r} is not a pair of symbols: the file is corrupt")
        pairs.append(tuple(pair))
    vocab_list = [by_id[i] for i in range(len(by_id))]
    names = list(SPECIAL_TOKENS.values())
    if vocab_list[-len(names):] == names:
        vocab_list = vocab_list[: -len(names)]
    return OpenAIBPETokenizer(vocab_list, pairs)


def _resolve_tokenizer(folder: Path, spec: str | None, model_type: str, hf: dict):
    """The tokenizer to import with: --tokenizer, else our copy beside an export of ours, else the
    folder's own (the original GPT-1 BPE for openai-gpt, a tokenizers tokenizer for gpt2)."""
    if spec is not None:
        return load_tokenizer(spec)
    for suffix in (".json", ".model"):
        if (folder / (OUR_TOKENIZER + suffix)).is_file():
            return load_tokenizer(folder / (OUR_TOKENIZER + suffix))
    has = lambda *names: any((folder / name).is_file() for name in names)  # noqa: E731
    pair = has(*ENCODER_NAMES) and has(*MERGES_NAMES)
    if MODEL_TYPES[model_type] == "gpt1":
        if pair:
            return OpenAIBPETokenizer.from_release_dir(folder)
        if has(TOKENIZER_JSON):
            return _openai_from_tokenizer_json(folder / TOKENIZER_JSON)
    else:
        from ..tokenizer.hf_tokenizers import HFTokenizer, byte_level_bpe

        names = _named_specials(folder, hf)
        if has(TOKENIZER_JSON):
            return HFTokenizer.from_tokenizers_file(folder / TOKENIZER_JSON, **names)
        if pair:
            settings = read_json(folder / TOKENIZER_CONFIG, "tokenizer settings") if has(TOKENIZER_CONFIG) else {}
            return HFTokenizer.from_backend(byte_level_bpe(folder / "vocab.json", folder / "merges.txt",
                                                           add_prefix_space=bool(settings.get("add_prefix_space", False)),
                                                           specials=[t for t in names.values() if t]), **names)
    raise Gpt1Error(f"{folder} carries no tokenizer: expected {TOKENIZER_JSON}, or vocab.json + merges.txt, or our "
                    f"{OUR_TOKENIZER}.json / .model; pass --tokenizer SPEC (a SentencePiece .model, a tokenizer .json, "
                    "or openai:DIR)")


def _default_task() -> dict:
    return {"name": "mcq", "labels": [], "regression": False, "n_outputs": 1, "n_choices": None,
            "metric": "accuracy", "lm_coef": None, "init": "imported"}


def import_hf(folder: str | Path, out: str | Path, *, tokenizer: str | None = None, arch: str | None = None,
              allow_pickle: bool = False, seed: int = 0) -> ImportSummary:
    """Convert a transformers GPT / GPT-2 directory into a run of ours at ``out`` (checked first, written last)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise Gpt1Error(f"transformers model directory not found: {folder}")
    check_empty_target(out)
    if arch is not None and arch not in HF_TYPE:
        raise Gpt1Error(f"--arch {arch!r}: choose gpt1 (OpenAI GPT) or gpt2")
    hf = read_json(folder / CONFIG, "transformers config")
    model_type = hf.get("model_type")
    if model_type is None and arch is not None:
        model_type = hf["model_type"] = HF_TYPE[arch]
    if model_type not in MODEL_TYPES:
        raise Gpt1Error(f"{folder / CONFIG}: model_type {model_type!r} is neither openai-gpt nor gpt2")
    tok = _resolve_tokenizer(folder, tokenizer, model_type, hf)
    raw, weights_file = read_hf_weights(folder, allow_pickle=allow_pickle)
    problems = Problems(f"{folder} ({weights_file})")
    if arch is not None and MODEL_TYPES[model_type] != arch:
        problems.add(f"--arch {arch} but config.json has model_type {model_type} ({MODEL_TYPES[model_type]})")
    arch = MODEL_TYPES[model_type]

    tensors, original = {}, {}
    for name, tensor in raw.items():
        if not is_hf_buffer(name):
            short = name[len(HF_BASE):] if name.startswith(HF_BASE) else name
            tensors[short], original[short] = tensor, name
    prefix = HF_BASE if any(n.startswith(HF_BASE) for n in raw) else ""
    shown = lambda short: original.get(short, prefix + short)  # noqa: E731  (names as the file spells them)
    emb_name = f"{EMBEDDINGS[arch][0]}.weight"
    if emb_name not in tensors and HF_LM_HEAD in tensors:  # double-heads models save the tied matrix as lm_head
        tensors[emb_name] = tensors[HF_LM_HEAD]
    lm_head = tensors.pop(HF_LM_HEAD, None)
    emb = tensors.get(emb_name)
    if emb is None or emb.dim() != 2:
        problems.add(f"no 2-D token embedding ({shown(emb_name)})")
        problems.raise_if_any()
    if lm_head is not None and not torch.equal(lm_head, emb):
        problems.add(f"{HF_LM_HEAD} differs from the token embedding: our output layer is tied to it")
    elif lm_head is None and not _setting(hf, "tie_word_embeddings"):
        problems.add(f"tie_word_embeddings is false and there is no {HF_LM_HEAD}: our output layer is the token embedding")
    embedding, added = fit_embedding(emb, tok, problems, seed=seed, source="the model", init="mean")
    config = _our_config(hf, arch, emb.shape[0], problems)
    if config is not None:
        config = _restore_our_settings(hf, config, problems)
    has_head = any(name in tensors for name in HF_MC_HEAD)
    if config is not None:
        expected = hf_shapes(config)
        problems.add_names("missing tensors", [shown(n) for n in expected if n not in tensors])
        problems.add_names("tensors with no place in our model",
                           [shown(n) for n in tensors if n not in expected and n not in HF_MC_HEAD])
        problems.add_names("shape mismatches", [
            f"{shown(n)} is {tuple(tensors[n].shape)} where {shape} fits"
            for n, shape in expected.items() if n in tensors and tuple(tensors[n].shape) != shape
        ])
        if has_head:
            _mc_head_problems(hf, tensors, config.d_model, problems)
    bad_dtypes = sorted({str(t.dtype) for t in tensors.values() if not t.is_floating_point()})
    if bad_dtypes:
        problems.add(f"non-floating-point weights ({', '.join(bad_dtypes)})")
    problems.raise_if_any()

    state = from_hf(tensors, config)
    state["tok_emb.weight"] = embedding.to(torch.float32).contiguous()
    config = config.replace(vocab_size=tok.vocab_size)
    task = None
    if has_head:
        state[OUR_HEAD[0]] = tensors[HF_MC_HEAD[0]].to(torch.float32).contiguous()
        state[OUR_HEAD[1]] = tensors[HF_MC_HEAD[1]].to(torch.float32).contiguous()
        ours = hf.get(OUR_KEY, {}).get("task") if isinstance(hf.get(OUR_KEY), dict) else None
        task = ours if isinstance(ours, dict) and ours.get("name") == "mcq" else _default_task()
    check_against_model(state, config, problems, head=has_head)
    problems.raise_if_any()

    notes = []
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors.values()})
    if dtypes != ["float32"]:
        notes.append(f"weights were {', '.join(dtypes)}; stored as float32")
    if float(_setting(hf, "embd_pdrop")) != float(_setting(hf, "resid_pdrop")):
        notes.append(f"embd_pdrop {_setting(hf, 'embd_pdrop')} differs from resid_pdrop; our one dropout takes resid_pdrop")
    if added:
        notes.append(f"{added} token rows added for special tokens, each the mean of the model's token embeddings "
                     "(so generation never prefers one before fine-tuning)")
    meta = {"kind": "import", "task": task,
            "source": {"format": "transformers", "path": str(folder), "model_type": model_type,
                       "architectures": hf.get("architectures"), "weights": weights_file,
                       "special_rows_added": added, "special_rows_init": "mean"}}
    checkpoint = write_run(out, config=config, state=state, tokenizer=tok, meta=meta)
    return ImportSummary(checkpoint, config, added, task["name"] if task else None, notes)


# --- writing ---


def _hf_config(config: ModelConfig, tokenizer, task: dict | None) -> dict:
    """A config.json transformers reads into the class that computes what our model computes."""
    mcq = task is not None
    hf = {
        "architectures": [CLASSES[(config.arch, mcq)]],
        "model_type": HF_TYPE[config.arch],
        "vocab_size": config.vocab_size,
        "n_positions": config.n_ctx,
        "n_embd": config.d_model,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.attn_dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "summary_activation": None,
        "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1,
        "bos_token_id": tokenizer.eos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "dtype": "float32",
    }
    if config.arch == "gpt1":
        hf["afn"] = "gelu"  # transformers' OpenAI GPT computes "gelu" in the tanh form, as ours
    else:
        hf.update(n_inner=config.d_ff, activation_function="gelu_new", scale_attn_weights=True,
                  scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False, add_cross_attention=False,
                  use_cache=True)
    if mcq:
        hf.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    hf[OUR_KEY] = {"task": task, "model": config.to_dict(), "tokenizer_file": OUR_TOKENIZER + tokenizer.file_suffix,
                   "specials": dict(tokenizer.specials)}
    return hf


def _special_token_names(tokenizer) -> dict[str, str]:
    """Our special tokens by role, as the tokenizer spells them."""
    if tokenizer.kind == "openai-bpe":
        return dict(SPECIAL_TOKENS)
    if tokenizer.kind == "sentencepiece":
        from ..tokenizer.sentencepiece_bpe import DELIM, EOS, EXTRACT, PAD, START

        return {"pad": PAD, "eos": EOS, "start": START, "delim": DELIM, "extract": EXTRACT}
    return {name: tokenizer.id_to_token(index) for name, index in tokenizer.specials.items()}


def _tokenizer_files(tokenizer, n_ctx: int) -> tuple[dict[str, bytes], list[str]]:
    """tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) for transformers'
    ``AutoTokenizer``, and for the original GPT-1 BPE also vocab.json + merges.txt (the release's
    two files under transformers' names). Returns the files and notes."""
    from ..tokenizer.hf_tokenizers import require_tokenizers
    from ..tokenizer.to_tokenizers import to_tokenizers

    files: dict[str, bytes] = {}
    if tokenizer.kind == "openai-bpe":
        vocab = tokenizer.encoder()
        files["vocab.json"] = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
        files["merges.txt"] = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tokenizer.merges)).encode("utf-8")
    try:
        require_tokenizers("writing tokenizer.json")
    except Gpt1Error:
        return files, ["the tokenizers package is not installed: no tokenizer.json was written, so AutoTokenizer "
                       "cannot load this folder (pip install tokenizers, then export again)"]
    backend, notes = to_tokenizers(tokenizer)
    names = _special_token_names(tokenizer)
    special = {"pad_token": names["pad"], "eos_token": names["eos"],
               "additional_special_tokens": [names["start"], names["delim"], names["extract"]]}
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": n_ctx,
        **special,
        # Ours never turn text into special tokens, nor tidy spaces when decoding.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    files[TOKENIZER_JSON] = backend.to_str(pretty=True).encode("utf-8")
    files[TOKENIZER_CONFIG] = (json.dumps(settings, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    files[SPECIAL_TOKENS_MAP] = (json.dumps(special, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return files, notes


def _generation_config(tokenizer) -> dict:
    """Greedy decoding that stops at our end-of-text token, as `gpt1 generate --temperature 0`."""
    return {"bos_token_id": tokenizer.eos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
            "do_sample": False}


def export_hf(ckpt: str | Path, out: str | Path, *, drop_head: bool = False, command: str | None = None) -> ExportSummary:
    """Write checkpoint ``ckpt`` as a transformers directory ``out`` (checked first, written last):
    weights, config.json, generation_config.json, the tokenizer (tokenizer.json and its settings,
    our own copy) and a README.md model card. ``command``: the command line the card names."""
    out = Path(out)
    check_empty_target(out)
    checkpoint = load_checkpoint(ckpt)
    config, state = checkpoint.config, checkpoint.state_dict
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    problems = Problems(f"{checkpoint.path} to transformers")
    if config.arch == "gpt1" and config.d_ff != 4 * config.d_model:
        problems.add(f"d_ff {config.d_ff} is not 4 x d_model ({4 * config.d_model}): transformers' OpenAI GPT fixes "
                     "the MLP at that width (GPT-2 models export any width)")
    if config.attention != "dense" and config.n_layer > 1 and config.window < config.n_ctx:
        problems.add(f"attention {config.attention!r} bands every second layer to {config.window} tokens: "
                     "transformers' GPT models attend densely")
    if tokenizer.vocab_size != config.vocab_size:
        problems.add(f"the tokenizer has {tokenizer.vocab_size} ids but the model {config.vocab_size} rows")
    task = checkpoint.task
    mcq_task = None
    if task:
        if task.get("name") == "mcq":
            mcq_task = task
        elif task.get("name") == "generate":
            pass  # a generative fine-tune has no head: it is a language model like any other
        elif not drop_head:
            problems.add(f"the checkpoint is fine-tuned for {task.get('name')}: transformers has no GPT head of that form "
                         "(a linear layer with bias on the extract token); pass --drop-head to export the decoder alone")
    decoder = {k: v for k, v in state.items() if not k.startswith("head.")}
    check_against_model(decoder, config, problems, head=False)
    if mcq_task is not None:
        for name, shape in zip(OUR_HEAD, ((1, config.d_model), (1,))):
            if name not in state or tuple(state[name].shape) != shape:
                problems.add(f"the mcq head {name} is {tuple(state[name].shape) if name in state else 'missing'} where {shape} fits")
    problems.raise_if_any()

    tensors = to_hf(decoder, config)
    if mcq_task is not None:
        tensors[HF_MC_HEAD[0]], tensors[HF_MC_HEAD[1]] = state[OUR_HEAD[0]].contiguous(), state[OUR_HEAD[1]].contiguous()
    hf = _hf_config(config, tokenizer, mcq_task)
    extra, notes = _tokenizer_files(tokenizer, config.n_ctx)
    if task and mcq_task is None:
        notes.append(f"the {task.get('name')} head was dropped (--drop-head)")
    parameters = sum(t.numel() for t in tensors.values())
    command = command or f"gpt1 convert --to-hf {out} --ckpt {ckpt}" + (" --drop-head" if drop_head else "")
    extra[MODEL_CARD] = model_card(checkpoint=checkpoint, config=config, tokenizer=tokenizer,
                                   architecture=hf["architectures"][0], parameters=parameters, command=command,
                                   task=task, notes=notes).encode("utf-8")

    with staged_directory(out) as staging:
        save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}, str(staging / SAFETENSORS),
                  metadata={"format": "pt"})
        atomic_write_json(staging / CONFIG, hf)
        atomic_write_json(staging / GENERATION_CONFIG, _generation_config(tokenizer))
        for name, data in extra.items():
            atomic_write_bytes(staging / name, data)
        shutil.copyfile(checkpoint.tokenizer_path, staging / (OUR_TOKENIZER + tokenizer.file_suffix))
    files = sorted(p.name for p in out.iterdir())
    return ExportSummary(out, hf["architectures"][0], files, notes)
