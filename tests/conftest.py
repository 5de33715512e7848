"""Test-wide set-up and the fixtures the test folders share.

Kernel tests run where the kernels would run in use: on CUDA tensors (compiled Triton) when a
GPU is visible, otherwise on CPU tensors under the Triton interpreter. ``TRITON_INTERPRET`` is
read when a kernel is decorated, so it is set here, before any test module imports Triton;
``KERNEL_DEVICE`` (and the ``kernel_device`` fixture) says which device the kernel tests use.
The ops interface resolves its kernel path once per process, so it is reset around each test.

Outside ``tests/kernels`` each test module runs its torch work on one thread (the test machine
has two shared cores). The artefacts that take seconds to make are built once per session here
(see ``support.py`` for what they hold); tests treat them as read-only.

The folders mirror the package (``tests/data`` for ``gpt1cli/data`` ...) and hold no
``__init__.py``: pytest puts each test file's folder and this one on ``sys.path``, so test modules
import ``support`` (and ``tests/kernels`` its helpers) by their bare names, and every test file
needs a basename of its own.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gpt1_kernels.availability import kernel_device as _kernel_device  # noqa: E402  (after the env is set)

import support  # noqa: E402

KERNEL_DEVICE = _kernel_device()
KERNEL_TESTS = Path(__file__).resolve().parent / "kernels"


@pytest.fixture
def kernel_device() -> torch.device:
    """The device kernel tests put their tensors on (see the module docstring)."""
    return KERNEL_DEVICE


@pytest.fixture(autouse=True)
def _fresh_kernel_path():
    from gpt1cli.model import ops

    ops.reset_kernel_path()
    yield
    ops.reset_kernel_path()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread(request):
    """Every module but the kernel tests' runs its torch work on one thread (restored afterwards)."""
    if KERNEL_TESTS in Path(request.node.path).parents:
        yield
        return
    with support.one_torch_thread():
        yield


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------------------------------------
# The language-model pipeline: a corpus, its shards and tokenizer, a short pre-training run


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> support.Assets:
    """A corpus, its shards (and tokenizer) and a short run of the tiny preset, made by the CLI."""
    return support.build_assets(tmp_path_factory.mktemp("pipeline-assets"))


@pytest.fixture(scope="session")
def tok(assets):
    """The SentencePiece tokenizer of ``assets`` (the one its shards and run use)."""
    from gpt1cli.tokenizer.sentencepiece_bpe import SentencePieceTokenizer

    return SentencePieceTokenizer(assets.tokenizer)


@pytest.fixture(scope="session")
def trained(assets):
    """``assets.run`` loaded for generation on the CPU: ``(model, tokenizer)``."""
    from gpt1cli.model.loading import model_from_checkpoint, tokenizer_for

    model, checkpoint = model_from_checkpoint(assets.run, torch.device("cpu"))
    return model, tokenizer_for(checkpoint)


@pytest.fixture
def run_copy(assets, tmp_path):
    """A private copy of ``assets.run``, free to damage."""
    return shutil.copytree(assets.run, tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# Tasks: a corpus with label words, its shards, a pre-trained and a memorising run


@pytest.fixture(scope="session")
def task_assets(tmp_path_factory) -> support.TaskAssets:
    """The task tests' corpus, shards and runs; task files and fine-tuned runs are made on first
    use (``support.task_file``, ``support.finetuned``) and kept on it."""
    return support.build_task_assets(tmp_path_factory.mktemp("task-assets"))


# ---------------------------------------------------------------------------------------------
# Interoperability: a toy BPE vocabulary in the OpenAI release's format


@pytest.fixture(scope="session")
def toy_bpe() -> tuple[list, list]:
    """``(vocab, merges)``: 300 merges learned from ``support.make_text`` (seeds 0-5)."""
    return support.learn_bpe([support.make_text(seed) for seed in range(6)], 300)


@pytest.fixture(scope="session")
def bpe_tok(toy_bpe):
    """An OpenAI BPE tokenizer of the ``toy_bpe`` vocabulary and merges."""
    from gpt1cli.tokenizer.openai_bpe import OpenAIBPETokenizer

    return OpenAIBPETokenizer(*toy_bpe)
