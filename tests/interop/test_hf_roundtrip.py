"""Hugging Face round trips with the tokenizer: `convert --to-hf` folders that AutoTokenizer,
AutoModelForCausalLM, generate() and pipeline() use as ours, and `convert --from-hf` on folders
transformers saved itself (GPT-2 byte-level BPE, OpenAI GPT BPE), without --tokenizer.

Everything is built at run time (no downloads): tokenizers trained with the `tokenizers` library on
sentences made here, tiny random models.
"""

from __future__ import annotations

import json
import random
import stat
import subprocess
import sys

import pytest
import torch

import support
from support import hf_model, make_text, random_gpt, save_ours, tiny_config
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.config import count_parameters
from gpt1cli.model.loading import model_from_checkpoint, tokenizer_for
from gpt1cli.tokenizer import load_tokenizer
from gpt1cli.tokenizer.openai_bpe import OpenAIBPETokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

STRINGS = ["The cat sat on the mat.", "A dog ran quickly under the old bridge, and then the bird sang!",
           "  two  spaces\tand a tab", "line one\nline two", "Ünïcode café: naïve 😀", "<start> is text here </s>"]
ORDINARY = [make_text(seed, 3) for seed in range(30, 36)] + ["the farmer kept a small green book", "Alice read; Bob wrote."]


def convert(argv, capsys):
    return support.run_main(["convert", *argv], capsys)


