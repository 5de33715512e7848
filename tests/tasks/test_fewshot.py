"""In-context learning: templates, verbalisers, prompts of K solved examples that fit the context
(examples dropped, never the query), the shared-prefix scorer, `--shots 0` = `--zero-shot` for mcq,
and a toy task the language model has memorised, scored zero-, one- and two-shot."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch

import support
from gpt1cli.checkpoint import save_checkpoint
from gpt1cli.config import preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.gpt import GPT
from gpt1cli.model.loading import model_from_checkpoint
from gpt1cli.tasks.data import Example
from gpt1cli.tasks.fewshot import (
    DEFAULT_TEMPLATES,
    FewShotTask,
    Template,
    draw_shots,
    encode_lines,
    fit_prompt,
    parse_shots,
    parse_verbalizer,
    score_candidates,
)

CPU = torch.device("cpu")
SIGNALS = {"summer": "pos", "morning": "pos", "winter": "neg", "night": "neg"}
ANSWERS = {"pos": "warm", "neg": "cold"}
NEUTRAL = [w for w in support.WORDS if w not in SIGNALS and w not in ANSWERS.values()]


def toy_rows(n: int, seed: int) -> list[dict]:
    """Three neutral words then a signal word; the label follows the signal word."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        signal = rng.choice(sorted(SIGNALS))
        rows.append({"text": " ".join([*(rng.choice(NEUTRAL) for _ in range(3)), signal]), "label": SIGNALS[signal]})
    return rows


