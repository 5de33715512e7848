"""Metrics of generated text against references, from the standard libraries (not re-implemented).

* ``bleu``: corpus BLEU of sacrebleu (its default ``13a`` tokenisation, exponential smoothing),
  0-100, with sacrebleu's signature string so numbers can be compared across papers.
* ``chrf``: corpus chrF (character 6-grams, beta 2) of sacrebleu, 0-100.
* ``rouge1``, ``rouge2``, ``rougeL``: the F-measure of Google's ``rouge-score`` package, averaged
  over examples, times 100. Its tokenizer lower-cases and keeps only ``[a-z0-9]`` runs, so text
  in other scripts scores 0 there; no stemming.
* ``exact``: the share of examples whose output equals the reference after stripping
  surrounding whitespace, 0-1.
"""

from __future__ import annotations

from ..errors import Gpt1Error

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Larger is better for all of these; the LM loss is the one metric where smaller is better.
HIGHER_IS_BETTER = {"bleu": True, "chrf": True, "rouge1": True, "rouge2": True, "rougeL": True, "exact": True,
                    "loss": False}


def _libraries():
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise Gpt1Error(f"generation metrics need sacrebleu and rouge-score ({exc.name} is missing): "
                        "pip install sacrebleu rouge-score") from None
    return sacrebleu, rouge_scorer


def exact_match(hypotheses: list[str], references: list[str]) -> float:
    if not references:
        return float("nan")
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)


def generation_metrics(hypotheses: list[str], references: list[str]) -> dict:
    """BLEU, chrF, ROUGE-1/2/L and exact match of ``hypotheses`` against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise Gpt1Error("no examples to score")
    sacrebleu, rouge_scorer = _libraries()
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    rouge = {name: 0.0 for name in ROUGE_TYPES}
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(reference, hypothesis)  # (target, prediction)
        for name in ROUGE_TYPES:
            rouge[name] += scores[name].fmeasure
    report = {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        **{name: 100.0 * total / len(references) for name, total in rouge.items()},
        "exact": exact_match(hypotheses, references),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
    return report
