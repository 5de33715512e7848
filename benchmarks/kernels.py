"""Kernel benchmarks: each Triton kernel against eager PyTorch and the best built-in alternative.

Groups (``op``/``mode``) and their implementations:

* ``attention`` (fwd, fwd+bwd): ``eager`` (matmul, mask, softmax, matmul), ``sdpa``
  (``F.scaled_dot_product_attention``, flash backend where it is available), ``ours``
  (``gpt1_kernels.attention.flash_attention``); causal, ``(B, 12, T, 64)``. Cases with
  attention dropout (``shape["dropout"]``, only in :func:`target_specs`) apply it in all three.
* ``attention-window`` (fwd+bwd): GPT-3 style banded layers at long ``T``: ``eager`` and
  ``sdpa`` with a band mask, ``ours-dense`` (plain causal, for comparison) and ``ours``.
* ``layernorm`` (fwd, fwd+bwd): ``LayerNorm(x + residual)``: ``eager`` (add, manual mean and
  variance in fp32), ``layer_norm`` (add, then ``F.layer_norm``), ``compiled``
  (``torch.compile`` of add + ``F.layer_norm``), ``ours`` (residual add fused).
* ``cross-entropy`` (fwd+bwd): the tied LM head's loss: ``eager`` (full logits, then
  ``F.cross_entropy``), ``compiled`` (the same under ``torch.compile``), ``ours`` (chunked
  ``linear_cross_entropy``).

The standard sweep also records each entry point's host-side cost per call (the section's
``dispatch`` list, see :mod:`gpt1_benchmarks.dispatch`).

FLOPs and bytes are those of the operation, the same for every implementation, so TFLOP/s
and GB/s are "useful" rates (see :func:`attention_flops` and :func:`layernorm_bytes`).

A case is built as a :class:`CaseSpec` (the case's descriptive fields and its implementations,
nothing allocated yet); :func:`run_specs` measures a list of them in order. ``run_kernels`` runs
:func:`standard_specs`; the GPU check (:mod:`gpt1_benchmarks.gpu_check`) runs
:func:`target_specs` first and the rest of the standard sweep after, with :func:`copy_bandwidth`
as the yardstick of the LayerNorm target.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .dispatch import run_dispatch
from .harness import (
    Settings,
    derive_speeds,
    guarded,
    measure,
    peak_memory,
    reset_compiler,
)

BASELINE = "eager"

# fwd+bwd FLOPs as a multiple of the forward's. The backward has four matmuls of the
# forward's size (dV, dP, dQ, dK) to the forward's two, so fwd+bwd = 3 x fwd. A flash
# kernel also recomputes Q K^T in its backward (FlashAttention's papers count 2.5 x fwd for
# the backward alone, 3.5 x in all); that recomputation is not useful work and is not counted.
ATTENTION_FWD_BWD_FACTOR = 3.0
HEADS, HEAD_DIM = 12, 64
WINDOW = 256
LN_ROWS = 16384  # 32 sequences of 512 tokens
HIDDEN = 768
GPT1_VOCAB = 40478
# The attention target: ours against SDPA (flash) over these lengths, with and without dropout.
TARGET_LENGTHS = (512, 1024, 2048, 4096)
TARGET_DROPOUT = 0.1


@dataclass(frozen=True)
class Impl:
    name: str
    build: Callable[[], tuple[Callable[[], object], list[torch.Tensor], dict]]
    triton: bool = False
    compiled: bool = False


# ----------------------------------------------------------------------------- FLOPs, bytes


def attention_pairs(t: int, window: int | None = None) -> float:
    """Visible (query, key) pairs of a causal (optionally banded) head, counting T^2/2 for dense."""
    if window is None or window >= t:
        return t * t / 2
    return t * window - window * window / 2


def attention_flops(b: int, h: int, t: int, d: int, mode: str, window: int | None = None) -> float:
    """``4 B H D x pairs`` forward (Q K^T and P V), times ``ATTENTION_FWD_BWD_FACTOR`` with backward."""
    forward = 4.0 * b * h * d * attention_pairs(t, window)
    return forward if mode == "fwd" else forward * ATTENTION_FWD_BWD_FACTOR


def layernorm_bytes(rows: int, cols: int, elem: int, mode: str, param_elem: int = 4) -> float:
    """Bytes a fused residual-add LayerNorm must move.

    Forward: read ``x`` and ``residual``, write the output, read weight and bias. Backward:
    read the output gradient, ``x`` and ``residual``, write one input gradient (shared by
    ``x`` and ``residual``), read the weight, write the weight and bias gradients.
    """
    activations = rows * cols * elem
    forward = 3 * activations + 2 * cols * param_elem
    if mode == "fwd":
        return float(forward)
    return float(forward + 4 * activations + 3 * cols * param_elem)


def linear_ce_flops(tokens: int, vocab: int, hidden: int) -> float:
    """Three matmuls of ``2 N V C``: logits, their gradient through to the hidden states and to the weight."""
    return 6.0 * tokens * vocab * hidden


# ----------------------------------------------------------------------------- sweeps


def attention_batch(t: int) -> int:
    """B x T near 16k tokens, with B kept within 8-32 sequences."""
    return max(8, min(32, 16384 // t))


def attention_shapes(settings: Settings) -> list[dict]:
    if settings.quick:
        d = 64 if settings.cuda else 16
        return [dict(B=1, H=2, T=t, D=d) for t in (32, 64)]
    return [dict(B=attention_batch(t), H=HEADS, T=t, D=HEAD_DIM) for t in (128, 256, 512, 1024, 2048)]


def target_attention_shapes(settings: Settings) -> list[dict]:
    """The lengths of the attention target (GPT-1's 512 up to 4096), at the sweep's batch sizes."""
    if settings.quick:
        return attention_shapes(settings)
    return [dict(B=attention_batch(t), H=HEADS, T=t, D=HEAD_DIM) for t in TARGET_LENGTHS]


def window_shapes(settings: Settings) -> list[dict]:
    if settings.quick:
        d = 64 if settings.cuda else 16
        return [dict(B=1, H=2, T=128, D=d, window=32)]
    return [dict(B=max(1, 16384 // t), H=HEADS, T=t, D=HEAD_DIM, window=WINDOW) for t in (2048, 4096, 8192)]


def layernorm_shapes(settings: Settings) -> list[dict]:
    if settings.quick:
        return [dict(rows=64, cols=c) for c in (64, 128)]
    return [dict(rows=LN_ROWS, cols=c) for c in (768, 1024, 2048, 4096)]


def cross_entropy_shapes(settings: Settings) -> list[dict]:
    if settings.quick:
        return [dict(tokens=64, vocab=512, hidden=32)]
    # The token sweep at GPT-2's vocabulary, one point at GPT-1's (each case compiles anew).
    return ([dict(tokens=8192, vocab=40478, hidden=HIDDEN)]
            + [dict(tokens=n, vocab=50257, hidden=HIDDEN) for n in (2048, 8192, 32768)])


# ----------------------------------------------------------------------------- attention


def _causal_band(t: int, window: int | None, device) -> torch.Tensor:
    pos = torch.arange(t, device=device)
    allowed = pos.view(1, -1) <= pos.view(-1, 1)
    if window is not None:
        allowed &= pos.view(1, -1) > pos.view(-1, 1) - window
    return allowed


def eager_attention(q, k, v, allowed: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Textbook attention: scores, mask, fp32 softmax, (dropout,) weighted sum."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p, training=True)
    return probs @ v


def _sdpa_call(q, k, v, allowed: torch.Tensor | None, dropout_p: float = 0.0):
    """SDPA restricted to the flash backend when it accepts these inputs; the choice is reported."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if allowed is None:
        def call():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    else:
        def call():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)

    if allowed is None:
        try:
            with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                call()

            def flash():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return call()

            return flash, "flash"
        except RuntimeError:
            pass
    return call, "default" if allowed is None else "default (boolean mask)"


