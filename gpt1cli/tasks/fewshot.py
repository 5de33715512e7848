"""In-context learning (GPT-3's zero-, one- and few-shot evaluation): no weight updates.

For each query, K solved examples drawn from a pool (seeded) are written with a template,
followed by the query written with the same template up to its ``{answer}``. Every candidate
answer (the verbalised labels, or an mcq example's choices) is scored by the language model's
mean log-probability of its tokens after that prompt; the best-scoring candidate is the
prediction. Zero-shot multiple choice (``gpt1 eval --zero-shot``) is the K=0 case.

Encoding: each line of a prompt is encoded on its own and the pieces concatenated, as
``gpt1 tokenize`` encodes the lines of a document; so line breaks in a template cost no tokens
and never become byte tokens the model did not see in pre-training. The answer is encoded on
its own (the tokenizer gives it its leading space), in the solved examples as in the query, so
the model reads the answers of the examples exactly as the candidates it scores.

Context: the prompt plus the longest candidate must fit the context. Solved examples are
dropped from the end until it does; the query is never cut while an example can still go. A
query that does not fit even alone loses tokens from its left (counted as ``truncated``).
"""

from __future__ import annotations

import bisect
import random
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checks import SEED, check_number
from ..errors import Gpt1Error
from ..fileio import parse_json
from ..model.gpt import KVCache
from ..model.loading import model_from_checkpoint
from ..progress import progress_bar
from ..runtime import autocast, step_seed
from ..tokenizer import load_tokenizer
from .data import FIELDS, TASKS, Example, label_set, label_text, load_examples
from .head_eval import baselines, standard_error
from .inference import check_batch_size
from .label_metrics import classification_report

BATCH_SIZE = 16  # scored sequences (a prompt and one candidate) per forward pass unless told

DEFAULT_TEMPLATES = {
    "classify": "{text}\nAnswer: {answer}",
    "entail": "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer: {answer}",
    "similar": "{a}\n{b}\nQuestion: Do both sentences mean the same thing?\nAnswer: {answer}",
    "mcq": "{context} {answer}",
}
SEPARATOR = "\n\n"  # between solved examples and before the query (a blank line)


# ---------------------------------------------------------------------------------------------
# Templates and verbalisers


class Template:
    """A format string with ``{field}`` placeholders of the task and exactly one ``{answer}``."""

    def __init__(self, text: str, task: str):
        allowed = [name for name in FIELDS[task] if name != "choices"]
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise Gpt1Error(f"--template {text!r} is not a valid template ({exc}); write literal braces as {{{{ }}}}") from None
        names = [p[1] for p in parts if p[1] is not None]
        for name, spec, conversion in ((p[1], p[2], p[3]) for p in parts if p[1] is not None):
            if name != "answer" and name not in allowed:
                raise Gpt1Error(f"--template uses {{{name}}}, but a {task} example has {', '.join(allowed)} "
                                f"(and {{answer}})")
            if spec or conversion:
                raise Gpt1Error(f"--template: write plain {{{name}}} placeholders, without format specs or conversions")
        if names.count("answer") != 1:
            raise Gpt1Error(f"--template must hold {{answer}} exactly once, where the answer goes (got {text!r})")
        self.text = text
        self.task = task
        at = next(i for i, p in enumerate(parts) if p[1] == "answer")
        self._prefix = parts[:at] + [(parts[at][0], None, None, None)]
        self._suffix = parts[at + 1:]

    @staticmethod
    def _render(parts, fields: dict) -> str:
        return "".join(literal + (str(fields[name]) if name is not None else "") for literal, name, _, _ in parts)

    def prefix(self, fields: dict) -> str:
        """The text before the answer (trailing spaces dropped: the answer brings its own)."""
        return self._render(self._prefix, fields).rstrip(" \t")

    def suffix(self, fields: dict) -> str:
        return self._render(self._suffix, fields)

    def solved(self, fields: dict, answer: str) -> str:
        """The whole example as text (for display)."""
        prefix = self.prefix(fields)
        sep = "" if not prefix or prefix.endswith("\n") else " "
        return prefix + sep + answer + self.suffix(fields)