def examples(rows, task="classify") -> list[Example]:
    fields = {"classify": ("text",), "mcq": ("context", "choices")}[task]
    return [Example({k: r[k] for k in fields}, r["label"], f"rows:{i + 1}") for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# Templates, verbalisers, shot lists


def test_default_templates_split_at_the_answer():
    fields = {"text": "t", "premise": "p", "hypothesis": "h", "a": "x", "b": "y", "context": "c"}
    for task, text in DEFAULT_TEMPLATES.items():
        template = Template(text, task)
        assert template.prefix(fields) + " ANS" + template.suffix(fields) == text.format(**fields, answer="ANS")
        assert template.solved(fields, "ANS") == text.format(**fields, answer="ANS")
    t = Template("Q: {text} => {answer}. Done", "classify")
    assert t.prefix({"text": "a b"}) == "Q: a b =>"
    assert t.suffix({"text": "a b"}) == ". Done"
    assert t.solved({"text": "a b"}, "yes") == "Q: a b => yes. Done"
    assert Template("{{x}} {text} {answer}", "classify").prefix({"text": "t"}) == "{x} t"


@pytest.mark.parametrize(
    "text, task, message",
    [
        ("{text}", "classify", "exactly once"),
        ("{text} {answer} {answer}", "classify", "exactly once"),
        ("{premise} {answer}", "classify", "uses {premise}, but a classify example has text"),
        ("{choices} {answer}", "mcq", "uses {choices}"),
        ("{text!r} {answer}", "classify", "plain {text} placeholders"),
        ("{text:>5} {answer}", "classify", "plain {text} placeholders"),
        ("{text {answer}", "classify", "not a valid template"),
    ],
)
def test_bad_templates(text, task, message):
    with pytest.raises(Gpt1Error, match=message.replace("{", r"\{").replace("}", r"\}")):
        Template(text, task)


def test_verbalizers_and_shot_lists(tmp_path):
    assert parse_verbalizer(None) is None
    assert parse_verbalizer('{"pos": "warm", "1": "cold"}') == {"pos": "warm", "1": "cold"}
    file = tmp_path / "v.json"
    file.write_text('{"a": "yes", "b": "no"}')
    assert parse_verbalizer(str(file)) == {"a": "yes", "b": "no"}
    for spec, message in [("{bad", "not valid JSON"), ('["x"]', "neither a JSON object nor a JSON file"),
                          ('{"a": "x", "b": "x"}', "same answer"), ('{"a": 3}', "non-empty string"),
                          ("{}", "non-empty JSON object"), (str(tmp_path / "missing.json"), "neither")]:
        with pytest.raises(Gpt1Error, match=message):
            parse_verbalizer(spec)
    assert parse_shots("0,1,8") == [0, 1, 8]
    assert parse_shots(" 2 , 2,0") == [2, 0]
    for spec in ("a", "1,-1", "", "1.5"):
        with pytest.raises(Gpt1Error, match="--shots takes counts"):
            parse_shots(spec)


def test_shot_draws_are_seeded_nested_and_never_the_query():
    for query in range(10):
        eight = draw_shots(10, 8, query, seed=3, exclude=query)
        assert len(eight) == len(set(eight)) == 8 and query not in eight
        assert draw_shots(10, 1, query, seed=3, exclude=query) == eight[:1]
        assert draw_shots(10, 8, query, seed=3, exclude=query) == eight
    assert draw_shots(10, 8, 0, seed=3) != draw_shots(10, 8, 0, seed=4)
    assert draw_shots(10, 4, 0, seed=3) != draw_shots(10, 4, 1, seed=3)
    assert draw_shots(10, 0, 0, seed=3) == []
    assert len(draw_shots(9, 9, 0, seed=1)) == 9  # a separate pool: every example may be drawn


# ---------------------------------------------------------------------------------------------
# Prompts


def test_prompt_holds_exactly_k_solved_examples_then_the_query(tok):
    rows = toy_rows(12, seed=1)
    ex = examples(rows)
    fs = FewShotTask("classify", tok, verbalizer=ANSWERS, labels=["neg", "pos"])
    answers = {label: tok.encode(word) for label, word in ANSWERS.items()}
    for k in (0, 1, 3):
        shots, query = ex[1 : 1 + k], ex[0]
        prompt = fs.prompt(shots, query, n_ctx=512)
        assert prompt.shots == k and not prompt.truncated
        expected = []
        for shot in shots:  # each solved example: its text, "Answer:", its answer word
            expected += tok.encode(shot.fields["text"]) + tok.encode("Answer:") + answers[shot.label]
        expected += tok.encode(query.fields["text"]) + tok.encode("Answer:")
        assert prompt.tokens == expected
        text = fs.prompt_text(shots, query)
        assert text.count("Answer:") == k + 1 and text.endswith(query.fields["text"] + "\nAnswer:")
        assert all(s.fields["text"] + "\nAnswer: " + ANSWERS[s.label] in text for s in shots)
        assert tok.decode(prompt.tokens).count("Answer:") == k + 1


def test_a_short_context_drops_examples_from_the_end_never_the_query(tok):
    ex = examples(toy_rows(12, seed=2))
    fs = FewShotTask("classify", tok, verbalizer=ANSWERS)
    query, shots = ex[0], ex[1:9]
    solved = [fs.solved(s) for s in shots]
    longest = max(len(a) for a in fs.candidates(query))
    q = fs.query(query)
    for n_ctx in (len(q) + longest + len(solved[0]) + len(solved[1]) + 1, len(q) + longest + len(solved[0]), len(q) + longest):
        prompt = fs.prompt(shots, query, n_ctx)
        fitting = max(j for j in range(9) if sum(map(len, solved[:j])) + len(q) + longest <= n_ctx)
        assert prompt.shots == fitting < 8
        assert prompt.tokens == [t for s in solved[:fitting] for t in s] + q  # the first examples, then the query
        assert len(prompt.tokens) + longest <= n_ctx and not prompt.truncated
    # Only a query longer than the context on its own loses tokens, from its left.
    cut = fit_prompt(solved, q, len(q) - 2)
    assert cut.truncated and cut.shots == 0 and cut.tokens == q[2:]


@torch.no_grad()
def one_forward_loglik(model, context: list[int], choice: list[int]) -> float:
    """Reference: the mean log-probability of ``choice`` after ``context``, one whole forward, no cache."""
    tokens = torch.tensor([context + choice])
    logprobs = torch.log_softmax(model.logits(model(tokens[:, :-1])[:, len(context) - 1 :]).float(), dim=-1)
    return float(logprobs[0, torch.arange(len(choice)), tokens[0, len(context):]].mean())


def test_scorer_equals_one_forward_per_candidate(assets, tok):
    model, _ = model_from_checkpoint(assets.run, CPU)
    context = tok.encode("The old farmer walked near the river and")
    candidates = [tok.encode(c) for c in ("sang", "the young child wrote", "a red door", "then")]
    scores = score_candidates(model, context, candidates, CPU, tok.pad_id)
    for score, candidate in zip(scores, candidates):
        assert score == pytest.approx(one_forward_loglik(model, context, candidate), abs=1e-5)


def test_encode_lines_encodes_each_line_alone(tok):
    assert encode_lines(tok, "a cat\n\nsat here\n") == tok.encode("a cat") + tok.encode("sat here")


# ---------------------------------------------------------------------------------------------
# gpt1 eval --shots


def mcq_rows(n: int, seed: int) -> list[dict]:
    docs = support.make_documents(2 * n, seed=seed, min_lines=1, max_lines=1)
    rows = []
    for i in range(n):
        def words(doc, n):
            return " ".join(doc[0].split()[:n])

        context, right, wrong = words(docs[2 * i], 5), words(docs[2 * i + 1], 3), words(docs[(2 * i + 3) % len(docs)], 3)
        rows.append({"context": context, "choices": [right, wrong] if i % 2 else [wrong, right], "label": 0 if i % 2 else 1})
    return rows


def test_zero_shots_for_mcq_is_the_zero_shot_scorer(assets, tmp_path, capsys):
    data = support.write_task_jsonl(tmp_path / "mcq.jsonl", mcq_rows(12, seed=5))
    zero = support.run_main(["eval", "--ckpt", assets.run, "--task", "mcq", "--data", data, "--zero-shot",
                             "--json", tmp_path / "zero.json", "--device", "cpu"], capsys)
    assert zero.code == 0, zero.err
    shots = support.run_main(["eval", "--ckpt", assets.run, "--task", "mcq", "--data", data, "--shots", "0,1",
                              "--json", tmp_path / "shots.json", "--device", "cpu"], capsys)
    assert shots.code == 0, shots.err
    z = json.loads((tmp_path / "zero.json").read_text())
    s = json.loads((tmp_path / "shots.json").read_text())
    assert [r["shots"] for r in s["results"]] == [0, 1]
    assert s["results"][0]["accuracy"] == z["accuracy"] and s["results"][0]["confusion"] == z["confusion"]
    assert s["chance"] == 0.5 and s["template"] == "{context} {answer}"
    one = s["results"][1]
    assert one["examples"] == 12 and one["shots_used_max"] <= 1 and one["truncated_queries"] == 0


@pytest.fixture(scope="module")
def toy_lm(assets, tok, tmp_path_factory):
    """A tiny LM trained from scratch on documents of solved toy examples in the few-shot format
    ("<text> Answer: <warm|cold>" ...), so it has learnt the task: the label follows the signal word."""
    root = tmp_path_factory.mktemp("fewshot")
    fs = FewShotTask("classify", tok, verbalizer=ANSWERS)
    solved = [fs.solved(e) for e in examples(toy_rows(200, seed=7))]
    n_ctx = 64
    stream = [t for s in solved for t in s]
    torch.manual_seed(0)
    model = GPT(preset("tiny", tok.vocab_size, n_ctx=n_ctx, dropout=0.0, attn_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rng = random.Random(0)
    with support.one_torch_thread():
        for _ in range(200):
            starts = [rng.randrange(len(stream) - n_ctx - 1) for _ in range(16)]
            x = torch.tensor([stream[s : s + n_ctx + 1] for s in starts])
            loss = model(x[:, :-1], targets=x[:, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    run = root / "lm"
    save_checkpoint(run, 200, model_state=model.state_dict(), config=model.config, tokenizer_path=assets.tokenizer,
                    meta={"kind": "pretrain", "task": None})
    data = support.write_task_jsonl(root / "test.jsonl", toy_rows(16, seed=8))
    train = support.write_task_jsonl(root / "train.jsonl", toy_rows(10, seed=9))
    return root, run, data, train


def test_few_shot_on_a_learnt_toy_task(toy_lm, capsys):
    root, run, data, train = toy_lm
    out = root / "fewshot.json"
    result = support.run_main(["eval", "--ckpt", run, "--task", "classify", "--data", data, "--shots", "0,1,2",
                               "--verbalizer", json.dumps(ANSWERS), "--json", out, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["shots"] for r in rows] == [0, 1, 2]
    assert report["chance"] == 0.5 and report["answers"] == ["warm", "cold"] and report["labels"] == ["pos", "neg"]
    for row in rows:
        assert row["examples"] == 16
        assert row["accuracy"] >= 0.9, row  # chance is 0.5
        assert row["shots_used_mean"] == row["shots_used_min"] == row["shots"]  # everything fits in 64 tokens
        assert row["fewer_shots"] == 0 and row["truncated_queries"] == 0
        assert sum(map(sum, row["confusion"])) == 16
    assert report["example_prompt"].count("Answer:") == 3
    assert "in-context learning: classify (chance 0.5000" in result.out
    table_rows = re.findall(r"^│\s+(\d+)\s+│\s+([\d.]+)\s+│", result.out, re.M)  # shots, accuracy
    assert table_rows == [(str(r["shots"]), f"{r['accuracy']:.4f}") for r in rows]


def test_shots_from_a_training_file_and_a_tight_context(toy_lm, assets, tok, tmp_path, capsys):
    root, run, data, train = toy_lm
    out = tmp_path / "r.json"
    result = support.run_main(["eval", "--ckpt", run, "--task", "classify", "--data", data, "--shots", "1",
                               "--shots-from", train, "--verbalizer", json.dumps(ANSWERS), "--seed", "2",
                               "--template", "{text}\\nAnswer: {answer}", "--json", out, "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    report = json.loads(out.read_text())
    assert report["shots_from"] == str(train) and report["results"][0]["shots_used_min"] == 1
    assert report["results"][0]["accuracy"] >= 0.9
    # The session run's context (32 tokens) holds the query and only some of 8 solved examples.
    result = support.run_main(["eval", "--ckpt", assets.run, "--task", "classify", "--data", data, "--shots", "0,8",
                               "--verbalizer", json.dumps(ANSWERS), "--template", "{text} {answer}", "--json", out,
                               "--overwrite", "--device", "cpu"], capsys)
    assert result.code == 0, result.err
    zero, eight = json.loads(out.read_text())["results"]
    assert zero["shots_used_max"] == 0 and zero["fewer_shots"] == 0
    assert eight["fewer_shots"] == 16 and 0 < eight["shots_used_max"] < 8
    assert eight["truncated_queries"] == 0
    # The counts match prompts built independently with the same draws.
    fs = FewShotTask("classify", tok, template="{text} {answer}", verbalizer=ANSWERS)
    ex = examples([json.loads(line) for line in open(data)])
    used = [fs.prompt([ex[j] for j in draw_shots(16, 8, i, 0, exclude=i)], ex[i], 32).shots for i in range(16)]
    assert eight["shots_used_mean"] == pytest.approx(sum(used) / 16) and eight["shots_used_min"] == min(used)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--shots", "0", "--verbalizer", '{"pos": "warm"}'], "label 'neg' has no answer word"),
        (["--shots", "16"], "--shots 16 needs 16 solved examples"),
        (["--shots", "1", "--template", "{text}"], "exactly once"),
        (["--shots", "x"], "--shots takes counts"),
        (["--template", "{text} {answer}"], "--template applies to in-context learning: add --shots K"),
        (["--seed", "3"], "--seed applies to in-context learning"),
        (["--shots", "1", "--zero-shot"], "--zero-shot is the mcq K=0 path"),
        (["--shots", "1", "--shots-from", "missing.jsonl"], "task file not found"),
    ],
)
def test_fewshot_errors(toy_lm, capsys, extra, message):
    root, run, data, train = toy_lm
    result = support.run_main(["eval", "--ckpt", run, "--task", "classify", "--data", data, *extra, "--device", "cpu"],
                              capsys)
    line = support.assert_one_error_line(result, message)
    if "no answer word" in message:
        assert f"{data}:" in line  # the file and line of the first unlisted label


def test_regression_labels_are_refused(assets, tmp_path, capsys):
    data = support.write_task_jsonl(tmp_path / "sts.jsonl", [{"a": "a cat", "b": "a dog", "label": 1.0},
                                                             {"a": "the hill", "b": "a hill", "label": 3.5}])
    result = support.run_main(["eval", "--ckpt", assets.run, "--task", "similar", "--data", data, "--shots", "0",
                               "--device", "cpu"], capsys)
    support.assert_one_error_line(result, f"{data}:1", "label 1.0 must be a string or an integer")


def test_mcq_refuses_a_verbalizer(assets, tmp_path, capsys):
    data = support.write_task_jsonl(tmp_path / "mcq.jsonl", mcq_rows(4, seed=1))
    result = support.run_main(["eval", "--ckpt", assets.run, "--task", "mcq", "--data", data, "--shots", "1",
                               "--verbalizer", '{"0": "a"}', "--device", "cpu"], capsys)
    support.assert_one_error_line(result, "mcq answers are the choices themselves")