def _attention_inputs(shape: dict, settings: Settings, grad: bool):
    torch.manual_seed(0)
    b, h, t, d = shape["B"], shape["H"], shape["T"], shape["D"]
    q, k, v = (torch.randn(b, h, t, d, device=settings.device, dtype=settings.dtype, requires_grad=grad)
               for _ in range(3))
    dout = torch.randn(b, h, t, d, device=settings.device, dtype=settings.dtype)
    return q, k, v, dout


def _with_backward(forward: Callable[[], torch.Tensor], dout: torch.Tensor | None) -> Callable[[], object]:
    if dout is None:
        return forward

    def step():
        forward().backward(dout)

    return step


def attention_impls(shape: dict, settings: Settings, mode: str, banded: bool, dropout: float = 0.0) -> list[Impl]:
    grad = mode == "fwd+bwd"
    window = shape.get("window") if banded else None

    def inputs():
        q, k, v, dout = _attention_inputs(shape, settings, grad)
        return q, k, v, (dout if grad else None)

    def eager():
        q, k, v, dout = inputs()
        allowed = _causal_band(shape["T"], window, settings.device)
        return _with_backward(lambda: eager_attention(q, k, v, allowed, dropout), dout), [q, k, v], {}

    def sdpa():
        q, k, v, dout = inputs()
        allowed = _causal_band(shape["T"], window, settings.device) if window is not None else None
        call, backend = _sdpa_call(q, k, v, allowed, dropout)
        return _with_backward(call, dout), [q, k, v], {"backend": backend}

    def ours(use_window: int | None):
        def build():
            from gpt1_kernels.attention import flash_attention

            q, k, v, dout = inputs()
            def call():
                return flash_attention(q, k, v, causal=True, window=use_window, dropout_p=dropout)

            return _with_backward(call, dout), [q, k, v], {}

        return build

    impls = [Impl("eager", eager), Impl("sdpa", sdpa)]
    if banded:
        impls.append(Impl("ours-dense", ours(None), triton=True))
    impls.append(Impl("ours", ours(window), triton=True))
    return impls