def our_greedy(run, prompt: str, n: int, capsys) -> str:
    result = support.run_main(["generate", "--ckpt", run, "--prompt", prompt, "--temperature", "0",
                               "--max-new-tokens", n, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    assert result.out.endswith("\n")
    return result.out[:-1]


def hf_greedy(folder, prompt: str, n: int) -> tuple[str, list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0], skip_special_tokens=True), out[0].tolist()


# ---------------------------------------------------------------------------------------------
# ours -> transformers


@pytest.fixture(scope="module")
def exported(assets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "hf"
    with support.one_torch_thread():
        from gpt1cli.cli.app import main

        main(["convert", "--to-hf", str(folder), "--ckpt", str(assets.run)])
    return folder


def test_export_folder_holds_a_tokenizer_and_a_model_card(exported, assets):
    names = {p.name for p in exported.iterdir()}
    assert names == {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json", "README.md", "gpt1-tokenizer.model"}
    settings = json.loads((exported / "tokenizer_config.json").read_text())
    assert settings["pad_token"] == "<pad>" and settings["eos_token"] == "</s>"
    assert settings["additional_special_tokens"] == ["<start>", "<delim>", "<extract>"]
    assert settings["split_special_tokens"] is True and settings["model_max_length"] == 32
    generation = json.loads((exported / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}
    card = (exported / "README.md").read_text()
    checkpoint = load_checkpoint(assets.run)
    evals = [r for r in support.read_metrics(assets.run) if r["kind"] == "eval"]
    assert f"Parameters: {count_parameters(checkpoint.config):,}" in card
    assert f"loss {evals[-1]['val_loss']:.4f}, perplexity {evals[-1]['val_ppl']:.4f}" in card
    assert f"Validation at step {support.RUN_STEPS}" in card
    assert f"`{assets.shards}`" in card and "steps 24, batch_size 4" in card
    assert f"gpt1 convert --to-hf {exported} --ckpt {assets.run}" in card
    assert "2 layers, d_model 64, 2 heads" in card and "OpenAIGPTLMHeadModel" in card


def test_auto_tokenizer_gives_our_ids(exported, tok):
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    assert len(hf_tok) == tok.vocab_size == 400
    for text in STRINGS + ORDINARY:
        assert hf_tok.encode(text) == tok.encode(text), text
        assert hf_tok.decode(tok.encode(text), skip_special_tokens=True) == tok.decode(tok.encode(text)), text
    assert (hf_tok.pad_token_id, hf_tok.eos_token_id) == (tok.pad_id, tok.eos_id)
    for token, index in (("<start>", tok.start_id), ("<delim>", tok.delim_id), ("<extract>", tok.extract_id)):
        assert hf_tok.convert_tokens_to_ids(token) == index


def test_greedy_generation_matches_ours(exported, assets, trained, capsys):
    model, tok = trained
    for prompt in ("The dog ran", "A child sang"):
        ours = our_greedy(assets.run, prompt, 20, capsys)
        theirs, ids = hf_greedy(exported, prompt, 20)
        assert theirs == ours
        prompt_ids = tok.encode(prompt)
        from gpt1cli.model.generation.sampling import generate_tokens

        ours_ids = list(generate_tokens(model, prompt_ids, max_new_tokens=20, temperature=0.0, stop_ids=(tok.eos_id,)))
        assert ids == prompt_ids + ours_ids
    pipe = transformers.pipeline("text-generation", model=str(exported))
    (result,) = pipe("The dog ran", max_new_tokens=20, do_sample=False, return_tensors=True)
    assert result["generated_token_ids"] == hf_greedy(exported, "The dog ran", 20)[1]


def test_export_of_a_sentencepiece_gpt2_model_generates_as_ours(tok, assets, tmp_path, capsys):
    # A random model emits varied text, so the comparison covers more than the trained run's output.
    save_ours(tmp_path / "run", random_gpt(tiny_config(tok.vocab_size, "gpt2", n_ctx=32), seed=9), assets.tokenizer)
    assert convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys).code == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    for prompt in ("The old farmer", "Every river"):
        ours = our_greedy(tmp_path / "run", prompt, 16, capsys)
        theirs, _ = hf_greedy(tmp_path / "hf", prompt, 16)
        assert theirs == ours and len(ours) > len(prompt) + 10


def test_openai_bpe_export_tokenizer_json(bpe_tok, tmp_path, capsys):
    path = bpe_tok.save(tmp_path / "tok.json")
    save_ours(tmp_path / "run", random_gpt(tiny_config(bpe_tok.vocab_size), seed=3), path)
    assert convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys).code == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(hf_tok).__name__ in ("TokenizersBackend", "PreTrainedTokenizerFast")
    texts = ORDINARY + [make_text(s, 2) for s in range(60, 70)] + [
        "Don't stop: it's the cat's toy!", "'Quoted' words, U.S. and e.g. and Mr. Smith", "wait... 3.14 and 10:30",
        "50% of $5", "a:b and 2^10", "«Bonjour» — said “she” … ﬁne", "line one\n\nline two"]
    # Lower-case strings of words and punctuation: every splitting rule of ours that does not look at case.
    rng = random.Random(5)
    pieces = ["the", "cat", "a", "i", "u", "s", ".", "..", ",", "'", "n't", "'s", ":", "%", "$", "(", ")", "-", "!", " ", " ", "\n"]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 14))) for _ in range(300)]
    for text in texts:
        assert hf_tok.encode(text) == bpe_tok.encode(text), text
    greedy, _ = hf_greedy(tmp_path / "hf", "the farmer kept a small", 10)
    assert greedy == our_greedy(tmp_path / "run", "the farmer kept a small", 10, capsys)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_export_modes_follow_the_umask(bpe_tok, tmp_path, umask):
    path = bpe_tok.save(tmp_path / "tok.json")
    save_ours(tmp_path / "run", random_gpt(tiny_config(bpe_tok.vocab_size), seed=1), path)
    code = ("import os, sys; os.umask(int(sys.argv[1], 8)); from gpt1cli.cli.app import main; "
            "main(['convert', '--to-hf', sys.argv[2], '--ckpt', sys.argv[3]])")
    done = subprocess.run([sys.executable, "-c", code, oct(umask), str(tmp_path / "hf"), str(tmp_path / "run")],
                          cwd=support.REPO, env=support.cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "hf"
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    files = list(out.iterdir())
    assert len(files) == 10  # + vocab.json and merges.txt for the original BPE
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name


# ---------------------------------------------------------------------------------------------
# transformers -> ours, the folder's own tokenizer


SENTENCES = [make_text(seed, 4) for seed in range(12)]


def byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(SENTENCES, trainer)
    return backend


@pytest.fixture(scope="module")
def gpt2_folders(tmp_path_factory):
    """A GPT-2 folder as transformers saves it (tokenizer.json), and one with vocab.json + merges.txt only."""
    root = tmp_path_factory.mktemp("gpt2")
    backend = byte_level_tokenizer()
    eos = backend.token_to_id("<|endoftext|>")
    assert eos == 0
    model = hf_model("gpt2", backend.get_vocab_size(), seed=6, n_positions=48)  # bos = eos = 0
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    json_form = root / "json"
    model.save_pretrained(json_form)
    fast.save_pretrained(json_form)
    files_form = root / "files"
    model.save_pretrained(files_form)
    files_form.joinpath("vocab.json").write_text(json.dumps(backend.get_vocab()), encoding="utf-8")
    merges = json.loads(backend.to_str())["model"]["merges"]
    lines = [m if isinstance(m, str) else " ".join(m) for m in merges]
    files_form.joinpath("merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n", encoding="utf-8")
    files_form.joinpath("tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>", "add_prefix_space": False}), encoding="utf-8")
    return {"json": json_form, "files": files_form}


