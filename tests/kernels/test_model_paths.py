"""The whole model through the Triton kernels against the PyTorch path, on ``KERNEL_DEVICE``
(compiled on a GPU, interpreted on a CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from gpt1cli.config import ModelConfig
from gpt1cli.errors import Gpt1Error
from gpt1cli.model import ops
from gpt1cli.model.gpt import GPT
from gpt1cli.train.optim import make_optimizer
from tolerances import KERNEL_DEVICE, tolerance

CONFIG = dict(vocab_size=97, n_ctx=24, n_layer=2, n_head=2, d_model=32, d_ff=64)


def train(path: str, monkeypatch, *, arch: str, dropout: float, steps: int = 2, repeat: bool = False):
    """Losses per step and the first step's gradients, with the kernels forced to ``path``."""
    monkeypatch.setenv("GPT1_KERNELS", path)
    ops.reset_kernel_path()
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIG, arch=arch, dropout=dropout, attn_dropout=dropout)).to(KERNEL_DEVICE)
    optimizer = make_optimizer(model, 3e-3, 0.01)
    data = torch.randint(0, CONFIG["vocab_size"], (steps, 4, CONFIG["n_ctx"] + 1), generator=torch.Generator().manual_seed(1))
    data = data.to(KERNEL_DEVICE)
    if repeat:  # one batch over and over: the loss must fall
        data = data[:1].expand_as(data)
    losses, grads = [], None
    for batch in data:
        loss = model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        if grads is None:
            grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses, grads


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_triton_path_trains_like_the_torch_path(arch, monkeypatch):
    torch_losses, torch_grads = train("torch", monkeypatch, arch=arch, dropout=0.0)
    triton_losses, triton_grads = train("triton", monkeypatch, arch=arch, dropout=0.0)
    rtol, atol = tolerance("model", torch.float32)
    assert triton_losses == pytest.approx(torch_losses, abs=10 * atol)
    assert torch_losses[-1] < torch_losses[0]
    for name, grad in torch_grads.items():
        torch.testing.assert_close(triton_grads[name], grad, atol=atol, rtol=rtol, msg=name)


def test_triton_path_with_dropout_trains(monkeypatch):
    losses, _ = train("triton", monkeypatch, arch="gpt1", dropout=0.1, steps=3, repeat=True)
    reference, _ = train("torch", monkeypatch, arch="gpt1", dropout=0.1, steps=3, repeat=True)
    # Different dropout masks (Philox in the kernel, torch's RNG elsewhere): close, not equal.
    assert all(abs(a - b) < 0.2 for a, b in zip(losses, reference))
    assert losses[-1] < losses[0] - 0.05


def test_dispatch_follows_the_environment(monkeypatch):
    """Each setting resolved afresh (the path is cached per process, so reset between)."""
    cpu = torch.empty(1)

    def path(value):
        monkeypatch.setenv("GPT1_KERNELS", value)
        ops.reset_kernel_path()
        return ops.kernel_path()

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert path("torch") is ops.KernelPath.TORCH
    assert not ops.use_triton(cpu) and ops.describe_path("cpu").startswith("torch")
    assert path("triton") is ops.KernelPath.TRITON_INTERPRETER
    assert ops.use_triton(cpu) and ops.describe_path("cpu").startswith("triton (interpreter)")
    path("auto")
    assert not ops.use_triton(cpu)  # auto picks Triton on CUDA only
    assert ops.describe_path("cpu").startswith("torch")
    with pytest.raises(Gpt1Error, match="GPT1_KERNELS"):
        path("fast")


def test_pretrain_logs_the_kernel_path(monkeypatch, tmp_path):
    from gpt1cli.data.pipeline import tokenize_corpus
    from gpt1cli.train.pretrain import PretrainConfig, pretrain

    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i} of a small corpus about kernels and paths\n\n" for i in range(200)))
    tokenize_corpus([str(corpus)], tmp_path / "shards", vocab_size=300, show_progress=False)
    monkeypatch.setenv("GPT1_KERNELS", "triton")
    pretrain(PretrainConfig(shards=str(tmp_path / "shards"), out=str(tmp_path / "run"), steps=1, batch_size=2,
                            n_ctx=16, eval_tokens=32), show_progress=False)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    expected = "triton (interpreter):" if KERNEL_DEVICE.type == "cpu" else "triton:"
    assert record["kernels"].startswith(expected)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_triton_path_on_cuda_matches_torch_in_bf16(arch, monkeypatch):
    def run(path):
        monkeypatch.setenv("GPT1_KERNELS", path)
        ops.reset_kernel_path()
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=5000, n_ctx=256, n_layer=4, n_head=4, d_model=256, d_ff=1024, arch=arch,
                                dropout=0.0, attn_dropout=0.0)).cuda()
        batch = torch.randint(0, 5000, (8, 257), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch[:, :-1], targets=batch[:, 1:])
        loss.backward()
        return float(loss), {n: p.grad.float() for n, p in model.named_parameters()}

    torch_loss, torch_grads = run("torch")
    triton_loss, triton_grads = run("triton")
    assert triton_loss == pytest.approx(torch_loss, rel=2e-2)
    for name, grad in torch_grads.items():
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), triton_grads[name].flatten(), dim=0)
        assert cosine > 0.99, name


def test_triton_path_compiles_as_one_graph(monkeypatch):
    """Under torch.compile(fullgraph=True) the ops reach the kernels' custom ops with no graph
    break (each break would split the model around every kernel), and match eager."""
    monkeypatch.setenv("GPT1_KERNELS", "triton")
    ops.reset_kernel_path()
    ops.kernel_path()  # resolved (and logged) before tracing, as training does
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIG, arch="gpt2", dropout=0.0, attn_dropout=0.0)).to(KERNEL_DEVICE)
    batch = torch.randint(0, CONFIG["vocab_size"], (2, CONFIG["n_ctx"] + 1), generator=torch.Generator().manual_seed(1))
    batch = batch.to(KERNEL_DEVICE)

    def loss_of(idx, targets):
        return model(idx, targets=targets)

    torch._dynamo.reset()
    compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
    loss = compiled(batch[:, :-1], batch[:, 1:])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    ref = loss_of(batch[:, :-1], batch[:, 1:])
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    torch._dynamo.reset()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, ref_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
