"""Device and kernel-path selection: which device tests and runs use, the kernel path cache,
``GPT1_KERNELS`` errors, decode routing, and TF32 only inside :func:`fast_matmul`.

CUDA is simulated where the logic only asks whether it exists, so its branches run here too.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from gpt1_kernels import kernel_device
from gpt1cli import runtime
from gpt1cli.errors import Gpt1Error
from gpt1cli.model import ops

Path = ops.KernelPath


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.fixture
def fake_cuda(monkeypatch):
    """Make ``torch.cuda.is_available()`` say yes (nothing is ever allocated on CUDA here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# ---------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("cuda,interpret,expected", [
    (True, "0", "cuda"), (True, "1", "cpu"), (False, "0", "cpu"), (False, "1", "cpu"),
])
def test_kernel_device_choice(monkeypatch, cuda, interpret, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    assert kernel_device() == torch.device(expected)


def test_kernel_device_fixture_matches_the_tolerance_module(kernel_device):
    from tolerances import KERNEL_DEVICE, ON_CUDA

    assert kernel_device == KERNEL_DEVICE
    assert ON_CUDA == (KERNEL_DEVICE.type == "cuda")
    assert kernel_device.type == ("cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
                                  else "cpu")


@pytest.mark.parametrize("name,cuda,expected", [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("cuda", True, "cuda"), ("cpu", True, "cpu"),
])
def test_pick_device_changes_no_global_flag(monkeypatch, name, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    before = _flags()
    assert runtime.pick_device(name) == torch.device(expected)
    assert _flags() == before


def test_pick_device_refuses_cuda_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Gpt1Error, match="no CUDA GPU"):
        runtime.pick_device("cuda")


def test_pick_device_fails_early_on_a_bad_kernel_setting(monkeypatch):
    monkeypatch.setenv("GPT1_KERNELS", "bogus")
    with pytest.raises(Gpt1Error, match="GPT1_KERNELS"):
        runtime.pick_device("cpu")


# ---------------------------------------------------------------------------------- TF32


@pytest.fixture
def default_precision():
    """torch's defaults (fp32 matmuls in full precision), restored to whatever was set after."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def test_fast_matmul_enables_tf32_for_the_block_only(default_precision):
    before = _flags()
    assert not before[0]
    with runtime.fast_matmul(torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        with runtime.fast_matmul("cuda"):  # nested: still on, and the outer exit restores
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == "high"
    assert _flags() == before


def test_fast_matmul_restores_on_an_exception(default_precision):
    before = _flags()
    with pytest.raises(RuntimeError, match="boom"):
        with runtime.fast_matmul("cuda"):
            raise RuntimeError("boom")
    assert _flags() == before


def test_fast_matmul_restores_custom_settings_and_ignores_the_cpu():
    saved_precision, saved_cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("medium")
        torch.backends.cudnn.allow_tf32 = False
        with runtime.fast_matmul("cuda"):
            assert torch.get_float32_matmul_precision() == "medium"  # not lowered to "high"
            assert torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "medium" and not torch.backends.cudnn.allow_tf32
        with runtime.fast_matmul("cpu"):
            assert torch.get_float32_matmul_precision() == "medium" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(saved_precision)
        torch.backends.cudnn.allow_tf32 = saved_cudnn


# ---------------------------------------------------------------------------------- kernel path


@pytest.mark.parametrize("choice,triton_ok,cuda_ok,interpreting,expected", [
    ("auto", True, True, False, Path.TRITON),
    ("auto", True, False, False, Path.TORCH),
    ("auto", True, False, True, Path.TORCH),  # CPU tensors take the torch path unless forced
    ("auto", False, True, False, Path.TORCH),
    ("torch", True, True, False, Path.TORCH),
    ("triton", True, True, False, Path.TRITON),
    ("triton", True, True, True, Path.TRITON_INTERPRETER),
    ("triton", True, False, True, Path.TRITON_INTERPRETER),
])
def test_resolve_kernel_path(choice, triton_ok, cuda_ok, interpreting, expected):
    assert ops.resolve_kernel_path(choice, triton_ok=triton_ok, cuda_ok=cuda_ok, interpreting=interpreting) is expected


def test_triton_without_cuda_or_interpreter_is_refused():
    with pytest.raises(Gpt1Error, match="GPT1_KERNELS=triton needs a CUDA GPU or TRITON_INTERPRET=1"):
        ops.resolve_kernel_path("triton", triton_ok=True, cuda_ok=False, interpreting=False)
    with pytest.raises(Gpt1Error, match="needs the triton package"):
        ops.resolve_kernel_path("triton", triton_ok=False, cuda_ok=True, interpreting=False)


def test_triton_setting_on_this_machine_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("GPT1_KERNELS", "triton")
    with pytest.raises(Gpt1Error, match="needs a CUDA GPU") as info:
        ops.causal_attention(*(torch.zeros(1, 1, 4, 8) for _ in range(3)))
    assert "\n" not in str(info.value)


def test_bad_setting_is_one_line_naming_the_allowed_values(monkeypatch):
    monkeypatch.setenv("GPT1_KERNELS", "bogus")
    with pytest.raises(Gpt1Error) as info:
        ops.kernel_path()
    message = str(info.value)
    assert "\n" not in message and "'bogus'" in message
    assert all(choice in message for choice in ("auto", "torch", "triton"))
    monkeypatch.setenv("GPT1_KERNELS", " Torch ")
    assert ops.kernel_path() is Path.TORCH  # case and spaces do not matter


def test_kernel_path_is_resolved_once_and_logged_once(monkeypatch, caplog, fake_cuda):
    monkeypatch.setenv("GPT1_KERNELS", "torch")
    with caplog.at_level(logging.INFO, logger=ops.__name__):
        assert ops.kernel_path() is Path.TORCH
        monkeypatch.setenv("GPT1_KERNELS", "bogus")  # not read again...
        for _ in range(3):
            assert ops.kernel_path() is Path.TORCH
            assert not ops.use_triton(torch.empty(0))
    assert [r.getMessage() for r in caplog.records] == ["kernel path: torch"]
    ops.reset_kernel_path()  # ...until reset
    with pytest.raises(Gpt1Error):
        ops.kernel_path()
    monkeypatch.setenv("GPT1_KERNELS", "auto")
    ops.reset_kernel_path()
    assert ops.kernel_path() is (Path.TRITON if ops.triton_available() else Path.TORCH)


def test_describe_path_allocates_nothing(monkeypatch, fake_cuda):
    def no_alloc(*args, **kwargs):
        raise AssertionError("describe_path allocated a tensor")

    monkeypatch.setenv("GPT1_KERNELS", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(torch, "empty", no_alloc)
    assert ops.describe_path("cpu").startswith("torch:")
    if ops.triton_available():
        assert ops.describe_path("cuda").startswith("triton:")
        assert ops.describe_path(torch.device("cuda", 0)).startswith("triton:")


# ---------------------------------------------------------------------------------- decode routing


@pytest.mark.parametrize("tq,tk,sdpa", [
    (1, 1, False), (1, 512, True), (16, 17, True), (17, 1024, True), (64, 256, True),
    (65, 256, False), (100, 100, False), (256, 512, False),
])
def test_attention_prefers_sdpa_for_decoding_shapes(tq, tk, sdpa):
    assert ops.attention_prefers_sdpa(tq, tk) is sdpa


def test_decoding_calls_go_to_sdpa(monkeypatch):
    import gpt1_kernels.attention as attention_module
    from gpt1_kernels import reference

    calls = []
    monkeypatch.setattr(attention_module, "flash_attention", lambda q, k, v, **kw: calls.append("triton") or q)
    monkeypatch.setattr(reference, "attention_sdpa", lambda q, k, v, **kw: calls.append("sdpa") or q)
    monkeypatch.setenv("GPT1_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")

    def attend(tq, tk):
        q = torch.zeros(2, 2, tq, 8)
        kv = torch.zeros(2, 2, tk, 8)
        ops.causal_attention(q, kv, kv)
        return calls.pop()

    assert attend(1, 40) == "sdpa"  # one new token against the cache
    assert attend(3, 200) == "sdpa"
    assert attend(40, 40) == "triton"  # training and prefill
    monkeypatch.setenv("GPT1_KERNELS", "torch")
    ops.reset_kernel_path()
    assert attend(40, 40) == "sdpa"


# ---------------------------------------------------------------------------------- CLI


def _cli(env_extra: dict, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="250", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **env_extra)
    return subprocess.run([sys.executable, "-m", "gpt1cli", *argv], env=env, capture_output=True, text=True,
                          timeout=180, check=False)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_cli_reports_a_bad_kernel_setting_in_one_line(tmp_path):
    line = _one_error_line(_cli({"GPT1_KERNELS": "bogus"}, "generate", "--ckpt", str(tmp_path / "none"),
                                "--prompt", "hi", "--device", "cpu"))
    assert "GPT1_KERNELS='bogus'" in line and "auto, torch, triton" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="GPT1_KERNELS=triton is valid where CUDA is")
def test_cli_refuses_triton_without_cuda_or_interpreter(tmp_path):
    line = _one_error_line(_cli({"GPT1_KERNELS": "triton", "TRITON_INTERPRET": "0"}, "generate", "--ckpt",
                                str(tmp_path / "none"), "--prompt", "hi", "--device", "cpu"))
    assert "GPT1_KERNELS=triton needs a CUDA GPU or TRITON_INTERPRET=1" in line