# ----------------------------------------------------------------------------- layernorm


def eager_add_layer_norm(x, residual, weight, bias, eps: float = 1e-5):
    """Residual add, then mean and variance by hand in fp32."""
    summed = (x + residual).float()
    mean = summed.mean(dim=-1, keepdim=True)
    centred = summed - mean
    var = (centred * centred).mean(dim=-1, keepdim=True)
    return (centred * torch.rsqrt(var + eps) * weight + bias).to(x.dtype)


def _layernorm_inputs(shape: dict, settings: Settings, grad: bool):
    torch.manual_seed(0)
    rows, cols = shape["rows"], shape["cols"]
    x = torch.randn(rows, cols, device=settings.device, dtype=settings.dtype, requires_grad=grad)
    residual = torch.randn(rows, cols, device=settings.device, dtype=settings.dtype, requires_grad=grad)
    # fp32 gains and biases, as in the model under autocast.
    weight = (1.0 + 0.1 * torch.randn(cols, device=settings.device)).requires_grad_(grad)
    bias = (0.1 * torch.randn(cols, device=settings.device)).requires_grad_(grad)
    dout = torch.randn(rows, cols, device=settings.device, dtype=settings.dtype) if grad else None
    return x, residual, weight, bias, dout


def _builtin_layer_norm_params(x, weight, bias):
    """Gain and bias ``F.layer_norm`` accepts with ``x``: fp32 where mixed dtypes work, else ``x``'s."""
    try:
        with torch.no_grad():
            F.layer_norm(x[:1], (x.shape[-1],), weight, bias)
        return weight, bias
    except RuntimeError:
        grad = weight.requires_grad
        return (weight.detach().to(x.dtype).requires_grad_(grad), bias.detach().to(x.dtype).requires_grad_(grad))


