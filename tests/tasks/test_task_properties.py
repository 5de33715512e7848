"""Properties of the task models: symmetric similarity, choice-order invariance of mcq,
padding invariance, L1 over the sequences' own tokens, both --lm-coef settings learn, and the
zero-shot scorer picks the memorised continuation."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from support import (
    MEMO_SENTENCES, assert_ok, checkpoint_meta, classify_examples, finetuned, read_jsonl, run_main, task_file,
    write_task_jsonl,
)

CPU = torch.device("cpu")


def load(run):
    from gpt1cli.tokenizer import load_tokenizer
    from gpt1cli.tasks.inference import load_task_model

    model, checkpoint = load_task_model(run, CPU)
    return model, checkpoint, load_tokenizer(checkpoint.tokenizer_path)


def logits_of(run, rows, task, batch_size=32):
    from gpt1cli.tasks.data import Example
    from gpt1cli.tasks.inference import encode_examples, infer

    model, checkpoint, tok = load(run)
    examples = [Example({k: v for k, v in r.items() if k != "label"}, r.get("label"), f"row {i}")
                for i, r in enumerate(rows)]
    encoded = encode_examples(examples, task, tok, checkpoint.config.n_ctx)
    return infer(model, encoded, tok.pad_id, CPU, batch_size=batch_size, regression=checkpoint.task["regression"])


def predict(capsys, run, rows, path):
    data = write_task_jsonl(path.with_suffix(".in.jsonl"), rows)
    assert_ok(run_main(["predict", "--ckpt", run, "--data", data, "--out", path, "--device", "cpu"], capsys))
    return read_jsonl(path)


# ---------------------------------------------------------------------------------------------
# Similarity is symmetric


@pytest.mark.parametrize("variant", ["similar", "similar-reg"])
def test_similarity_is_symmetric(variant, task_assets, tmp_path, capsys):
    run = finetuned(task_assets, variant)
    rows = read_jsonl(task_file(task_assets, variant, "test"))
    swapped = [dict(r, a=r["b"], b=r["a"]) for r in rows]
    straight, crossed = logits_of(run, rows, "similar"), logits_of(run, swapped, "similar")
    torch.testing.assert_close(straight, crossed, atol=1e-5, rtol=1e-5)
    # not symmetric because constant: the outputs do vary between examples
    assert float(straight.std(dim=0).max()) > 1e-4
    preds, preds_swapped = predict(capsys, run, rows, tmp_path / "a.jsonl"), predict(capsys, run, swapped, tmp_path / "b.jsonl")
    assert len(preds) == len(preds_swapped) == len(rows)
    for p, q in zip(preds, preds_swapped):
        if variant == "similar":
            assert p["label"] == q["label"]
            assert p["probs"] == pytest.approx(q["probs"], abs=2e-6)
        else:
            assert p["value"] == pytest.approx(q["value"], abs=1e-5)


def test_similarity_adds_the_final_states_of_both_orders(task_assets):
    """README: [a; delim; b] and [b; delim; a] run separately, final states added, then the head."""
    from gpt1cli.tasks.data import Example
    from gpt1cli.tasks.transforms import transform
    from gpt1cli.tasks.inference import specials_of

    run = finetuned(task_assets, "similar")
    model, checkpoint, tok = load(run)
    rows = read_jsonl(task_file(task_assets, "similar", "test"))[:4]
    got = logits_of(run, rows, "similar")
    with torch.no_grad():
        for i, row in enumerate(rows):
            ab, ba = transform(Example(row, None, "x"), "similar", tok.encode, specials_of(tok), checkpoint.config.n_ctx)
            assert ab[0] == tok.start_id and ab[-1] == tok.extract_id and ba[0] == tok.start_id
            h_ab = model.gpt(torch.tensor([ab]))[0, -1]
            h_ba = model.gpt(torch.tensor([ba]))[0, -1]
            torch.testing.assert_close(got[i], model.head(h_ab + h_ba), atol=1e-5, rtol=1e-5)
            # and not the head of either order alone
            assert not torch.allclose(got[i], model.head(h_ab), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Multiple choice: one score per choice, softmax over choices


def test_mcq_probabilities_follow_a_permutation_of_the_choices(task_assets, tmp_path, capsys):
    run = finetuned(task_assets, "mcq")
    rows = read_jsonl(task_file(task_assets, "mcq", "test"))
    rng = random.Random(5)
    perms, permuted = [], []
    for r in rows:
        perm = [0, 1, 2]
        while perm == [0, 1, 2]:
            rng.shuffle(perm)
        perms.append(perm)  # new position j holds old choice perm[j]
        permuted.append(dict(r, choices=[r["choices"][k] for k in perm], label=perm.index(r["label"])))
    base, moved = logits_of(run, rows, "mcq"), logits_of(run, permuted, "mcq")
    assert base.shape == (16, 3)
    for i, perm in enumerate(perms):
        torch.testing.assert_close(moved[i], base[i][perm], atol=1e-5, rtol=1e-5)
    assert float(base.std()) > 1e-4  # the scores are not all equal
    preds, preds_moved = predict(capsys, run, rows, tmp_path / "a.jsonl"), predict(capsys, run, permuted, tmp_path / "b.jsonl")
    for p, q, perm in zip(preds, preds_moved, perms):
        assert q["probs"] == pytest.approx([p["probs"][k] for k in perm], abs=2e-6)
        assert perm[q["label"]] == p["label"]


def test_mcq_scores_each_choice_independently_with_the_head(task_assets):
    from gpt1cli.tasks.data import Example
    from gpt1cli.tasks.inference import specials_of
    from gpt1cli.tasks.transforms import transform

    run = finetuned(task_assets, "mcq")
    model, checkpoint, tok = load(run)
    row = read_jsonl(task_file(task_assets, "mcq", "test"))[0]
    (got,) = logits_of(run, [row], "mcq")
    with torch.no_grad():
        seqs = transform(Example(row, None, "x"), "mcq", tok.encode, specials_of(tok), checkpoint.config.n_ctx)
        scores = torch.stack([model.head(model.gpt(torch.tensor([s]))[0, -1])[0] for s in seqs])
    torch.testing.assert_close(got, scores, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Right padding needs no mask; L1 ignores the pads


@pytest.mark.parametrize("task", ["classify", "entail", "mcq"])
def test_batching_and_padding_do_not_change_the_outputs(task, task_assets):
    run = finetuned(task_assets, task)
    rows = read_jsonl(task_file(task_assets, task, "test"))
    one_by_one = logits_of(run, rows, task, batch_size=1)
    batched = logits_of(run, rows, task, batch_size=16)
    torch.testing.assert_close(one_by_one, batched, atol=1e-5, rtol=1e-5)


def test_lm_loss_covers_each_sequence_own_tokens_only(task_assets):
    from gpt1cli.tasks.heads import collate

    model, _, tok = load(finetuned(task_assets, "classify"))
    short = [3, *tok.encode("the old dog"), 5]
    long = [3, *tok.encode("a young child read one lovely book near the window"), 5]
    batch = collate([[short], [long]], None, tok.pad_id)
    assert batch.tokens.shape == (2, len(long)) and int(batch.tokens[0, -1]) == tok.pad_id
    with torch.no_grad():
        _, lm_loss = model(batch, with_lm_loss=True)
        total, count = 0.0, 0
        for seq in (short, long):
            logits = model.gpt.logits(model.gpt(torch.tensor([seq])))[0, :-1]
            total += float(F.cross_entropy(logits, torch.tensor(seq[1:]), reduction="sum"))
            count += len(seq) - 1
    assert float(lm_loss) == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Both objectives train


@pytest.mark.parametrize("lm_coef", ["0", "0.5"])
def test_lm_coef_settings_both_learn_a_separable_task(lm_coef, task_assets, tmp_path, capsys):
    """L3 = L2 + lambda * L1 with lambda 0 (L1 off) and 0.5: both learn a task whose classes use
    disjoint words (chance 0.5)."""
    import json

    train = write_task_jsonl(tmp_path / "train.jsonl", classify_examples(64, 101))
    test = write_task_jsonl(tmp_path / "test.jsonl", classify_examples(64, 103))
    out = tmp_path / "run"
    assert_ok(run_main(["finetune", "--task", "classify", "--train", train,
                        "--val", task_file(task_assets, "classify", "val"), "--from", task_assets.run, "--out", out,
                        "--lm-coef", lm_coef, "--epochs", "8", "--batch-size", "8", "--lr", "1e-3",
                        "--device", "cpu", "--quiet"], capsys))
    log = read_jsonl(out / "metrics.jsonl")
    train_recs = [r for r in log if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(1, 65))
    first, last = train_recs[:8], train_recs[-8:]
    mean = lambda recs, key: sum(r[key] for r in recs) / len(recs)  # noqa: E731
    assert mean(last, "task_loss") < mean(first, "task_loss") - 0.2, [r["task_loss"] for r in train_recs]
    if lm_coef == "0":
        assert all(r["lm_loss"] is None and r["loss"] == r["task_loss"] for r in train_recs)
    else:
        for r in train_recs:
            assert r["loss"] == pytest.approx(r["task_loss"] + 0.5 * r["lm_loss"], rel=1e-5)
        assert mean(last, "lm_loss") < mean(first, "lm_loss")
    evals = [r["accuracy"] for r in log if r["kind"] == "eval"]
    assert len(evals) == 8 and max(evals) >= 0.85, evals
    assert checkpoint_meta(out)["task"]["lm_coef"] == float(lm_coef)
    report_path = tmp_path / "test.json"
    assert_ok(run_main(["eval", "--ckpt", out, "--task", "classify", "--data", test, "--json", report_path,
                        "--device", "cpu"], capsys))
    assert json.loads(report_path.read_text())["accuracy"] >= 0.8


# ---------------------------------------------------------------------------------------------
# Zero-shot multiple choice


def memo_mcq_rows() -> list[dict]:
    """The true ending of a memorised sentence vs the same words scrambled; the answer alternates."""
    rng = random.Random(11)
    rows = []
    for i, sentence in enumerate(MEMO_SENTENCES):
        words = sentence.split()
        for cut in (3, 5):
            rest = words[cut:]
            scrambled = list(rest)
            while scrambled == rest:
                rng.shuffle(scrambled)
            true, false = " ".join(rest) + ".", " ".join(scrambled) + "."
            context = " ".join(words[:cut]).capitalize()
            label = (i + cut) % 2
            rows.append({"context": context, "choices": [true, false] if label == 0 else [false, true], "label": label})
    return rows


def test_zero_shot_picks_the_memorised_continuation(task_assets, tmp_path, capsys):
    import json

    from gpt1cli.tokenizer import load_tokenizer
    from gpt1cli.model.loading import model_from_checkpoint
    from gpt1cli.tasks.fewshot import score_candidates

    rows = memo_mcq_rows()
    data = write_task_jsonl(tmp_path / "memo.jsonl", rows)
    out = tmp_path / "zs.json"
    assert_ok(run_main(["eval", "--ckpt", task_assets.memo_run, "--task", "mcq", "--data", data, "--zero-shot",
                        "--json", out, "--device", "cpu"], capsys))
    report = json.loads(out.read_text())
    assert report["mode"] == "zero-shot" and report["chance"] == 0.5 and report["examples"] == 8
    assert report["accuracy"] == 1.0, report
    assert report["confusion"] == [[4, 0], [0, 4]]

    model, checkpoint = model_from_checkpoint(task_assets.memo_run, CPU)
    tok = load_tokenizer(checkpoint.tokenizer_path)
    for row in rows:
        context = tok.encode(row["context"])
        scores = score_candidates(model, context, [tok.encode(c) for c in row["choices"]], CPU, tok.pad_id)
        right, wrong = scores[row["label"]], scores[1 - row["label"]]
        assert right > -1.0 and right > wrong + 1.0, (row, scores)  # mean log-prob per token