def parse_verbalizer(spec: str | None) -> dict[str, str] | None:
    """A JSON object mapping labels to answer words, given inline or as a file name."""
    if spec is None:
        return None
    text, what = spec, "--verbalizer"
    if not spec.lstrip().startswith("{"):
        path = Path(spec)
        if not path.is_file():
            raise Gpt1Error(f"--verbalizer {spec!r} is neither a JSON object nor a JSON file")
        try:
            text = path.read_text(encoding="utf-8-sig")  # -sig: a BOM from an editor is no part of the JSON
        except (OSError, UnicodeDecodeError) as exc:
            raise Gpt1Error(f"cannot read --verbalizer file {path}: {exc}") from None
        what = f"--verbalizer file {path}"
    try:
        mapping = parse_json(text, what)
    except Gpt1Error as exc:
        raise Gpt1Error(f'{exc}; give an object such as {{"pos": "great", "neg": "terrible"}}') from None
    if not isinstance(mapping, dict) or not mapping:
        raise Gpt1Error('--verbalizer must be a non-empty JSON object such as {"pos": "great", "neg": "terrible"}')
    for label, word in mapping.items():
        if not isinstance(word, str) or not word.strip():
            raise Gpt1Error(f"--verbalizer: the answer for label {label!r} must be a non-empty string")
    words = list(mapping.values())
    if len(set(words)) != len(words):
        raise Gpt1Error("--verbalizer maps two labels to the same answer: they could not be told apart")
    return {str(k): v for k, v in mapping.items()}


def parse_shots(spec: str) -> list[int]:
    """``"0,1,8"`` -> ``[0, 1, 8]`` (each a count of solved examples, >= 0, no repeats)."""
    values = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part.isdigit():
            raise Gpt1Error(f"--shots takes counts of solved examples such as 0,1,8; got {spec!r}")
        if int(part) not in values:
            values.append(int(part))
    return values


# ---------------------------------------------------------------------------------------------
# Prompts


def encode_lines(tokenizer, text: str) -> list[int]:
    """Each line encoded on its own, concatenated (as the tokenize pipeline encodes a document)."""
    return [token for line in text.split("\n") if line for token in tokenizer.encode(line)]


@dataclass
class Prompt:
    """A query's context: the solved examples that fit and the query up to its answer."""

    tokens: list[int]
    shots: int  # solved examples in it
    truncated: bool  # the query itself lost tokens (it did not fit even alone)


def fit_prompt(solved: list[list[int]], query: list[int], room: int) -> Prompt:
    """Solved examples (in order) then the query, in at most ``room`` tokens: examples are dropped
    from the end until it fits; the query is cut (from the left) only when it alone is too long."""
    used = len(solved)
    total = sum(len(s) for s in solved)
    while used and total + len(query) > room:
        used -= 1
        total -= len(solved[used])
    tokens = [t for s in solved[:used] for t in s] + list(query)
    truncated = len(query) > room
    if truncated:
        tokens = list(query[len(query) - room:]) if room > 0 else []
    return Prompt(tokens, used, truncated)