def layernorm_impls(shape: dict, settings: Settings, mode: str) -> list[Impl]:
    grad = mode == "fwd+bwd"
    cols = shape["cols"]

    def eager():
        x, r, w, b, dout = _layernorm_inputs(shape, settings, grad)
        return _with_backward(lambda: eager_add_layer_norm(x, r, w, b), dout), [x, r, w, b], {}

    def builtin():
        x, r, w, b, dout = _layernorm_inputs(shape, settings, grad)
        w, b = _builtin_layer_norm_params(x, w, b)
        return _with_backward(lambda: F.layer_norm(x + r, (cols,), w, b, 1e-5), dout), [x, r, w, b], {}

    def compiled():
        x, r, w, b, dout = _layernorm_inputs(shape, settings, grad)
        w, b = _builtin_layer_norm_params(x, w, b)
        reset_compiler()

        def add_ln(x, r, w, b):
            return F.layer_norm(x + r, (cols,), w, b, 1e-5)

        fn = torch.compile(add_ln, dynamic=False)
        return _with_backward(lambda: fn(x, r, w, b), dout), [x, r, w, b], {}

    def ours():
        from gpt1_kernels.layernorm import add_layer_norm

        x, r, w, b, dout = _layernorm_inputs(shape, settings, grad)
        return _with_backward(lambda: add_layer_norm(x, r, w, b, eps=1e-5), dout), [x, r, w, b], {}

    return [Impl("eager", eager), Impl("layer_norm", builtin), Impl("compiled", compiled, compiled=True),
            Impl("ours", ours, triton=True)]


# ----------------------------------------------------------------------------- cross-entropy


def eager_linear_cross_entropy(hidden, weight, targets):
    """Full logits, then ``F.cross_entropy`` in fp32 (the torch path of the LM loss)."""
    return F.cross_entropy((hidden @ weight.t()).float(), targets)


def _ce_inputs(shape: dict, settings: Settings):
    torch.manual_seed(0)
    n, v, c = shape["tokens"], shape["vocab"], shape["hidden"]
    hidden = torch.randn(n, c, device=settings.device, dtype=settings.dtype).requires_grad_(True)
    weight = (0.02 * torch.randn(v, c, device=settings.device)).to(settings.dtype).requires_grad_(True)
    targets = torch.randint(0, v, (n,), device=settings.device)
    return hidden, weight, targets


def cross_entropy_impls(shape: dict, settings: Settings) -> list[Impl]:
    def eager():
        h, w, t = _ce_inputs(shape, settings)
        return lambda: eager_linear_cross_entropy(h, w, t).backward(), [h, w], {}

    def compiled():
        h, w, t = _ce_inputs(shape, settings)
        reset_compiler()
        fn = torch.compile(eager_linear_cross_entropy, dynamic=False)
        return lambda: fn(h, w, t).backward(), [h, w], {}

    def ours():
        from gpt1_kernels.cross_entropy import linear_cross_entropy

        h, w, t = _ce_inputs(shape, settings)
        return lambda: linear_cross_entropy(h, w, t).backward(), [h, w], {}

    return [Impl("eager", eager), Impl("compiled", compiled, compiled=True), Impl("ours", ours, triton=True)]


# ----------------------------------------------------------------------------- running


def run_impl(impl: Impl, settings: Settings) -> dict:
    """Measure one implementation of one case, or say why it was not run."""
    if impl.triton and settings.triton_skip_reason():
        return {"skipped": settings.triton_skip_reason()}
    if impl.compiled and settings.compile_skip_reason():
        return {"skipped": settings.compile_skip_reason()}
    interpreted = impl.triton and settings.interpreted

    def run() -> dict:
        fn, grads, extra = impl.build()
        record = measure(fn, settings, grads=grads, interpreted=interpreted)
        record["peak_mem_bytes"] = None if interpreted else peak_memory(fn, settings, grads=grads)
        record.update(extra)
        return record

    result = guarded(settings, run)
    if impl.compiled:
        reset_compiler()
    return result


def derive(case: dict) -> dict:
    """Add rates and speed-ups over the baseline, from the recorded median times only."""

    def rates(impl: dict, seconds: float) -> None:
        timed = not impl.get("interpreted") and seconds > 0
        flops = impl.get("flops", case.get("flops"))
        if flops is not None:
            impl["tflops"] = flops / seconds / 1e12 if timed else None
        if case.get("bytes") is not None:
            impl["gbps"] = case["bytes"] / seconds / 1e9 if timed else None

    return derive_speeds(case, rates)


