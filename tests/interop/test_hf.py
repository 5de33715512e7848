"""`gpt1 convert --from-hf / --to-hf`: logits equal to transformers', bit-exact round trips, clear refusals.

Models are tiny and random, built and saved at test time (no downloads). transformers is used
here only, never by the toolkit itself.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import support
from support import hf_model, make_text, mcq_task, random_gpt, save_ours, tiny_config
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.model.loading import model_from_checkpoint
from gpt1cli.tasks.heads import TaskModel, collate
from gpt1cli.tasks.inference import load_task_model
from gpt1cli.tokenizer.openai_bpe import OpenAIBPETokenizer

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def tokenizer_file(toy_bpe, tmp_path_factory):
    vocab, merges = toy_bpe
    return OpenAIBPETokenizer(vocab, merges).save(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def convert(argv, capsys):
    return support.run_main(["convert", *argv], capsys)


def our_logits(run, ids):
    model, _ = model_from_checkpoint(run, torch.device("cpu"))
    with torch.no_grad():
        return model.logits(model(ids))


def token_batch(vocab: int, seed: int = 0, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (3, length), generator=torch.Generator().manual_seed(seed))


def assert_nothing_written(parent, name):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")], "a temporary folder was left behind"


# ---------------------------------------------------------------------------------------------
# transformers -> ours: the same function


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_from_hf_gives_transformers_logits(arch, bpe_tok, tokenizer_file, tmp_path, capsys):
    # The gpt1 model lacks rows for our 5 special tokens (they are added); the gpt2 one has them all.
    rows = bpe_tok.base_vocab_size if arch == "gpt1" else bpe_tok.vocab_size
    reference = hf_model(arch, rows)
    reference.save_pretrained(tmp_path / "hf")
    result = convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "run", "--tokenizer", tokenizer_file,
                      "--arch", arch], capsys)
    assert result.code == 0, result.err
    ids = token_batch(rows)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    got = our_logits(tmp_path / "run", ids)
    assert got.shape[-1] == bpe_tok.vocab_size
    diff = (got[..., :rows] - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{arch}: max |logit difference| {diff:.3g}"
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.config.arch == arch and checkpoint.config.d_ff == (128 if arch == "gpt1" else 96)
    assert checkpoint.meta["source"]["special_rows_added"] == (5 if arch == "gpt1" else 0)
    assert checkpoint.task is None


def test_double_heads_model_becomes_an_mcq_head(bpe_tok, tokenizer_file, tmp_path, capsys):
    reference = hf_model("gpt1", bpe_tok.vocab_size, double_heads=True, seed=3)
    reference.save_pretrained(tmp_path / "hf")
    assert convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys).code == 0
    model, checkpoint = load_task_model(tmp_path / "run", torch.device("cpu"), task="mcq")
    assert checkpoint.task["name"] == "mcq" and checkpoint.task["n_outputs"] == 1
    choices = [[bpe_tok.start_id, *bpe_tok.encode(make_text(s, 1))[:10], bpe_tok.delim_id, bpe_tok.extract_id] for s in range(3)]
    batch = collate([choices], [0], bpe_tok.pad_id)
    mc_ids = (batch.lengths - 1).view(1, -1)
    with torch.no_grad():
        ours, _ = model(batch)
        theirs = reference(input_ids=batch.tokens.unsqueeze(0), mc_token_ids=mc_ids).mc_logits
    assert (ours - theirs).abs().max().item() <= TOLERANCE


def test_pickle_needs_allow_pickle(bpe_tok, tokenizer_file, tmp_path, capsys):
    reference = hf_model("gpt1", bpe_tok.vocab_size)
    folder = tmp_path / "hf"
    reference.save_pretrained(folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    refused = convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys)
    support.assert_one_error_line(refused, "pytorch_model.bin", "--allow-pickle")
    assert_nothing_written(tmp_path, "run")
    allowed = convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file, "--allow-pickle"], capsys)
    assert allowed.code == 0, allowed.err
    ids = token_batch(bpe_tok.vocab_size, seed=1)
    with torch.no_grad():
        assert (our_logits(tmp_path / "run", ids) - reference(input_ids=ids).logits).abs().max().item() <= TOLERANCE


def test_shape_mismatches_are_listed_together_and_nothing_is_written(bpe_tok, tokenizer_file, tmp_path, capsys):
    folder = tmp_path / "hf"
    hf_model("gpt1", bpe_tok.vocab_size).save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    tensors["transformer.h.1.attn.c_attn.weight"] = torch.zeros(32, 64)
    tensors["transformer.h.0.ln_2.weight"] = torch.zeros(31)
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    tensors["transformer.h.0.extra.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    result = convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys)
    line = support.assert_one_error_line(
        result, "3 problems", "missing tensors: transformer.h.1.mlp.c_fc.bias",
        "no place in our model: transformer.h.0.extra.weight",
        "transformer.h.1.attn.c_attn.weight is (32, 64) where (32, 96) fits", "transformer.h.0.ln_2.weight is (31,) where (32,) fits",
    )
    assert "nothing was written" in line
    assert_nothing_written(tmp_path, "run")


def test_config_misfits_are_reported(bpe_tok, tokenizer_file, tmp_path, capsys):
    folder = tmp_path / "hf"
    hf_model("gpt2", bpe_tok.vocab_size).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(activation_function="relu", scale_attn_by_inverse_layer_idx=True)
    (folder / "config.json").write_text(json.dumps(config))
    result = convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file, "--arch", "gpt1"], capsys)
    support.assert_one_error_line(result, "3 problems", "--arch gpt1 but config.json has model_type gpt2",
                                  "activation_function 'relu'", "scale_attn_by_inverse_layer_idx")
    assert_nothing_written(tmp_path, "run")


def test_tokenizer_must_cover_the_embedding(bpe_tok, tokenizer_file, tmp_path, capsys):
    small = tmp_path / "small"
    hf_model("gpt1", bpe_tok.base_vocab_size - 1).save_pretrained(small)
    result = convert(["--from-hf", small, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys)
    support.assert_one_error_line(result, f"{bpe_tok.base_vocab_size - 1} token rows", f"needs {bpe_tok.base_vocab_size}")
    large = tmp_path / "large"
    hf_model("gpt1", bpe_tok.vocab_size + 2).save_pretrained(large)
    result = convert(["--from-hf", large, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys)
    support.assert_one_error_line(result, f"{bpe_tok.vocab_size + 2} token rows", f"only {bpe_tok.vocab_size}")
    assert_nothing_written(tmp_path, "run")


def test_missing_inputs_are_one_line_errors(bpe_tok, tokenizer_file, tmp_path, capsys):
    folder = tmp_path / "hf"
    folder.mkdir()
    support.assert_one_error_line(convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys),
                                  "config.json")
    hf_model("gpt1", bpe_tok.vocab_size).save_pretrained(folder)
    support.assert_one_error_line(convert(["--from-hf", folder, "--out", tmp_path / "run"], capsys), "--tokenizer")
    (folder / "model.safetensors").unlink()
    support.assert_one_error_line(convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", tokenizer_file], capsys),
                                  "holds no weights")
    support.assert_one_error_line(convert(["--out", tmp_path / "run"], capsys), "exactly one of")
    assert_nothing_written(tmp_path, "run")


# ---------------------------------------------------------------------------------------------
# ours -> transformers -> ours


def assert_same_checkpoint(a, b):
    first, second = load_checkpoint(a), load_checkpoint(b)
    assert first.config == second.config
    assert first.state_dict.keys() == second.state_dict.keys()
    for name, tensor in first.state_dict.items():
        assert tensor.dtype == second.state_dict[name].dtype
        assert torch.equal(tensor, second.state_dict[name]), name
    assert first.task == second.task
    assert first.tokenizer_path.read_bytes() == second.tokenizer_path.read_bytes()


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_round_trip_through_transformers_is_bit_exact(arch, bpe_tok, tokenizer_file, tmp_path, capsys):
    # An alternating model whose band covers the whole context computes dense attention: it exports,
    # and its own settings come back through config.json.
    config = tiny_config(bpe_tok.vocab_size, arch, d_ff=128 if arch == "gpt1" else 80, layer_norm_eps=1e-6, dropout=0.05,
                         attention="alternating", window=24)
    model = random_gpt(config, seed=5)
    save_ours(tmp_path / "run", model, tokenizer_file)
    exported = convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys)
    assert exported.code == 0, exported.err
    cls = transformers.OpenAIGPTLMHeadModel if arch == "gpt1" else transformers.GPT2LMHeadModel
    hf = cls.from_pretrained(tmp_path / "hf").eval()
    ids = token_batch(bpe_tok.vocab_size, seed=2)
    with torch.no_grad():
        diff = (hf(input_ids=ids).logits - model.logits(model(ids))).abs().max().item()
    assert diff <= TOLERANCE, f"{arch}: max |logit difference| {diff:.3g}"
    back = convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "back"], capsys)  # tokenizer: the copy left beside
    assert back.code == 0, back.err
    assert_same_checkpoint(tmp_path / "run", tmp_path / "back")


def test_mcq_checkpoint_exports_to_double_heads_and_back(bpe_tok, tokenizer_file, tmp_path, capsys):
    model = random_gpt(tiny_config(bpe_tok.vocab_size), seed=7)
    head = torch.nn.Linear(32, 1)
    save_ours(tmp_path / "run", model, tokenizer_file, head=head, task=mcq_task())
    assert convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys).code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["OpenAIGPTDoubleHeadsModel"]
    hf = transformers.OpenAIGPTDoubleHeadsModel.from_pretrained(tmp_path / "hf").eval()
    ours = TaskModel(model, "mcq", 1)
    ours.head = head
    ours.eval()
    choices = [[bpe_tok.start_id, *bpe_tok.encode(make_text(s, 1))[:8 + s], bpe_tok.delim_id, bpe_tok.extract_id] for s in range(3)]
    batch = collate([choices], [0], bpe_tok.pad_id)
    with torch.no_grad():
        expected, _ = ours(batch)
        got = hf(input_ids=batch.tokens.unsqueeze(0), mc_token_ids=(batch.lengths - 1).view(1, -1)).mc_logits
    assert (got - expected).abs().max().item() <= TOLERANCE
    assert convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "back"], capsys).code == 0
    assert_same_checkpoint(tmp_path / "run", tmp_path / "back")


def test_exported_tokenizer_loads_in_transformers(bpe_tok, tokenizer_file, tmp_path, capsys):
    save_ours(tmp_path / "run", random_gpt(tiny_config(bpe_tok.vocab_size)), tokenizer_file)
    assert convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys).code == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = make_text(77)
    assert hf_tok.encode(text, add_special_tokens=False) == bpe_tok.encode(text)
    for name, token in (("start", "_start_"), ("delim", "_delimiter_"), ("extract", "_classify_"), ("pad", "_pad_"), ("eos", "_eos_")):
        assert hf_tok.convert_tokens_to_ids(token) == bpe_tok.specials[name]
    assert hf_tok.pad_token_id == bpe_tok.pad_id and hf_tok.eos_token_id == bpe_tok.eos_id
    # transformers' vocab.json + merges.txt are also the release's two files under other names.
    assert OpenAIBPETokenizer.from_release_dir(tmp_path / "hf").to_bytes() == bpe_tok.to_bytes()


def test_export_refuses_what_transformers_cannot_hold(bpe_tok, tokenizer_file, tmp_path, capsys):
    wide = random_gpt(tiny_config(bpe_tok.vocab_size, d_ff=96))
    save_ours(tmp_path / "wide", wide, tokenizer_file)
    support.assert_one_error_line(convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "wide"], capsys),
                                  "d_ff 96 is not 4 x d_model (128)")
    banded = random_gpt(tiny_config(bpe_tok.vocab_size, "gpt2", attention="alternating", window=8))
    save_ours(tmp_path / "banded", banded, tokenizer_file)
    support.assert_one_error_line(convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "banded"], capsys),
                                  "attention 'alternating' bands every second layer to 8 tokens")
    classify = {"name": "classify", "labels": ["neg", "pos"], "regression": False, "n_outputs": 2, "n_choices": None}
    save_ours(tmp_path / "cls", random_gpt(tiny_config(bpe_tok.vocab_size)), tokenizer_file, head=torch.nn.Linear(32, 2),
              task=classify)
    support.assert_one_error_line(convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "cls"], capsys),
                                  "fine-tuned for classify", "--drop-head")
    assert_nothing_written(tmp_path, "hf")
    dropped = convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "cls", "--drop-head"], capsys)
    assert dropped.code == 0 and "dropped" in dropped.out
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["OpenAIGPTLMHeadModel"]
    support.assert_one_error_line(convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "cls", "--drop-head"], capsys),
                                  "not empty")


def test_sentencepiece_checkpoint_round_trip(tmp_path, capsys):
    from gpt1cli.tokenizer.sentencepiece_bpe import train_sentencepiece

    sentences = [make_text(s, 1) for s in range(300)]
    sp = train_sentencepiece(iter(sentences), tmp_path / "sp.model", vocab_size=400, num_threads=1)
    save_ours(tmp_path / "run", random_gpt(tiny_config(sp.vocab_size, "gpt2"), seed=2), sp.path)
    (tmp_path / "hf").mkdir()  # an empty --out is fine
    exported = convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys)
    assert exported.code == 0, exported.err
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {
        "config.json", "model.safetensors", "gpt1-tokenizer.model", "generation_config.json", "tokenizer.json",
        "tokenizer_config.json", "special_tokens_map.json", "README.md"}
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tok.encode(sentences[0]) == sp.encode(sentences[0]) and len(hf_tok) == sp.vocab_size
    assert convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "back"], capsys).code == 0
    assert_same_checkpoint(tmp_path / "run", tmp_path / "back")


def test_hub_style_openai_gpt_directory(bpe_tok, tmp_path, capsys):
    """The layout of the published openai-gpt: a base-model state dict (no 'transformer.'), causal-mask
    buffers, vocab.json (with transformers' "<unk>" alias of id 0) + merges.txt beside it."""
    reference = hf_model("gpt1", bpe_tok.base_vocab_size, seed=4)
    folder = tmp_path / "openai-gpt"
    folder.mkdir()
    state = {k[len("transformer."):]: v for k, v in reference.state_dict().items() if k.startswith("transformer.")}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(24, 24)).view(1, 1, 24, 24)
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    config = {k: v for k, v in reference.config.to_dict().items() if k not in ("architectures",)}
    config.update(n_special=0, n_ctx=24)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.json").write_text(json.dumps({**{t: i for i, t in enumerate(bpe_tok.vocab)}, "<unk>": 0}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe_tok.merges))
    # The folder's own vocab.json + merges.txt are read as the original BPE; --tokenizer openai:DIR says the same.
    result = convert(["--from-hf", folder, "--out", tmp_path / "own"], capsys)
    assert result.code == 0, result.err
    assert load_checkpoint(tmp_path / "own").tokenizer_path.read_bytes() == bpe_tok.to_bytes()
    result = convert(["--from-hf", folder, "--out", tmp_path / "run", "--tokenizer", f"openai:{folder}"], capsys)
    assert result.code == 0, result.err
    assert load_checkpoint(tmp_path / "run").config.vocab_size == bpe_tok.vocab_size
    ids = token_batch(bpe_tok.base_vocab_size, seed=4)
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
    assert (our_logits(tmp_path / "run", ids)[..., : bpe_tok.base_vocab_size] - expected).abs().max().item() <= TOLERANCE