class FewShotTask:
    """Turns examples into token segments with a template and a verbaliser."""

    def __init__(self, task: str, tokenizer, template: str | None = None, verbalizer: dict[str, str] | None = None,
                 labels: list | None = None):
        if task not in TASKS:
            raise Gpt1Error(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if task == "mcq" and verbalizer is not None:
            raise Gpt1Error("--verbalizer maps class labels to words; mcq answers are the choices themselves")
        self.task = task
        self.tokenizer = tokenizer
        self.template = Template(template or DEFAULT_TEMPLATES[task], task)
        if task == "mcq":
            self.labels, self.words = None, None
        elif verbalizer is not None:
            self.labels = list(verbalizer)  # label strings, in the verbaliser's order
            self.words = [verbalizer[k] for k in self.labels]
        else:
            self.labels = [label_text(label) for label in (labels or [])]
            self.words = list(self.labels)
        self._answers = None if self.words is None else [self._encode_answer(w) for w in self.words]

    def _encode_answer(self, word: str) -> list[int]:
        tokens = self.tokenizer.encode(word)
        if not tokens:
            raise Gpt1Error(f"the answer {word!r} encodes to no tokens: choose another word")
        return tokens

    def gold(self, example: Example) -> int:
        """The index of the right candidate."""
        if self.task == "mcq":
            return example.label
        key = label_text(example.label)
        if key not in self.labels:
            raise Gpt1Error(f"{example.where}: label {example.label!r} has no answer word "
                            f"(answers are given for {', '.join(self.labels)}): add it to --verbalizer")
        return self.labels.index(key)

    def candidates(self, example: Example) -> list[list[int]]:
        if self.task == "mcq":
            return [self._encode_answer(choice) for choice in example.fields["choices"]]
        return self._answers

    def answer_text(self, example: Example) -> str:
        if self.task == "mcq":
            return example.fields["choices"][example.label]
        return self.words[self.gold(example)]

    def query(self, example: Example) -> list[int]:
        return encode_lines(self.tokenizer, self.template.prefix(example.fields))

    def solved(self, example: Example) -> list[int]:
        """A solved example: prefix, the right answer, suffix (answers encoded as the candidates are)."""
        fields = example.fields
        answer = self.candidates(example)[self.gold(example)]
        return self.query(example) + list(answer) + encode_lines(self.tokenizer, self.template.suffix(fields))

    def prompt(self, shots: list[Example], query: Example, n_ctx: int) -> Prompt:
        longest = max(len(c) for c in self.candidates(query))
        room = n_ctx - longest
        if room < 1:
            raise Gpt1Error(f"{query.where}: an answer of {longest} tokens leaves no room in the context of {n_ctx}")
        return fit_prompt([self.solved(s) for s in shots], self.query(query), room)

    def prompt_text(self, shots: list[Example], query: Example) -> str:
        """The prompt as text (for display): solved examples and the query, separated by blank lines."""
        solved = [self.template.solved(s.fields, self.answer_text(s)) for s in shots]
        return SEPARATOR.join(solved + [self.template.prefix(query.fields)])


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_candidates(model, context: list[int], candidates: list[list[int]], device, pad_id: int = 0) -> list[float]:
    """Mean log-probability of each candidate's tokens after ``context``; the context runs once and
    its KV cache is shared by all candidates."""
    if not context:
        raise ValueError("an empty context")
    n_layer = model.config.n_layer
    cache = KVCache(n_layer)
    with autocast(device):
        hidden = model(torch.tensor([context], device=device), cache=cache)
        first = torch.log_softmax(model.logits(hidden[0, -1]).float(), dim=-1)
    totals = [float(first[c[0]]) for c in candidates]
    longest = max(len(c) for c in candidates)
    if longest > 1:
        cache.reorder(torch.zeros(len(candidates), dtype=torch.long, device=device))
        rest = torch.full((len(candidates), longest - 1), pad_id, dtype=torch.long)
        for row, candidate in enumerate(candidates):
            rest[row, : len(candidate) - 1] = torch.tensor(candidate[:-1], dtype=torch.long)
        with autocast(device):
            hidden = model(rest.to(device), cache=cache)
            logprobs = torch.log_softmax(model.logits(hidden).float(), dim=-1)
        for row, candidate in enumerate(candidates):
            if len(candidate) > 1:
                steps = torch.arange(len(candidate) - 1, device=device)
                targets = torch.tensor(candidate[1:], device=device)
                totals[row] += float(logprobs[row, steps, targets].sum())
    return [total / len(c) for total, c in zip(totals, candidates)]


@torch.no_grad()
def score_batched(model, items: list[tuple[list[int], list[int]]], device, pad_id: int = 0,
                  batch_size: int = BATCH_SIZE, progress=None) -> list[float]:
    """Mean log-probability of each ``(context, candidate)``'s candidate tokens after its context,
    as :func:`score_candidates` gives it: each context + candidate is one right-padded row (causal
    attention keeps the pads after it out of its scores), ``batch_size`` rows per forward pass.
    ``progress`` is called with the number of rows of each batch done."""
    check_batch_size(batch_size)
    scores = []
    for start in range(0, len(items), batch_size):
        group = items[start : start + batch_size]
        width = max(len(context) + len(candidate) - 1 for context, candidate in group)
        tokens = torch.full((len(group), width), pad_id, dtype=torch.long)
        rows, positions, targets, owner = [], [], [], []
        for row, (context, candidate) in enumerate(group):
            if not context:
                raise ValueError("an empty context")
            sequence = list(context) + list(candidate)
            tokens[row, : len(sequence) - 1] = torch.tensor(sequence[:-1], dtype=torch.long)
            for j, token in enumerate(candidate):
                rows.append(row)
                positions.append(len(context) - 1 + j)
                targets.append(token)
        with autocast(device):
            hidden = model(tokens.to(device))
            picked = hidden[torch.tensor(rows, device=device), torch.tensor(positions, device=device)]
            logprobs = torch.log_softmax(model.logits(picked).float(), dim=-1)
        values = logprobs[torch.arange(len(targets), device=device), torch.tensor(targets, device=device)]
        totals = torch.zeros(len(group), dtype=torch.float64).index_add_(0, torch.tensor(rows), values.double().cpu())
        scores.extend(float(totals[row]) / len(candidate) for row, (_, candidate) in enumerate(group))
        if progress is not None:
            progress(len(group))
    return scores


def draw_shots(pool_size: int, k: int, query: int, seed: int, exclude: int | None = None) -> list[int]:
    """``k`` pool indices for query number ``query``, drawn from (seed, query), never ``exclude``
    (the query itself when the pool is the query's own file). Draws for different k are nested:
    the 1-shot example is the first of the 8 shots."""
    if k == 0:
        return []
    rng = random.Random(step_seed(seed, 0, query))
    picks = rng.sample(range(pool_size), min(pool_size, k + 1))
    return [i for i in picks if i != exclude][:k]


def fewshot_eval(ckpt: str | Path, task: str, data: str | Path, device, *, shots: list[int],
                 shots_from: str | Path | None = None, template: str | None = None, verbalizer: str | None = None,
                 seed: int = 0, batch_size: int = BATCH_SIZE, show_progress: bool = False, fields=None) -> dict:
    """Zero-, one- and few-shot accuracy of a language model on a labelled task file, one row per K
    (each with its accuracy's standard error), and the chance baselines. ``batch_size`` scored
    sequences go through the model at a time; ``fields`` maps the task's fields onto the columns
    of ``data`` and ``shots_from`` (``--field NAME=COLUMN``)."""
    check_batch_size(batch_size)
    if task not in TASKS:
        raise Gpt1Error(f"unknown task {task!r} for --shots; choose one of {', '.join(TASKS)}")
    if not shots:
        raise Gpt1Error("--shots needs at least one count")
    check_number(seed, "--seed", **SEED)
    model, checkpoint = model_from_checkpoint(ckpt, device)
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    n_ctx = checkpoint.config.n_ctx
    examples = load_examples(data, task, fields=fields)
    pool = load_examples(shots_from, task, fields=fields) if shots_from is not None else examples
    mapping = parse_verbalizer(verbalizer)
    labels = None if task == "mcq" else label_set(pool + examples if shots_from is not None else examples)
    fs = FewShotTask(task, tokenizer, template, mapping, labels)
    for example in (pool if shots_from is not None else []) + examples:
        fs.gold(example)  # every label must have an answer word, reported with its file and line
    if task == "mcq":
        n_choices = len(examples[0].fields["choices"])
        if shots_from is not None and len(pool[0].fields["choices"]) != n_choices:
            raise Gpt1Error(f"{shots_from} has {len(pool[0].fields['choices'])} choices per example, "
                            f"{data} has {n_choices}")
        n_classes = n_choices
    else:
        n_classes = len(fs.labels)
    largest = max(shots)
    available = len(pool) - (0 if shots_from is not None else 1)
    if largest > available:
        source = shots_from if shots_from is not None else f"{data} (besides the query)"
        raise Gpt1Error(f"--shots {largest} needs {largest} solved examples; {source} has {available}")

    truth = [fs.gold(e) for e in examples]
    rows = []
    example_prompt = None
    plans = []  # per K: the scored pairs, where each query's pairs end, shots used, truncated queries
    for k in shots:  # every prompt is built (and any problem reported) before the model runs
        items, ends, used, truncated = [], [], [], 0
        for index, example in enumerate(examples):
            picks = draw_shots(len(pool), k, index, seed, exclude=None if shots_from is not None else index)
            shot_examples = [pool[i] for i in picks]
            prompt = fs.prompt(shot_examples, example, n_ctx)
            context = prompt.tokens or [tokenizer.eos_id]
            items.extend((context, candidate) for candidate in fs.candidates(example))
            ends.append(len(items))
            used.append(prompt.shots)
            truncated += prompt.truncated
            if index == 0 and k == largest:
                example_prompt = fs.prompt_text(shot_examples[: prompt.shots], example)
        plans.append((k, items, ends, used, truncated))
    with progress_bar("scoring answers", len(shots) * len(examples), enabled=show_progress, count=True) as bar:
        for k, items, ends, used, truncated in plans:
            done = {"rows": 0, "queries": 0}

            def scored(count: int) -> None:
                done["rows"] += count
                queries = bisect.bisect_right(ends, done["rows"])
                bar.advance(queries - done["queries"])
                done["queries"] = queries

            scores = score_batched(model, items, device, tokenizer.pad_id, batch_size, progress=scored)
            preds = []
            for index, end in enumerate(ends):
                mine = scores[(ends[index - 1] if index else 0) : end]
                preds.append(max(range(len(mine)), key=mine.__getitem__))
            report = classification_report(truth, preds, n_classes)
            rows.append({"shots": k, "accuracy": report["accuracy"],
                         "accuracy_stderr": standard_error(report["accuracy"], report["examples"]),
                         "macro_f1": report["macro_f1"], "mcc": report["mcc"],
                         "examples": report["examples"], "shots_used_mean": sum(used) / len(used),
                         "shots_used_min": min(used), "shots_used_max": max(used),
                         "fewer_shots": sum(u < k for u in used), "truncated_queries": truncated,
                         "confusion": report["confusion"]})
    labels = fs.labels if fs.labels is not None else list(range(n_classes))
    chance = baselines(truth, n_classes, labels)
    return {"task": task, "mode": "few-shot", **chance, "n_ctx": n_ctx, "seed": seed,
            "template": fs.template.text, "answers": fs.words if fs.words is not None else "the choices",
            "labels": labels,
            "shots_from": str(shots_from) if shots_from is not None else "the query's file, without the query",
            "results": rows, "example_prompt": example_prompt}


def zero_shot_mcq(ckpt: str | Path, data: str | Path, device, *, batch_size: int = BATCH_SIZE,
                  show_progress: bool = False, fields=None) -> dict:
    """Multiple choice with no head and no solved examples: the K=0 row of :func:`fewshot_eval`,
    reported as one classification report."""
    result = fewshot_eval(ckpt, "mcq", data, device, shots=[0], batch_size=batch_size, show_progress=show_progress,
                          fields=fields)
    row = result["results"][0]
    report = {key: row[key] for key in ("accuracy", "accuracy_stderr", "macro_f1", "mcc", "confusion", "examples")}
    report.update(task="mcq", mode="zero-shot", chance=result["chance"], majority=result["majority"],
                  majority_label=result["majority_label"])
    return report