def _run_case(case: dict, impls: list[Impl], settings: Settings, label: str) -> dict:
    case["impls"] = {}
    for impl in impls:
        record = run_impl(impl, settings)
        if case["op"] == "attention-window" and "median_ms" in record:
            # The dense comparison does the full causal work; the banded ones only the band.
            shape = case["shape"]
            window = None if impl.name == "ours-dense" else shape["window"]
            record["flops"] = attention_flops(shape["B"], shape["H"], shape["T"], shape["D"], case["mode"], window)
        case["impls"][impl.name] = record
        settings.log(f"{label} {impl.name}: {_brief(record)}")
    return derive(case)


def _brief(record: dict) -> str:
    if "median_ms" in record:
        suffix = " (interpreter)" if record.get("interpreted") else ""
        return f"{record['median_ms']:.4g} ms{suffix}"
    return record.get("error") or record.get("skipped") or "?"


@dataclass
class CaseSpec:
    """One case to measure: its descriptive fields, its implementations and a log label."""

    case: dict
    impls: list[Impl]
    label: str

    @property
    def key(self) -> str:
        return case_key(self.case)


def case_key(case: dict) -> str:
    """Identifies a case (op, mode, dtype, shape) across runs and lists."""
    return json.dumps([case["op"], case["mode"], case.get("dtype"), case.get("shape")], sort_keys=True)


def attention_spec(shape: dict, settings: Settings, mode: str, dropout: float = 0.0) -> CaseSpec:
    full = dict(shape, window=None)
    if dropout:
        full["dropout"] = dropout
    case = {"op": "attention", "mode": mode, "dtype": settings.dtype_name, "shape": full, "baseline": BASELINE,
            "flops": attention_flops(shape["B"], shape["H"], shape["T"], shape["D"], mode)}
    label = f"attention {mode} T={shape['T']}" + (f" dropout={dropout:g}" if dropout else "")
    return CaseSpec(case, attention_impls(shape, settings, mode, banded=False, dropout=dropout), label)


def window_spec(shape: dict, settings: Settings) -> CaseSpec:
    case = {"op": "attention-window", "mode": "fwd+bwd", "dtype": settings.dtype_name, "shape": dict(shape),
            "baseline": BASELINE}
    return CaseSpec(case, attention_impls(shape, settings, "fwd+bwd", banded=True),
                    f"banded attention T={shape['T']} window={shape['window']}")


def layernorm_spec(shape: dict, settings: Settings, mode: str) -> CaseSpec:
    elem = torch.empty((), dtype=settings.dtype).element_size()
    case = {"op": "layernorm", "mode": mode, "dtype": settings.dtype_name, "shape": dict(shape), "baseline": BASELINE,
            "bytes": layernorm_bytes(shape["rows"], shape["cols"], elem, mode)}
    return CaseSpec(case, layernorm_impls(shape, settings, mode), f"layernorm {mode} {shape['rows']}x{shape['cols']}")


def cross_entropy_spec(shape: dict, settings: Settings) -> CaseSpec:
    case = {"op": "cross-entropy", "mode": "fwd+bwd", "dtype": settings.dtype_name, "shape": dict(shape),
            "baseline": BASELINE, "flops": linear_ce_flops(shape["tokens"], shape["vocab"], shape["hidden"])}
    return CaseSpec(case, cross_entropy_impls(shape, settings), f"cross-entropy N={shape['tokens']} V={shape['vocab']}")


def standard_specs(settings: Settings) -> list[CaseSpec]:
    """The sweep of ``gpt1 bench kernels``, in its order."""
    specs = [attention_spec(shape, settings, mode) for mode in ("fwd", "fwd+bwd") for shape in attention_shapes(settings)]
    specs += [window_spec(shape, settings) for shape in window_shapes(settings)]
    specs += [layernorm_spec(shape, settings, mode) for mode in ("fwd", "fwd+bwd") for shape in layernorm_shapes(settings)]
    specs += [cross_entropy_spec(shape, settings) for shape in cross_entropy_shapes(settings)]
    return specs


