"""The GPT decoder: parameter count, tied output, causality, KV cache, GPT-1 vs GPT-2 layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt1cli.config import ModelConfig, count_parameters, preset
from gpt1cli.errors import Gpt1Error
from gpt1cli.model.gpt import GPT, KVCache

VOCAB = 97


def tiny(arch: str = "gpt1", **overrides) -> GPT:
    torch.manual_seed(0)
    config = preset("tiny", VOCAB, arch=arch, **overrides)
    return GPT(config).eval()


def tokens(length: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


# ---------------------------------------------------------------------------------------------
# Size


def test_paper_model_has_116_534_784_parameters():
    config = preset("gpt1", 40478)
    assert (config.n_layer, config.n_head, config.d_model, config.d_ff, config.n_ctx) == (12, 12, 768, 3072, 512)
    assert config.arch == "gpt1"
    assert count_parameters(config) == 116_534_784
    # Check the formula against real modules of the paper's widths without building all 12 layers
    # (the meta device costs seconds on first use): one block, counted for real, times twelve.
    one_layer = GPT(config.replace(n_layer=1))
    block = sum(p.numel() for p in one_layer.blocks[0].parameters())
    embeddings = one_layer.tok_emb.weight.numel() + one_layer.pos_emb.weight.numel()
    assert one_layer.num_parameters() == embeddings + block == count_parameters(config.replace(n_layer=1))
    assert embeddings + 12 * block == 116_534_784


def test_gpt2_layout_adds_only_the_final_layer_norm():
    config = preset("gpt1", 40478, arch="gpt2")
    assert count_parameters(config) == 116_534_784 + 2 * 768
    small = GPT(config.replace(n_layer=1, vocab_size=50))
    assert small.num_parameters() == count_parameters(config.replace(n_layer=1, vocab_size=50))
    assert sum(p.numel() for p in small.ln_f.parameters()) == 2 * 768


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_count_parameters_matches_the_module(arch, name):
    config = preset(name, 300, arch=arch)
    assert GPT(config).num_parameters() == count_parameters(config)


# ---------------------------------------------------------------------------------------------
# Tied output


def test_output_is_tied_to_the_token_embedding():
    model = tiny()
    hidden = model(tokens(10))
    logits = model.logits(hidden)
    assert logits.shape == (2, 10, VOCAB)
    torch.testing.assert_close(logits, hidden @ model.tok_emb.weight.t())
    # No second (vocab x d_model) matrix anywhere, and no separate head in the state dict.
    big = [n for n, p in model.named_parameters() if p.shape == (VOCAB, model.config.d_model)]
    assert big == ["tok_emb.weight"]
    assert not any(k.startswith("head") for k in model.state_dict())
    # Changing the embedding changes the output projection too.
    with torch.no_grad():
        model.tok_emb.weight[5] += 1.0
    assert not torch.allclose(model.logits(hidden)[..., 5], logits[..., 5])
    torch.testing.assert_close(model.logits(hidden)[..., 6], logits[..., 6])


def test_lm_loss_is_cross_entropy_of_the_tied_logits_and_trains_the_embedding_through_the_output():
    model = tiny()
    idx = tokens(12)
    hidden = model(idx[:, :-1])
    loss = model.lm_loss(hidden, idx[:, 1:])
    expected = F.cross_entropy(model.logits(hidden).reshape(-1, VOCAB), idx[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, expected)
    # Untrained: loss close to log(vocab)
    assert abs(loss.item() - math.log(VOCAB)) < 0.5
    # A token that never appears in the input still gets a gradient, via the tied output.
    unused = sorted(set(range(VOCAB)) - set(idx.flatten().tolist()))
    assert unused
    loss.backward()
    assert model.tok_emb.weight.grad[unused[0]].abs().sum() > 0
    # ignore_index drops positions
    targets = idx[:, 1:].clone()
    targets[:, 5:] = -100
    masked = model.lm_loss(hidden, targets)
    expected = F.cross_entropy(model.logits(hidden)[:, :5].reshape(-1, VOCAB), idx[:, 1:6].reshape(-1))
    torch.testing.assert_close(masked, expected)


# ---------------------------------------------------------------------------------------------
# Causality and the KV cache


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_future_tokens_do_not_change_earlier_hidden_states(arch):
    model = tiny(arch)
    idx = tokens(20, batch=1)
    base = model(idx)
    for k in (0, 7, 19):
        changed = idx.clone()
        changed[0, k] = (changed[0, k] + 1) % VOCAB
        out = model(changed)
        torch.testing.assert_close(out[:, :k], base[:, :k], rtol=0, atol=1e-5)
        assert (out[:, k] - base[:, k]).abs().max() > 1e-3, "the changed position itself must change"


@pytest.mark.parametrize("arch", ["gpt1", "gpt2"])
def test_kv_cache_decoding_equals_the_full_forward(arch):
    model = tiny(arch)
    idx = tokens(model.config.n_ctx, seed=3)
    full = model(idx)
    cache = KVCache(model.config.n_layer)
    pieces = [model(idx[:, :11], cache=cache)]
    assert cache.length == 11
    for t in range(11, idx.shape[1]):
        pieces.append(model(idx[:, t : t + 1], cache=cache))
    assert cache.length == model.config.n_ctx
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    # Chunks of uneven size give the same result.
    cache = KVCache(model.config.n_layer)
    chunks = [model(idx[:, a:b], cache=cache) for a, b in ((0, 5), (5, 6), (6, 40), (40, model.config.n_ctx))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-4, atol=1e-4)
    # The cache cannot grow past the context.
    with pytest.raises(ValueError, match="exceeds the context"):
        model(idx[:, :1], cache=cache)


def test_positions_beyond_the_context_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="exceeds the context"):
        model(tokens(model.config.n_ctx + 1, batch=1))


def test_dropout_only_in_training_mode():
    model = tiny()
    idx = tokens(16)
    torch.testing.assert_close(model(idx), model(idx), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    a = model(idx)
    b = model(idx)
    assert (a - b).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------
# GPT-1 vs GPT-2


def test_gpt1_is_post_ln_without_final_norm():
    model = tiny("gpt1")
    assert model.ln_f is None
    assert all(block.post_ln for block in model.blocks)
    # Post-LN: every block's output is normalised (at init, gain 1, bias 0).
    out = model(tokens(16))
    torch.testing.assert_close(out.mean(-1), torch.zeros(out.shape[:-1]), rtol=0, atol=1e-4)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(out.shape[:-1]), rtol=0, atol=1e-3)


def test_gpt2_has_final_norm_and_pre_ln_blocks():
    model = tiny("gpt2")
    assert model.ln_f is not None
    assert not any(block.post_ln for block in model.blocks)
    # Without ln_f the residual stream is not normalised: pre-LN blocks add to it.
    x = model.drop(model.tok_emb(tokens(16)) + model.pos_emb(torch.arange(16)))
    for layer, block in enumerate(model.blocks):
        x = block(x, layer=layer)
    assert (x.var(-1, unbiased=False) - 1).abs().max() > 0.5
    normed = model.ln_f(x)
    torch.testing.assert_close(normed, model(tokens(16)), rtol=1e-5, atol=1e-5)


def test_gpt2_scales_residual_projection_init():
    torch.manual_seed(0)
    n_layer = 8
    config = ModelConfig(vocab_size=VOCAB, n_ctx=32, n_layer=n_layer, n_head=4, d_model=128, d_ff=512, arch="gpt2")
    model = GPT(config)
    expected = 0.02 / math.sqrt(2 * n_layer)
    projections = torch.cat([torch.cat([b.attn.proj.weight.flatten(), b.mlp.proj.weight.flatten()]) for b in model.blocks])
    assert abs(projections.std().item() - expected) / expected < 0.05
    others = torch.cat([torch.cat([b.attn.qkv.weight.flatten(), b.mlp.fc.weight.flatten()]) for b in model.blocks])
    assert abs(others.std().item() - 0.02) / 0.02 < 0.05
    assert all(b.attn.proj.bias.abs().max().item() == 0.0 for b in model.blocks)
    # GPT-1 keeps the plain 0.02 everywhere
    torch.manual_seed(0)
    gpt1 = GPT(config.replace(arch="gpt1"))
    plain = torch.cat([b.attn.proj.weight.flatten() for b in gpt1.blocks])
    assert abs(plain.std().item() - 0.02) / 0.02 < 0.05


# ---------------------------------------------------------------------------------------------
# Config checks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="gpt3"), "unknown architecture"),
        (dict(d_model=65), "divisible by n_head"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(dropout=1.0), "dropout must be in"),
    ],
)
def test_bad_model_settings_are_clear_errors(kwargs, message):
    settings = dict(vocab_size=VOCAB, n_ctx=16, n_layer=1, n_head=2, d_model=64, d_ff=128)
    settings.update(kwargs)
    with pytest.raises(Gpt1Error, match=message):
        ModelConfig(**settings)


def test_config_round_trips_and_rejects_unknown_keys():
    config = preset("tiny", 321, arch="gpt2", n_ctx=48)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Gpt1Error, match="unknown model settings"):
        ModelConfig.from_dict({**config.to_dict(), "rotary": True})
    with pytest.raises(Gpt1Error, match="unknown preset"):
        preset("huge", 100)
