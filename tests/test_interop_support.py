"""Builders shared by the interoperability tests (this module holds no tests).

Everything is made at run time from a seeded RNG: English-like text, a small BPE vocabulary and
merges learned from it in the release's format, tiny models, and the original release's weight
layout written from one of our models.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from gpt1cli.config import ModelConfig
from gpt1cli.data.openai_bpe import NEWLINE_TOKEN, WORD_END, pre_tokenize
from gpt1cli.model.gpt import GPT

WORDS = (
    "the a an one every some cat dog bird fox horse child teacher farmer river garden house road village "
    "city forest hill window door table book letter song morning evening night winter summer sat ran walked "
    "sang read wrote saw found made kept quickly slowly quietly loudly happily under over near behind beside "
    "with without and but then because old young small large green blue red bright dark warm cold is was "
    "were have had will would could should their there where when which who whom this that these those "
    "between through during before after above below again further once here why how all any both each few "
    "more most other such only own same so than too very just 1990 42 7"
).split()
NAMES = "Alice Bob London Paris Monday October Thames Everest".split()


def make_text(seed: int, n_sentences: int = 40) -> str:
    """Ordinary English-like text: words, names, commas, semicolons, colons, brackets, quotes,
    hyphenated pairs and . ! ? at sentence ends (nothing the two pre-tokenizers split differently)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        words[-1] = rng.choice([w for w in WORDS if len(w) > 1 and w.isalpha()])
        for i in range(len(words) - 1):
            roll = rng.random()
            if roll < 0.08:
                words[i] = rng.choice(NAMES)
            elif roll < 0.14:
                words[i] += ","
            elif roll < 0.17:
                words[i] += rng.choice([";", ":"])
            elif roll < 0.20 and words[i + 1].isalpha():
                words[i] = f"{words[i]}-{words[i + 1]}"
                words[i + 1] = rng.choice(WORDS)
        if rng.random() < 0.2:
            i = rng.randrange(len(words))
            j = min(len(words), i + rng.randint(1, 3))
            words[i] = "(" + words[i]
            words[j - 1] += ")"
        elif rng.random() < 0.2:
            i = rng.randrange(len(words))
            words[i] = '"' + words[i]
            words[-1] += '"'
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice([".", ".", ".", "!", "?"])
        sentences.append(sentence)
    return " ".join(sentences)


def learn_bpe(texts: list[str], n_merges: int) -> tuple[list[str], list[tuple[str, str]]]:
    """A vocabulary (in id order) and merges learned the classic way: repeatedly merge the most
    frequent adjacent pair of symbols over the lower-cased words of ``texts``."""
    counts = Counter(w.lower() for text in texts for w in pre_tokenize(text) if w != "\n")
    alphabet = sorted({ch for word in counts for ch in word})
    vocab = alphabet + [ch + WORD_END for ch in alphabet]
    seen = set(vocab)
    splits = {w: tuple(w[:-1]) + (w[-1] + WORD_END,) for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for word, count in counts.items():
            symbols = splits[word]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        if joined not in seen:
            seen.add(joined)
            vocab.append(joined)
        for word, symbols in splits.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[word] = tuple(out)
    vocab.append(NEWLINE_TOKEN)
    return vocab, merges


def write_release_tokenizer(folder: Path, vocab: list[str], merges: list[tuple[str, str]]) -> Path:
    """``encoder_bpe_40000.json`` and ``vocab_40000.bpe`` as the release lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder_bpe_40000.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "vocab_40000.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder


_TOY: dict = {}


def toy_bpe(n_merges: int = 300) -> tuple[list[str], list[tuple[str, str]]]:
    """One shared toy vocabulary + merges, learned from ``make_text`` once per session."""
    if n_merges not in _TOY:
        _TOY[n_merges] = learn_bpe([make_text(seed) for seed in range(6)], n_merges)
    return _TOY[n_merges]


def tiny_config(vocab_size: int, arch: str = "gpt1", **overrides) -> ModelConfig:
    settings = dict(n_ctx=24, n_layer=2, n_head=2, d_model=32, d_ff=128, dropout=0.0, attn_dropout=0.0, arch=arch)
    settings.update(overrides)
    return ModelConfig(vocab_size=vocab_size, **settings)


def random_gpt(config: ModelConfig, seed: int = 0) -> GPT:
    """A model of ours with random weights; LayerNorm gains and biases are randomised too, so a
    swapped or untransposed tensor cannot hide behind an initial value of 0 or 1."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def write_release_weights(folder: Path, model: GPT, n_vocab: int, n_files: int = 10) -> Path:
    """The release's ``params_shapes.json`` + ``params_{i}.npy`` layout for the first ``n_vocab``
    token rows of ``model``: every array flattened, concatenated and split into ``n_files``."""
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    arrays = [state["pos_emb.weight"], state["tok_emb.weight"][:n_vocab]]
    for i in range(model.config.n_layer):
        p = f"blocks.{i}."
        for linear in ("attn.qkv", "attn.proj"):
            arrays += [state[p + linear + ".weight"].T[None], state[p + linear + ".bias"]]
        arrays += [state[p + "ln_1.weight"], state[p + "ln_1.bias"]]
        for linear in ("mlp.fc", "mlp.proj"):
            arrays += [state[p + linear + ".weight"].T[None], state[p + linear + ".bias"]]
        arrays += [state[p + "ln_2.weight"], state[p + "ln_2.bias"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params_shapes.json").write_text(json.dumps([list(a.shape) for a in arrays]), encoding="utf-8")
    flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32)
    for n, piece in enumerate(np.array_split(flat, n_files)):
        np.save(folder / f"params_{n}.npy", piece)
    return folder


def save_ours(run: Path, model: GPT, tokenizer_file: Path, *, head: torch.nn.Linear | None = None, task: dict | None = None) -> Path:
    """``model`` (plus a task head) as checkpoint step 1 of run ``run``."""
    from gpt1cli.train.checkpoint import save_checkpoint

    state = dict(model.state_dict())
    if head is not None:
        state.update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    meta = {"kind": "finetune" if task else "pretrain", "task": task}
    return save_checkpoint(run, 1, model_state=state, config=model.config, tokenizer_path=tokenizer_file, meta=meta)


def mcq_task(n_choices: int = 3) -> dict:
    return {"name": "mcq", "labels": [], "regression": False, "n_outputs": 1, "n_choices": n_choices,
            "metric": "accuracy", "lm_coef": 0.5, "init": "pretrained"}


def randomize_hf(model, seed: int = 0):
    """Give a transformers model random biases and LayerNorm parameters (its init leaves them 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def hf_model(arch: str, vocab_size: int, *, double_heads: bool = False, seed: int = 0, **overrides):
    """A tiny random transformers OpenAI GPT (``gpt1``) or GPT-2 model with dropout off."""
    import transformers

    torch.manual_seed(seed)
    settings = dict(vocab_size=vocab_size, n_positions=24, n_embd=32, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    settings.update(overrides)
    if arch == "gpt1":
        config = transformers.OpenAIGPTConfig(afn="gelu", **settings)
        cls = transformers.OpenAIGPTDoubleHeadsModel if double_heads else transformers.OpenAIGPTLMHeadModel
    else:
        config = transformers.GPT2Config(activation_function="gelu_new", n_inner=96, bos_token_id=0, eos_token_id=0, **settings)
        cls = transformers.GPT2DoubleHeadsModel if double_heads else transformers.GPT2LMHeadModel
    return randomize_hf(cls(config), seed)
