"""Generation benchmark: greedy decoding with the KV cache against recomputing every position.

``kv-cache`` is the toolkit's :func:`~gpt1cli.model.generation.sampling.generate_tokens`; ``no-cache``
runs the full forward over the whole sequence for each new token. Both hand every token to
the host as it is produced, as an interactive decoder does. Times include the prompt's
forward pass; tokens/s counts generated tokens only.
"""

from __future__ import annotations

import time

import torch

from gpt1cli.config import preset
from gpt1cli.model.generation.sampling import generate_tokens
from gpt1cli.model.gpt import GPT
from gpt1cli.model.ops import describe_path

from .harness import Settings, autocast_for, guarded, kernel_path, speedup, summarize, synchronize

BASELINE = "no-cache"


def _plan(settings: Settings) -> dict:
    if settings.quick:
        return dict(preset="tiny", vocab=512, prompts=(8, 32), new_tokens=16, repeats=2)
    return dict(preset="small", vocab=8000, prompts=(16, 64, 192), new_tokens=64, repeats=3)


@torch.no_grad()
def generate_without_cache(model: GPT, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding that recomputes the forward pass over the whole sequence per token."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)
    out = []
    for _ in range(new_tokens):
        hidden = model(ids)
        token = model.logits(hidden[:, -1]).argmax(dim=-1, keepdim=True)
        out.append(int(token))
        ids = torch.cat([ids, token], dim=1)
    return out


def _with_cache(model: GPT, prompt: list[int], new_tokens: int) -> list[int]:
    return list(generate_tokens(model, prompt, max_new_tokens=new_tokens, temperature=0.0))


def run_generate(settings: Settings) -> dict:
    """Tokens/s with and without the KV cache at several prompt lengths."""
    plan = _plan(settings)
    config = preset(plan["preset"], plan["vocab"])
    # On CPU the torch path, whatever TRITON_INTERPRET says: the interpreter is no decoder.
    choice = "auto" if settings.cuda else "torch"
    cases = []
    with kernel_path(choice):
        torch.manual_seed(0)
        model = GPT(config).to(settings.device).eval()
        kernels = describe_path(settings.device)
        generator = torch.Generator().manual_seed(0)
        for length in plan["prompts"]:
            prompt = torch.randint(6, config.vocab_size, (length,), generator=generator).tolist()
            case = {"preset": plan["preset"], "prompt_tokens": length, "new_tokens": plan["new_tokens"],
                    "kernels": kernels, "baseline": BASELINE, "impls": {}}
            for name, fn in (("no-cache", generate_without_cache), ("kv-cache", _with_cache)):
                def run(fn=fn, prompt=prompt) -> dict:
                    with autocast_for(settings):
                        fn(model, prompt, plan["new_tokens"])  # warm-up, autotuning included
                        samples = []
                        for _ in range(plan["repeats"]):
                            synchronize(settings.device)
                            start = time.perf_counter()
                            fn(model, prompt, plan["new_tokens"])
                            synchronize(settings.device)
                            samples.append((time.perf_counter() - start) * 1e3)
                    record = summarize(samples, "perf_counter")
                    record["tokens_per_s"] = plan["new_tokens"] / (record["median_ms"] / 1e3)
                    return record

                case["impls"][name] = guarded(settings, run)
                record = case["impls"][name]
                settings.log(f"generate prompt={length} {name}: "
                             + (f"{record['tokens_per_s']:.1f} tokens/s" if "tokens_per_s" in record
                                else record.get("error") or record.get("skipped")))
            baseline = case["impls"].get(BASELINE)
            for record in case["impls"].values():
                if "median_ms" in record:
                    record["speedup"] = speedup(baseline, record)
            cases.append(case)
    return {"cases": cases, "dtype": settings.dtype_name if settings.cuda else "fp32"}