def target_specs(settings: Settings) -> list[CaseSpec]:
    """The cases the performance targets are judged on, in the order a time budget favours:
    attention fwd+bwd at GPT-1's 512 tokens without and with dropout, GPT-1's residual+LayerNorm
    width (fwd, fwd+bwd), the linear+cross-entropy at GPT-1's vocabulary, then attention at the
    longer lengths (each new length and dropout setting pays for its own autotuning)."""
    shapes = target_attention_shapes(settings)
    attention = [[attention_spec(shape, settings, "fwd+bwd", dropout) for dropout in (0.0, TARGET_DROPOUT)]
                 for shape in shapes]
    ln_shape = layernorm_shapes(settings)[0]
    specs = list(attention[0])
    specs += [layernorm_spec(ln_shape, settings, mode) for mode in ("fwd", "fwd+bwd")]
    specs.append(cross_entropy_spec(cross_entropy_shapes(settings)[0], settings))
    for pair in attention[1:]:
        specs += pair
    return specs


def run_specs(specs: Iterable[CaseSpec], settings: Settings, on_case: Callable[[dict], None] | None = None) -> list[dict]:
    """Measure each spec in order (duplicates once); ``on_case`` sees each finished case."""
    cases, seen = [], set()
    for spec in specs:
        if spec.key in seen:
            continue
        seen.add(spec.key)
        case = _run_case(dict(spec.case), spec.impls, settings, spec.label)
        cases.append(case)
        if on_case is not None:
            on_case(case)
    return cases


CONVENTIONS = {
    "attention_flops": "4*B*H*D*pairs forward, pairs = T*T/2 causal (T*w - w*w/2 banded); "
                       f"fwd+bwd = {ATTENTION_FWD_BWD_FACTOR:g} x fwd (recomputation not counted)",
    "layernorm_bytes": "fwd: read x, residual, write out; bwd: read dout, x, residual, write one input grad; "
                       "plus fp32 weight/bias and their grads",
    "cross_entropy_flops": "6*N*V*C (logits, grad hidden, grad weight)",
    "speedup": "baseline median_ms / impl median_ms (baseline: eager); null when interpreted or failed",
    "dispatch": "host time per call (median_us) of each entry point on tiny tensors: with Triton launches "
                "replaced by no-ops on the CPU (CPU time of the calling thread, one intra-op thread), and on "
                "CUDA with real launches (wall time); torch: the matching built-in on the same tensors",
}


def run_kernels(settings: Settings, specs: Iterable[CaseSpec] | None = None,
                on_case: Callable[[dict], None] | None = None) -> dict:
    """Every kernel case (the standard sweep unless ``specs`` is given) on ``settings.device``.

    The standard sweep starts with the host overhead per call (``dispatch``), which takes
    seconds, so a sweep that outlasts the time budget cannot crowd it out."""
    dispatch = run_dispatch(settings) if specs is None else None
    section = {"conventions": dict(CONVENTIONS),
               "cases": run_specs(standard_specs(settings) if specs is None else specs, settings, on_case)}
    if dispatch is not None:
        section["dispatch"] = dispatch
    return section


# ----------------------------------------------------------------------------- copy bandwidth


def copy_bandwidth(settings: Settings, nbytes: int | None = None) -> dict:
    """Device memory bandwidth of ``dst.copy_(src)`` on a large buffer: the yardstick for
    memory-bound kernels. ``gbps`` counts the read and the write (2 x bytes / time)."""
    if nbytes is None:
        nbytes = (1 << 30) if settings.cuda else (16 << 20)
    elems = nbytes // 2
    src = torch.empty(elems, dtype=torch.bfloat16, device=settings.device).normal_()
    dst = torch.empty_like(src)

    def fn():
        dst.copy_(src)

    record = measure(fn, settings)
    samples = record["timing"].get("samples_ms") or list(record["timing"].get("quantiles_ms", {}).values())
    record["bytes"] = int(elems * 2)
    record["moved_bytes"] = int(elems * 2 * 2)
    record["gbps"] = record["moved_bytes"] / (record["median_ms"] / 1e3) / 1e9
    record["best_gbps"] = record["moved_bytes"] / (min(samples) / 1e3) / 1e9 if samples else None
    del src, dst
    return record