@pytest.mark.parametrize("form", ["json", "files"])
def test_gpt2_folder_imports_with_its_own_tokenizer(form, gpt2_folders, tmp_path, capsys):
    folder = gpt2_folders[form]
    assert ("tokenizer.json" in {p.name for p in folder.iterdir()}) == (form == "json")
    result = convert(["--from-hf", folder, "--out", tmp_path / "run"], capsys)
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(tmp_path / "run")
    assert checkpoint.tokenizer_path.name == "tokenizer.json"
    ours = tokenizer_for(checkpoint)
    assert ours.kind == "hf-tokenizers"
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    n = len(reference)
    assert ours.vocab_size == n + 4 == checkpoint.config.vocab_size  # pad, start, delim, extract appended
    assert ours.eos_id == reference.eos_token_id == 0
    assert sorted(ours.specials.values()) == [0, n, n + 1, n + 2, n + 3]
    assert checkpoint.meta["source"]["special_rows_added"] == 4
    for text in STRINGS[:5] + ORDINARY:
        assert ours.encode(text) == reference.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    for prompt in ("The cat", "Alice read"):
        ids = reference(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False)
        theirs = reference.decode(out[0], skip_special_tokens=True)
        assert our_greedy(tmp_path / "run", prompt, 12, capsys) == theirs


