"""Compile the attention kernels for a GPU target without a GPU (Triton ships ptxas).

The interpreter checks values but not what only the compiler sees (dot operand dtypes,
layouts, shared memory). Run as a script with ``TRITON_INTERPRET`` unset or 0:

    python tests/kernels/compile_for_gpu.py [--arch 90] [--dtype bf16 ...]

Prints one JSON line per kernel: its configuration and the shared memory it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import gpt1_kernels.attention as attention  # noqa: E402

KERNELS = {
    "fwd": (attention._attn_fwd, ("Q", "K", "V", "O")),
    "dkdv": (attention._attn_bwd_dkdv, ("Q", "K", "V", "DO", "DK", "DV")),
    "dq": (attention._attn_bwd_dq, ("Q", "K", "V", "DO", "DQ")),
}
_FLOATS = ("qk_scale", "sm_scale", "dropout_p")


def compile_kernel(which: str, cfg, dtype: str, head_dim: int, arch: int, **flags) -> int:
    """Compile kernel ``which`` with launch config ``cfg``; returns its shared memory in bytes."""
    fn, tensors = KERNELS[which]
    block_d = max(16, triton.next_power_of_2(head_dim))
    consts = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, EVEN_D=head_dim == block_d, CAUSAL=True, HAS_WINDOW=True,
                  HAS_KEYLEN=True, DROPOUT=True, DOT_PREC="tf32" if dtype == "fp32" else "ieee", **cfg.kwargs)
    consts.update(flags)
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in tensors:
            signature[name] = f"*{dtype}"
        elif name in ("LSE", "DELTA"):
            signature[name] = "*fp32"
        elif name == "KEYLEN":
            signature[name] = "*i32"
        else:
            signature[name] = "fp32" if name in _FLOATS else "i32"
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                            target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return int(kernel.metadata.shared)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--dtype", action="append", choices=("fp16", "bf16", "fp32"))
    parser.add_argument("--head-dim", type=int, action="append")
    args = parser.parse_args(argv)
    elem = {"fp16": 2, "bf16": 2, "fp32": 4}
    for dtype in args.dtype or ["bf16"]:
        for head_dim in args.head_dim or [64]:
            for which in KERNELS:
                cfg = attention.fixed_candidates(which, head_dim, elem[dtype])[0]
                shared = compile_kernel(which, cfg, dtype, head_dim, args.arch)
                print(json.dumps({"kernel": which, "dtype": dtype, "head_dim": head_dim, "arch": args.arch,
                                  "config": {**cfg.kwargs, "num_warps": cfg.num_warps,
                                             "num_stages": cfg.num_stages},
                                  "shared": shared}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
