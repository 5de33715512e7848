"""The generate task: sequences and loss masks, fine-tuning end to end (a memorised toy task),
`gpt1 eval --task generate` metrics, `gpt1 generate` on the fine-tuned checkpoint, and errors."""

from __future__ import annotations

import json
import random

import pytest
import torch

import support
from gpt1cli.checkpoint import load_checkpoint
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.loading import model_from_checkpoint
from gpt1cli.tasks.gen_metrics import generation_metrics
from gpt1cli.tasks.generative import IGNORE, collate_pairs, encode_pair, load_pairs, reference_loss

N_CTX = 32  # the session run's context


def toy_pairs(n: int, seed: int) -> list[dict]:
    """Random 4-word prompts; 5-word completions that share no word with each other, so that
    only a completion's first word depends on its prompt (quick to memorise)."""
    rng = random.Random(seed)
    words = list(support.WORDS)
    distinct = rng.sample(words, 5 * n)
    return [{"prompt": " ".join(rng.choice(words) for _ in range(4)),
             "completion": " ".join(distinct[5 * i : 5 * i + 5])} for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Sequences, masks, files


def test_encode_pair_layout_and_truncation(tok):
    s, d, e = tok.start_id, tok.delim_id, tok.eos_id
    prompt, completion = "the old farmer", "sat near the river"
    p, c = tok.encode(prompt), tok.encode(completion)
    tokens, first = encode_pair(tok, prompt, completion, N_CTX)
    assert tokens == [s, *p, d, *c, e] and first == len(p) + 2
    # A long prompt loses tokens from its left; the completion and its end token stay whole.
    long_prompt = " ".join(["the dog ran quickly"] * 12)
    tokens, first = encode_pair(tok, long_prompt, completion, N_CTX)
    lp = tok.encode(long_prompt)
    assert len(tokens) == N_CTX and tokens[-len(c) - 1:] == [*c, e]
    assert tokens[1:first - 1] == lp[-(N_CTX - 3 - len(c)):]
    # A completion longer than the context is cut on its right and has no end token.
    long_completion = " ".join(["a small bird sang"] * 12)
    tokens, first = encode_pair(tok, prompt, long_completion, N_CTX)
    assert tokens == [s, d, *tok.encode(long_completion)[: N_CTX - 2]] and first == 2


def test_loss_mask_covers_the_completion_and_end_token(tok):
    pairs = [encode_pair(tok, "the cat", "sat on a hill", N_CTX), encode_pair(tok, "a dog ran", "home", N_CTX)]
    inputs, targets = collate_pairs(pairs, tok.pad_id)
    assert inputs.shape == targets.shape == (2, max(len(t) for t, _ in pairs) - 1)
    for row, (tokens, first) in enumerate(pairs):
        counted = [int(t) for t in targets[row] if t != IGNORE]
        assert counted == tokens[first:]  # completion tokens and </s>
        assert inputs[row, : len(tokens) - 1].tolist() == tokens[:-1]
    _, with_prompt = collate_pairs(pairs, tok.pad_id, loss_on_prompt=True)
    for row, (tokens, _) in enumerate(pairs):
        assert [int(t) for t in with_prompt[row] if t != IGNORE] == tokens[1:]


def test_reference_loss_is_the_mean_completion_nll(assets, tok):
    model, _ = model_from_checkpoint(assets.run, torch.device("cpu"))
    pairs = [encode_pair(tok, "the cat", "sat on a hill", N_CTX), encode_pair(tok, "a dog ran", "home", N_CTX)]
    nll = []
    with torch.no_grad():
        for tokens, first in pairs:
            x = torch.tensor([tokens])
            logprobs = torch.log_softmax(model.logits(model(x[:, :-1])), dim=-1)[0]
            nll += [-float(logprobs[i - 1, tokens[i]]) for i in range(first, len(tokens))]
    report = reference_loss(model, pairs, tok.pad_id, torch.device("cpu"))
    assert report["tokens"] == len(nll)
    assert report["loss"] == pytest.approx(sum(nll) / len(nll), rel=1e-5)


def test_load_pairs_fields_and_errors(tmp_path):
    good = tmp_path / "good.jsonl"
    support.write_task_jsonl(good, [{"prompt": "a", "completion": "b"}, {"input": "c", "output": "d", "id": 7}])
    pairs = load_pairs(good)
    assert [(p.prompt, p.completion) for p in pairs] == [("a", "b"), ("c", "d")]
    assert pairs[1].record["id"] == 7
    cases = [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n', ":2: missing the 'completion' field"),
        ('{"input": "a"}\n', ":1: missing the 'output' field"),
        ('{"prompt": "a", "completion": 5}\n', ":1: 'completion' must be a string"),
        ('{"prompt": ["a"], "completion": "b"}\n', ":1: 'prompt' must be a string"),
        ('{"text": "a"}\n', ":1: missing the 'prompt' field"),
        ('{"prompt": "a", "completion": "b"}\nnot json\n', ":2: not valid JSON"),
        ("\n", "holds no examples"),
    ]
    for text, message in cases:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(Gpt1Error, match=message):
            load_pairs(bad)
    bad.write_text('{"prompt": "only"}\n')
    assert load_pairs(bad, require_completion=False)[0].completion is None


def test_generation_metrics_come_from_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    refs = ["the old farmer sat near the river", "a small bird sang in the garden", "one dog ran home"]
    hyps = ["the old farmer sat by the river", "a small bird sang in the garden", " one dog ran home "]
    report = generation_metrics(hyps, refs)
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(scorer.score(r, h)[name].fmeasure for r, h in zip(refs, hyps)) / 3
        assert report[name] == pytest.approx(expected)
    assert report["exact"] == pytest.approx(2 / 3)  # surrounding whitespace does not count
    assert 0 < report["bleu"] < 100 and report["bleu_signature"].startswith("nrefs:1")
    perfect = generation_metrics(refs, refs)
    assert [perfect[k] for k in ("bleu", "chrf", "rouge1", "rouge2", "rougeL")] == pytest.approx([100.0] * 5)
    assert perfect["exact"] == 1.0


# ---------------------------------------------------------------------------------------------
# End to end: fine-tune on a memorised toy task, evaluate, generate


@pytest.fixture(scope="module")
def toy(assets, tmp_path_factory, tok):
    root = tmp_path_factory.mktemp("gen-task")
    rows = toy_pairs(8, seed=11)
    data = support.write_task_jsonl(root / "pairs.jsonl", rows)
    run = root / "run"
    with support.one_torch_thread():
        from gpt1cli.cli.app import main

        main(["finetune", "--task", "generate", "--train", str(data), "--val", str(data), "--from", str(assets.run),
              "--out", str(run), "--lr", "3e-3", "--batch-size", "8", "--epochs", "150", "--eval-every", "50",
              "--metric", "bleu", "--device", "cpu", "--quiet"])
    return root, rows, data, run


def test_finetune_writes_a_decoder_checkpoint_with_the_generate_task(toy):
    root, rows, data, run = toy
    checkpoint = load_checkpoint(run)
    assert checkpoint.meta["kind"] == "finetune"
    task = checkpoint.task
    assert task["name"] == "generate" and task["metric"] == "bleu" and task["loss_on_prompt"] is False
    assert task["format"] == "[start; prompt; delim; completion; eos]"
    assert not any(k.startswith("head.") for k in checkpoint.state_dict)
    model_from_checkpoint(run, torch.device("cpu"))  # strict: the weights are exactly a decoder's
    records = support.read_metrics(run)
    kinds = [r["kind"] for r in records]
    assert kinds.count("config") == 1 and kinds.count("train") == 150
    config = records[0]
    assert config["train_examples"] == config["val_examples"] == 8 and config["task"] == "generate"
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [50, 100, 150]
    assert all({"loss", "bleu", "chrf", "rougeL", "exact"} <= set(r) for r in evals)
    best = min(evals, key=lambda r: (-r["bleu"], r["loss"]))  # the best BLEU; a tie goes to the lower loss
    assert checkpoint.meta["metrics"]["val"]["bleu"] == pytest.approx(best["bleu"])
    assert checkpoint.step == best["step"]
    train = [r["loss"] for r in records if r["kind"] == "train"]
    assert train[-1] < 0.2 < train[0]


def test_eval_generate_reports_the_metrics(toy, capsys):
    root, rows, data, run = toy
    out, preds = root / "eval.json", root / "preds.jsonl"
    result = support.run_main(["eval", "--ckpt", run, "--task", "generate", "--data", data, "--json", out,
                               "--predictions", preds, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"):
        assert report[name] == pytest.approx(100.0), name
        assert name in result.out
    assert report["exact"] == 1.0 and report["examples"] == 8 and report["ended_with_eos"] == 1.0
    assert report["loss"] < 0.2
    # The LM loss on the references is the fine-tuning's validation loss (same file, same weights).
    assert report["loss"] == pytest.approx(load_checkpoint(run).meta["metrics"]["val"]["loss"], rel=1e-4)
    predictions = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [p["completion"] for p in predictions] == [r["completion"] for r in rows]
    assert [p["reference"] for p in predictions] == [r["completion"] for r in rows]


def test_generate_uses_the_task_format_by_itself(toy, capsys):
    root, rows, data, run = toy
    for extra in ([], ["--task-format"], ["--beams", "2"]):
        result = support.run_main(["generate", "--ckpt", run, "--prompt", rows[0]["prompt"], "--temperature", "0",
                                   "--max-new-tokens", "24", "--device", "cpu", *extra], capsys)
        assert result.code == 0, result.err
        if "--beams" in extra:
            assert result.out.splitlines()[1] == rows[0]["completion"]
            assert "eos" in result.out.splitlines()[0]
        else:
            assert result.out == rows[0]["completion"] + "\n"
    plain = support.run_main(["generate", "--ckpt", run, "--prompt", rows[0]["prompt"], "--plain", "--temperature", "0",
                              "--max-new-tokens", "3", "--device", "cpu"], capsys)
    assert plain.code == 0 and plain.out.startswith(rows[0]["prompt"])


def test_batch_generation_of_the_fine_tuned_task(toy, capsys):
    root, rows, data, run = toy
    prompts = root / "prompts.jsonl"
    support.write_task_jsonl(prompts, [{"input": r["prompt"], "n": i} for i, r in enumerate(rows)])
    out = root / "completions.jsonl"
    result = support.run_main(["generate", "--ckpt", run, "--input", prompts, "--out", out, "--beams", "3",
                               "--max-new-tokens", "24", "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["n"] for r in records] == list(range(8))
    for row, record in zip(rows, records):
        assert record["completion"] == row["completion"] and record["finish"] == "eos"
        assert [b["text"] for b in record["beams"]][0] == row["completion"]
        assert record["beams"][0]["score"] >= record["beams"][1]["score"] >= record["beams"][2]["score"]
    # A pairs file as input: its completion is kept as the reference.
    result = support.run_main(["generate", "--ckpt", run, "--input", data, "--out", out, "--temperature", "0",
                               "--max-new-tokens", "24", "--device", "cpu", "-q", "--overwrite"], capsys)
    assert result.code == 0, result.err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["reference"], r["completion"]) for r in records] == \
        [(r["prompt"], r["completion"], r["completion"]) for r in rows]


def test_loss_on_prompt_and_classification_checkpoints(toy, tmp_path, capsys):
    root, rows, data, run = toy
    result = support.run_main(["finetune", "--task", "generate", "--train", data, "--val", data, "--from", load_checkpoint(run).meta["from"],
                               "--out", tmp_path / "p", "--loss-on-prompt", "--epochs", "1", "--batch-size", "8",
                               "--device", "cpu", "-q"], capsys)
    assert result.code == 0, result.err
    assert load_checkpoint(tmp_path / "p").task["loss_on_prompt"] is True
    # A checkpoint fine-tuned for a task with a head is refused for generation metrics.
    import shutil

    folder = tmp_path / "classify"
    shutil.copytree(load_checkpoint(run).path, folder)
    meta = json.loads((folder / "checkpoint.json").read_text())
    meta["task"] = {"name": "classify", "labels": ["a", "b"], "n_outputs": 2}
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    result = support.run_main(["eval", "--ckpt", folder, "--task", "generate", "--data", data, "--device", "cpu"], capsys)
    support.assert_one_error_line(result, "fine-tuned for the classify task")
    # Fine-tuning an already fine-tuned run is refused, as for the other tasks.
    result = support.run_main(["finetune", "--task", "generate", "--train", data, "--val", data, "--from", run,
                               "--out", tmp_path / "again", "--device", "cpu", "-q"], capsys)
    support.assert_one_error_line(result, "already fine-tuned (generate)")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["finetune", "--task", "generate", "--regression"], "--regression applies to the tasks with a head"),
        (["finetune", "--task", "generate", "--lm-coef", "0.1"], "--lm-coef applies to the tasks with a head"),
        (["finetune", "--task", "classify", "--loss-on-prompt"], "--loss-on-prompt applies to --task generate"),
        (["finetune", "--task", "generate", "--metric", "accuracy"], "--metric for the generate task must be one of"),
        (["eval", "--task", "classify", "--beams", "2"], "--beams applies to --task generate"),
        (["eval", "--task", "generate", "--shots", "1"], "not --task generate"),
    ],
)
def test_generate_task_option_errors(toy, tmp_path, capsys, argv, message):
    root, rows, data, run = toy
    command = argv[0]
    extra = ["--train", data, "--val", data, "--from", run, "--out", tmp_path / "x"] if command == "finetune" else \
        ["--ckpt", run, "--data", data]
    result = support.run_main([*argv, *extra, "--device", "cpu"], capsys)
    support.assert_one_error_line(result, message)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, option, reason",
    [
        (["finetune", "--task", "generate", "--max-new-tokens", "0"], "--max-new-tokens", "at least 1"),
        (["eval", "--task", "generate", "--beams", "0"], "--beams", "at least 1"),
        (["eval", "--task", "generate", "--repetition-penalty", "nan"], "--repetition-penalty", "finite"),
    ],
)
def test_generate_task_numbers_refused_at_parse_time(toy, tmp_path, capsys, argv, option, reason):
    root, rows, data, run = toy
    extra = ["--train", data, "--val", data, "--from", run, "--out", tmp_path / "x"] if argv[0] == "finetune" else \
        ["--ckpt", run, "--data", data]
    support.assert_refused_option(support.run_main([*argv, *extra, "--device", "cpu"], capsys), option, reason)
    assert not (tmp_path / "x").exists()