def test_imported_gpt2_run_trains_on(gpt2_folders, tmp_path, capsys):
    """An import continues as any checkpoint of ours does: fine-tuning, and tokenizing a corpus with its tokenizer."""
    assert convert(["--from-hf", gpt2_folders["json"], "--out", tmp_path / "run"], capsys).code == 0
    rows = [{"prompt": f"Q{i}: {make_text(i, 1)[:30]}", "completion": f" answer {i}"} for i in range(6)]
    data = support.write_task_jsonl(tmp_path / "pairs.jsonl", rows)
    result = support.run_main(["finetune", "--task", "generate", "--train", data, "--val", data, "--from", tmp_path / "run",
                               "--out", tmp_path / "tuned", "--lr", "1e-3", "--batch-size", "6", "--epochs", "3",
                               "--device", "cpu", "--quiet"], capsys)
    assert result.code == 0, result.err
    tuned = load_checkpoint(tmp_path / "tuned")
    assert tuned.task["name"] == "generate"
    assert tuned.tokenizer_path.read_bytes() == load_checkpoint(tmp_path / "run").tokenizer_path.read_bytes()
    corpus = support.write_txt(tmp_path / "corpus.txt", [[s] for s in SENTENCES])
    tokenized = support.run_main(["tokenize", corpus, "--out", tmp_path / "shards", "--tokenizer",
                                  load_checkpoint(tmp_path / "run").tokenizer_path, "--val-fraction", "0.2", "--quiet"], capsys)
    assert tokenized.code == 0, tokenized.err
    manifest = support.read_manifest(tmp_path / "shards")
    assert manifest["tokenizer"]["vocab_size"] == tuned.config.vocab_size
    # Continued pre-training on those shards starts from the imported weights (a near-zero lr keeps them).
    imported = load_checkpoint(tmp_path / "run")
    result = support.run_main(["pretrain", "--shards", tmp_path / "shards", "--init-from", tmp_path / "run", "--out",
                               tmp_path / "pre", "--steps", "1", "--batch-size", "2", "--lr", "1e-12", "--warmup", "1",
                               "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    continued = load_checkpoint(tmp_path / "pre")
    assert continued.config.n_ctx == imported.config.n_ctx and continued.config.arch == "gpt2"
    assert max(float((continued.state_dict[k] - v).abs().max()) for k, v in imported.state_dict.items()) < 1e-6
    assert support.records(tmp_path / "pre", "config")[0]["config"]["n_ctx"] == imported.config.n_ctx


def test_gpt2_round_trip_through_our_export(gpt2_folders, tmp_path, capsys):
    assert convert(["--from-hf", gpt2_folders["json"], "--out", tmp_path / "run"], capsys).code == 0
    assert convert(["--to-hf", tmp_path / "hf", "--ckpt", tmp_path / "run"], capsys).code == 0
    ours = tokenizer_for(load_checkpoint(tmp_path / "run"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ORDINARY + ["text with <|endoftext|> inside"]:
        assert hf_tok.encode(text) == ours.encode(text), text
    assert hf_tok.convert_tokens_to_ids("<|start|>") == ours.start_id
    theirs, _ = hf_greedy(tmp_path / "hf", "The cat", 12)
    assert theirs == our_greedy(tmp_path / "run", "The cat", 12, capsys)
    assert convert(["--from-hf", tmp_path / "hf", "--out", tmp_path / "back"], capsys).code == 0
    assert load_checkpoint(tmp_path / "back").tokenizer_path.read_bytes() == load_checkpoint(tmp_path / "run").tokenizer_path.read_bytes()


def test_openai_gpt_folder_imports_with_its_own_tokenizer(bpe_tok, tmp_path, capsys):
    folder = tmp_path / "openai-gpt"
    model = hf_model("gpt1", bpe_tok.base_vocab_size, seed=8, n_positions=48)
    model.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(bpe_tok.vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in bpe_tok.merges), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "OpenAIGPTTokenizer"}), encoding="utf-8")
    result = convert(["--from-hf", folder, "--out", tmp_path / "run"], capsys)
    assert result.code == 0, result.err
    checkpoint = load_checkpoint(tmp_path / "run")
    ours = tokenizer_for(checkpoint)
    assert ours.kind == "openai-bpe" and ours.to_bytes() == bpe_tok.to_bytes()
    assert checkpoint.meta["source"]["special_rows_added"] == 5
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    for text in ORDINARY:
        assert ours.encode(text) == reference.encode(text), text
    # The added rows are the mean embedding: their logits never lead, so greedy text is transformers'.
    emb = checkpoint.state_dict["tok_emb.weight"]
    assert torch.allclose(emb[-1], model.transformer.tokens_embed.weight.mean(dim=0), atol=1e-6)
    for prompt in ("the farmer kept", "alice read the"):
        ids = torch.tensor([reference.encode(prompt)])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out[0].tolist()[ids.shape[1]:] == _our_tokens(tmp_path / "run", reference.encode(prompt), 12)


def _our_tokens(run, prompt_ids, n):
    from gpt1cli.model.generation.sampling import generate_tokens

    model, _ = model_from_checkpoint(run, torch.device("cpu"))
    return list(generate_tokens(model, prompt_ids, max_new_tokens=n, temperature=0.0))


# ---------------------------------------------------------------------------------------------
# Refusals


def test_bad_folders_are_one_line_errors(gpt2_folders, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(gpt2_folders["json"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    support.assert_one_error_line(convert(["--from-hf", bare, "--out", tmp_path / "run"], capsys),
                                  "carries no tokenizer", "--tokenizer")
    broken = tmp_path / "broken"
    shutil.copytree(gpt2_folders["json"], broken)
    (broken / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "zz"]]}}')
    support.assert_one_error_line(convert(["--from-hf", broken, "--out", tmp_path / "run"], capsys),
                                  "tokenizer.json", "corrupt")
    (broken / "tokenizer.json").write_text("{not json")
    support.assert_one_error_line(convert(["--from-hf", broken, "--out", tmp_path / "run"], capsys),
                                  "tokenizer.json", "key must be a string")
    files = tmp_path / "files"
    shutil.copytree(gpt2_folders["files"], files)
    (files / "merges.txt").write_text("#version: 0.2\nzz qq\n")
    support.assert_one_error_line(convert(["--from-hf", files, "--out", tmp_path / "run"], capsys), "merges.txt")
    assert not (tmp_path / "run").exists()


def test_missing_tokenizers_package_is_one_line(gpt2_folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import tokenizers now raises ImportError
    result = convert(["--from-hf", gpt2_folders["json"], "--out", tmp_path / "run"], capsys)
    support.assert_one_error_line(result, "needs the tokenizers package: pip install tokenizers")


def test_load_tokenizer_reads_a_plain_tokenizer_json(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(byte_level_tokenizer().to_str(), encoding="utf-8")
    tok = load_tokenizer(path)
    assert tok.kind == "hf-tokenizers" and tok.eos_id == 0 and tok.vocab_size == 364
    saved = tok.save(tmp_path / "ours.json")
    again = load_tokenizer(saved)
    assert again.specials == tok.specials and again.hash() == tok.hash()
    assert again.encode(SENTENCES[0]) == tok.encode(SENTENCES[0]) and again.decode(tok.encode(SENTENCES[0])) == SENTENCES[0]
    assert isinstance(load_tokenizer(OpenAIBPETokenizer(["a", "a</w>"], [("a", "a</w>")]).save(tmp_path / "o.json")),
                      OpenAIBPETokenizer)
