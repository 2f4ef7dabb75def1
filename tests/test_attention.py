"""The transformers' attention (scaled_dot_product_attention) against nn.MultiheadAttention and the formula."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.transformer import Attention


def _inputs(batch=3, nq=5, nk=7, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, nq, d, generator=g), torch.randn(batch, nk, d, generator=g),
            torch.randn(batch, nk, d, generator=g))


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
