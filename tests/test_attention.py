"""The transformers' attention (scaled_dot_product_attention) against nn.MultiheadAttention and the formula,
and the CPU training path with attention dropout (cpu_dropout_attention) against its definition."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.transformer import Attention, _keep_mask, cpu_dropout_attention


def _inputs(batch=3, nq=5, nk=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, nq, d, generator=g),
        torch.randn(batch, nk, d, generator=g),
        torch.randn(batch, nk, d, generator=g),
    )


def test_same_parameters_and_initial_values_as_multihead_attention():
    torch.manual_seed(4)
    old = nn.MultiheadAttention(16, 4, dropout=0.1, batch_first=True)
    torch.manual_seed(4)
    new = Attention(16, 4, 0.1)
    a, b = old.state_dict(), new.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("nheads", [1, 4])
def test_equals_multihead_attention_and_the_formula(nheads):
    d = 16
    old = nn.MultiheadAttention(d, nheads, dropout=0.1, batch_first=True).eval()
    for p in old.parameters():  # non-zero biases too
        nn.init.normal_(p)
    new = Attention(d, nheads, 0.1).eval()
    new.load_state_dict(old.state_dict())
    q, k, v = _inputs(d=d)
    with torch.no_grad():
        out = new(q, k, v)
        ref = old(q, k, v, need_weights=False)[0]
        # softmax(Q K^T / sqrt(c)) V per head, by hand.
        w_q, w_k, w_v = old.in_proj_weight.chunk(3)
        b_q, b_k, b_v = old.in_proj_bias.chunk(3)
        c = d // nheads

        def heads(x, w, b):
            return (x @ w.T + b).view(x.shape[0], x.shape[1], nheads, c).transpose(1, 2)

        qh, kh, vh = heads(q, w_q, b_q), heads(k, w_k, b_k), heads(v, w_v, b_v)
        attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(c), dim=-1) @ vh
        formula = old.out_proj(attn.transpose(1, 2).reshape(q.shape[0], q.shape[1], d))
    assert out.shape == (3, 5, d)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, formula, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    new = Attention(16, 4, 0.5)
    q, k, v = _inputs()
    new.eval()
    assert torch.equal(new(q, k, v), new(q, k, v))
    new.train()
    torch.manual_seed(0)
    a = new(q, k, v)
    torch.manual_seed(1)
    assert not torch.allclose(a, new(q, k, v))


def test_gradients_reach_every_parameter():
    new = Attention(16, 4, 0.0)
    new(*_inputs()).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new.parameters())


def test_the_cpu_dropout_mask_drops_each_element_with_the_asked_probability():
    torch.manual_seed(0)
    for p in (0.1, 0.5):
        keep, factor = _keep_mask(torch.Size([1000, 1001]), p, torch.device("cpu"))  # not a multiple of 4
        assert keep.dtype == torch.bool and keep.shape == (1000, 1001)
        exact = round(p * 65536) / 65536
        assert abs(exact - p) < 1e-5 and factor == pytest.approx(1 / (1 - exact))
        flat = keep.flatten().float()
        sigma = math.sqrt(p * (1 - p) / flat.numel())
        assert abs((1 - flat.mean()) - exact) < 5 * sigma
        for lane in range(4):  # each 16-bit part of the 64-bit draws
            part = flat[lane::4]
            assert abs((1 - part.mean()) - exact) < 5 * math.sqrt(p * (1 - p) / part.numel())
        # neighbouring elements are independent: P(both dropped) = p^2
        both = ((1 - flat[:-1]) * (1 - flat[1:])).mean()
        assert abs(both - exact**2) < 5 * math.sqrt(exact**2 / flat.numel())


def test_cpu_dropout_attention_is_softmax_attention_with_that_mask():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, n, 8, generator=g, dtype=torch.float64) for n in (5, 7, 7))
    torch.manual_seed(3)
    out = cpu_dropout_attention(q, k, v, 0.3)
    torch.manual_seed(3)
    keep, factor = _keep_mask(torch.Size([2, 4, 5, 7]), 0.3, torch.device("cpu"))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(out, (weights * keep * factor) @ v, rtol=1e-12, atol=1e-12)
    assert 0 < (~keep).float().mean() < 1


def test_cpu_dropout_attention_averages_to_attention_without_dropout():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, n, 4, generator=g) for n in (3, 6, 6))
    torch.manual_seed(0)
    mean = torch.stack([cpu_dropout_attention(q, k, v, 0.2) for _ in range(4000)]).mean(0)
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(mean, plain, atol=0.03, rtol=0)


def test_training_on_the_cpu_takes_the_dropout_path_and_its_gradients_flow(monkeypatch):
    import models.transformer as transformer

    calls = []
    monkeypatch.setattr(
        transformer, "cpu_dropout_attention", lambda *a: calls.append(a[3]) or cpu_dropout_attention(*a)
    )
    layer = Attention(16, 4, 0.1).train()
    layer(*_inputs()).square().sum().backward()
    assert calls == [0.1]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    layer.eval()(*_inputs())
    Attention(16, 4, 0.0).train()(*_inputs())
    assert calls == [0.1]  # eval, and training without dropout, stay on scaled_dot_product_attention
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.train()(*_inputs())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
