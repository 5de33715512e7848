"""Import the original GPT-1 release (openai/finetune-transformer-lm's ``model/`` folder).

The release stores every array flattened and concatenated, cut into ``params_0.npy`` ...
``params_9.npy``; ``params_shapes.json`` lists the arrays' shapes in order: position embeddings
``(n_ctx, d)``, token embeddings ``(40478, d)``, then per layer ``c_attn`` w ``(1, d, 3d)`` + b,
``c_proj`` w ``(1, d, d)`` + b, ``ln_1`` g + b, ``c_fc`` w ``(1, d, 4d)`` + b, ``c_proj`` w
``(1, 4d, d)`` + b, ``ln_2`` g + b. Sizes are read from the shapes; the head count is not in
them (``--n-head``, default d / 64: 12 for the release).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import Gpt1Error
from ..fileio import parse_json
from ..tokenizer.openai_bpe import OpenAIBPETokenizer
from .layout import LAYER_PARTS, from_release, numel, release_shapes
from .problems import Problems
from .runs import ImportSummary, check_against_model, check_empty_target, fit_embedding, write_run

SHAPES_FILE = "params_shapes.json"
PARAMS_PATTERN = "params_{}.npy"
HEAD_DIM = 64
# The release's training settings (the paper): dropout 0.1 everywhere, LayerNorm epsilon 1e-5.
RELEASE_DROPOUT = 0.1
RELEASE_LN_EPS = 1e-5


def _read_shapes(folder: Path) -> list[tuple[int, ...]]:
    path = folder / SHAPES_FILE
    if not path.is_file():
        raise Gpt1Error(f"{folder} lacks {SHAPES_FILE}: it is not the original release's model folder")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise Gpt1Error(f"cannot read {path}: {exc}") from None
    shapes = parse_json(text, str(path))
    if not isinstance(shapes, list) or not all(
        isinstance(s, list) and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in s) for s in shapes
    ):
        raise Gpt1Error(f"{path} is not a list of array shapes (lists of positive integers): it is corrupt")
    return [tuple(s) for s in shapes]


def _param_files(folder: Path) -> list[Path]:
    files = []
    while (folder / PARAMS_PATTERN.format(len(files))).is_file():
        files.append(folder / PARAMS_PATTERN.format(len(files)))
    if not files:
        raise Gpt1Error(f"{folder} lacks {PARAMS_PATTERN.format(0)} (the weights, params_0.npy ... params_9.npy)")
    return files


def _open_arrays(files: list[Path], problems: Problems) -> list[np.ndarray]:
    """Memory-map each ``.npy`` (never unpickling); record unreadable or non-float files."""
    arrays = []
    for path in files:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            problems.add(f"{path.name} is not a readable .npy array ({exc})")
            continue
        if array.dtype.kind != "f":
            problems.add(f"{path.name} holds {array.dtype} values, not floating point weights")
            continue
        arrays.append(array)
    return arrays


def _infer_sizes(shapes: list[tuple[int, ...]], problems: Problems) -> dict | None:
    """n_ctx, n_vocab, d_model, d_ff and n_layer from the shapes, or None when they do not parse."""
    per_layer = 2 * len(LAYER_PARTS)
    if len(shapes) < 2 + per_layer or (len(shapes) - 2) % per_layer:
        problems.add(f"{SHAPES_FILE} lists {len(shapes)} arrays; the release layout has 2 embeddings + {per_layer} per layer")
        return None
    if len(shapes[0]) != 2 or len(shapes[1]) != 2 or len(shapes[2 + 6]) != 3:
        problems.add(f"{SHAPES_FILE} does not start with two 2-D embeddings followed by layers: got {shapes[:3]}")
        return None
    return dict(n_ctx=shapes[0][0], n_vocab=shapes[1][0], d_model=shapes[0][1], d_ff=shapes[2 + 6][2],
                n_layer=(len(shapes) - 2) // per_layer)


def _layer_label(index: int) -> str:
    if index == 0:
        return "positions_embed"
    if index == 1:
        return "tokens_embed"
    layer, part = divmod(index - 2, 2 * len(LAYER_PARTS))
    module = LAYER_PARTS[part // 2][1]
    kind = ("w" if part % 2 == 0 else "b") if LAYER_PARTS[part // 2][2] else ("g" if part % 2 == 0 else "b")
    return f"h{layer}/{module.replace('.', '/')}/{kind}"


def import_openai_release(folder: str | Path, out: str | Path, *, n_head: int | None = None, seed: int = 0) -> ImportSummary:
    """Convert the original release in ``folder`` into a run of ours at ``out`` (checked first, written last)."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise Gpt1Error(f"release folder not found: {folder}")
    check_empty_target(out)
    shapes = _read_shapes(folder)
    tokenizer = OpenAIBPETokenizer.from_release_dir(folder)
    problems = Problems(f"the OpenAI release in {folder}")
    arrays = _open_arrays(_param_files(folder), problems)
    sizes = _infer_sizes(shapes, problems)
    problems.raise_if_any()

    expected = release_shapes(**sizes)
    bad = [f"{_layer_label(i)} is {got} where {want} fits" for i, (got, want) in enumerate(zip(shapes, expected)) if got != want]
    if bad:
        problems.add_names("arrays whose shapes do not fit the layout", bad)
    total = sum(numel(s) for s in shapes)
    stored = sum(a.size for a in arrays)
    if stored != total:
        problems.add(f"the params_*.npy files hold {stored:,} values but {SHAPES_FILE} needs {total:,}")
    if sizes["n_vocab"] != tokenizer.base_vocab_size:
        problems.add(f"the token embedding has {sizes['n_vocab']:,} rows but the encoder {tokenizer.base_vocab_size:,} tokens")
    d_model = sizes["d_model"]
    if n_head is None:
        if d_model % HEAD_DIM:
            problems.add(f"d_model {d_model} is not a multiple of {HEAD_DIM}: pass --n-head")
        n_head = max(1, d_model // HEAD_DIM)
    elif n_head <= 0 or d_model % n_head:
        problems.add(f"--n-head {n_head} does not divide d_model {d_model}")
    problems.raise_if_any()

    flat = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    offsets = np.cumsum([numel(s) for s in shapes])[:-1]
    pieces = [p.reshape(s) for p, s in zip(np.split(flat, offsets), shapes)]
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, n_ctx=sizes["n_ctx"], n_layer=sizes["n_layer"], n_head=n_head,
        d_model=d_model, d_ff=sizes["d_ff"], dropout=RELEASE_DROPOUT, attn_dropout=RELEASE_DROPOUT,
        arch="gpt1", layer_norm_eps=RELEASE_LN_EPS,
    )
    state = from_release(pieces, config)
    state["tok_emb.weight"], added = fit_embedding(state["tok_emb.weight"], tokenizer, problems, seed=seed, source="the release")
    check_against_model(state, config, problems, head=False)
    problems.raise_if_any()

    meta = {"kind": "import", "task": None,
            "source": {"format": "openai-release", "path": str(folder), "special_rows_added": added, "seed": seed}}
    checkpoint = write_run(out, config=config, state=state, tokenizer=tokenizer, meta=meta)
    notes = [f"{added} token rows added for {', '.join(tokenizer.specials)} (N(0, 0.02), seed {seed})"] if added else []
    return ImportSummary(checkpoint, config, added, None, notes)
