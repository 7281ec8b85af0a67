"""The latent-DiT paper's computational criterion, measured on a trained DiT (Hu et al., "On
Statistical Rates and Provably Efficient Criteria of Latent Diffusion Transformers (DiTs)",
NeurIPS 2024; the fast attention of Alman & Song 2023, ``zoo.nn.fast_attention``).

The criterion (as the project's paper notes and Alman & Song state it; the latent-DiT paper's own
text was not reachable when this was written): attention ``softmax(Q K^T) V`` over ``L`` tokens
admits an almost-linear-time (``L^{1 + o(1)}``) approximation when the entries of ``Q, K, V`` are
bounded by ``B = o(sqrt(log L))``, and none truly sub-quadratic (under SETH) at ``B = Theta(sqrt(log L))``.
Alman & Song's scores are ``Q K^T / d`` with entries of ``Q, K`` in ``[-B, B]``, so
``|score| <= B^2``. The DiT's scores are ``q k^T / sqrt(d_h)``; writing them in that form,
``q k^T / sqrt(d_h) = (d_h^{1/4} q)(d_h^{1/4} k)^T / d_h``, the DiT's equivalent entry bound is

    B_eq = d_h^{1/4} max(max |q_ij|, max |k_ij|)

(:func:`entry_statistics`), to be compared with ``sqrt(log L)``. What the fast attention's error
actually depends on is the largest score ``max |q_i^T k_j| / sqrt(d_h)``, also reported.

Tools (plain torch, no Lightning):

- :func:`attention_inputs`: each block's attention input (the normalised, modulated tokens) on real
  inputs, captured by forward pre-hooks; :func:`split_qkv` gives that layer's ``q, k, v``.
- :func:`entry_statistics`: per layer, the max entries of ``q, k, v``, the max score, the
  Cauchy-Schwarz bound of ``zoo.nn.fast_attention.entry_bound`` and ``B_eq`` vs ``sqrt(log L)``.
- :func:`swapped_attention`: a context manager that replaces every block's attention by a
  function of ``(q, k, v)`` (forward hooks that recompute the output; removed on exit, so the model
  itself is untouched: nothing changes outside the ``with``).
- :func:`polynomial_attention` / :func:`scaled_exact_attention`: such functions, with an
  entry-scale multiplier ``m`` applied to ``q`` and ``k`` (scores scale by ``m^2``), so that the
  approximation error can be traced against the entry bound on a trained model's own activations.
- :func:`layer_errors`: per layer, the relative error of the polynomial attention against exact
  attention on the same (scaled) ``q, k, v``.
- :func:`gradient_errors`: the training side. The paper's almost-linear-time training rests on the
  gradient of the attention being computable through the same low-rank (polynomial-feature)
  factorisation; the gradient it yields is the gradient of the model whose attentions are the
  polynomial approximation. So the error that criterion allows is measured as the relative error of
  ``d loss / d theta`` with every attention swapped to the polynomial version, against the same
  gradient with exact attention (both at multiplier ``m``, float64), per parameter group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from zoo.dit.model import Attention, DiT
from zoo.nn.fast_attention import entry_bound, exact_attention, fast_attention

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def split_qkv(attn: Attention, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v [B, heads, N, d_head]`` of ``attn`` on its input ``h [B, N, D]`` (as its forward)."""
    b, n, d = h.shape
    q, k, v = attn.qkv(h).view(b, n, 3, attn.heads, d // attn.heads).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _attentions(net: DiT) -> list[Attention]:
    return [block.attn for block in net.blocks]


@torch.no_grad()
def attention_inputs(net: DiT, x: Tensor, t: Tensor, y: Tensor | None = None) -> list[Tensor]:
    """The input ``[B, N, D]`` of every block's attention in one forward of ``net(x, t, y)``."""
    captured: list[Tensor] = []
    handles = [a.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
               for a in _attentions(net)]
    try:
        net(x, t, y)
    finally:
        for handle in handles:
            handle.remove()
    return captured


@torch.no_grad()
def entry_statistics(net: DiT, x: Tensor, t: Tensor, y: Tensor | None = None) -> list[dict[str, float]]:
    """Per attention layer on ``net(x, t, y)``: ``max_q, max_k, max_v`` (largest absolute entry),
    ``max_score`` (largest ``|q_i^T k_j| / sqrt(d_h)`` over batch, heads and token pairs),
    ``cs_bound`` (``entry_bound``, its Cauchy-Schwarz upper bound), ``b_eq`` (module docstring),
    ``tokens`` L and ``sqrt_log_tokens``."""
    stats = []
    for attn, h in zip(_attentions(net), attention_inputs(net, x, t, y)):
        q, k, v = split_qkv(attn, h)
        d = q.shape[-1]
        scores = (q @ k.transpose(-2, -1)) * d ** -0.5
        max_q, max_k = float(q.abs().max()), float(k.abs().max())
        n = q.shape[-2]
        stats.append(dict(max_q=max_q, max_k=max_k, max_v=float(v.abs().max()), max_score=float(scores.abs().max()),
                          cs_bound=entry_bound(q, k), b_eq=d ** 0.25 * max(max_q, max_k), tokens=n,
                          sqrt_log_tokens=math.sqrt(math.log(n)), head_dim=d))
    return stats


def scaled_exact_attention(multiplier: float = 1.0, dtype: torch.dtype = torch.float64) -> AttentionFn:
    """``softmax((m q)(m k)^T / sqrt(d)) v`` computed in ``dtype`` (the reference of a sweep)."""
    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return exact_attention(q.to(dtype) * multiplier, k.to(dtype) * multiplier, v.to(dtype)).to(v.dtype)
    return fn


def polynomial_attention(degree: int, multiplier: float = 1.0, dtype: torch.dtype = torch.float64,
                         chunk: int = 8) -> AttentionFn:
    """``zoo.nn.fast_attention.fast_attention`` of degree ``degree`` without the exact fallback, on
    ``m q, m k, v`` in ``dtype``, ``chunk`` samples of the batch at a time (its features are
    ``C(d + g, g)`` wide)."""
    def fn(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        parts = [fast_attention(qc.to(dtype) * multiplier, kc.to(dtype) * multiplier, vc.to(dtype), degree=degree,
                                exact_fallback=False)
                 for qc, kc, vc in zip(q.split(chunk), k.split(chunk), v.split(chunk))]
        return torch.cat(parts).to(v.dtype)
    return fn


@contextmanager
def swapped_attention(net: DiT, fn: AttentionFn) -> Iterator[DiT]:
    """Inside the ``with``, every block's attention output is ``proj(fn(q, k, v))`` (``q, k, v``
    ``[B, heads, N, d_head]``) instead of exact attention; on exit the hooks are removed."""
    def hook(module: Attention, args: tuple[Tensor, ...], _output: Tensor) -> Tensor:
        h = args[0]
        b, n, d = h.shape
        out = fn(*split_qkv(module, h))
        return module.proj(out.transpose(1, 2).reshape(b, n, d))

    handles = [a.register_forward_hook(hook) for a in _attentions(net)]
    try:
        yield net
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def layer_errors(net: DiT, x: Tensor, t: Tensor, y: Tensor | None, degree: int,
                 multiplier: float) -> list[dict[str, float]]:
    """Per layer, on the exact model's own attention inputs: the polynomial attention of ``degree``
    vs exact attention, both on ``m q, m k, v`` in float64. ``rel_error`` = ``||A~ - A||_F / ||A||_F``,
    ``max_error`` = ``max |A~ - A| / max |A|``, ``max_score`` the largest scaled score ``m^2 |q k^T| / sqrt(d)``."""
    rows = []
    for attn, h in zip(_attentions(net), attention_inputs(net, x, t, y)):
        q, k, v = (z.double() for z in split_qkv(attn, h))
        exact = scaled_exact_attention(multiplier)(q, k, v)
        approx = polynomial_attention(degree, multiplier)(q, k, v)
        diff = approx - exact
        score = float(((q @ k.transpose(-2, -1)).abs().max()) * multiplier ** 2 * q.shape[-1] ** -0.5)
        rows.append(dict(rel_error=float(diff.norm() / exact.norm()),
                         max_error=float(diff.abs().max() / exact.abs().max()), max_score=score))
    return rows


def gradient_errors(net: DiT, loss_fn: Callable[[DiT], Tensor], degree: int,
                    multiplier: float) -> dict[str, float]:
    """Relative errors ``||g~ - g|| / ||g||`` of the gradient of ``loss_fn(net)`` (a scalar) with every
    attention swapped to the polynomial one of ``degree`` (``g~``) against exact attention (``g``),
    both on ``m q, m k, v`` in float64 (module docstring). Keys: ``"attention"`` (every block's
    ``qkv`` and ``proj``), ``"mlp"``, ``"all"`` (every parameter that gets a gradient), and
    ``"block{i}.qkv"`` per block. The network's ``requires_grad`` flags are left as they were."""

    def gradient(fn: AttentionFn) -> dict[str, Tensor]:
        params = {name: p for name, p in net.named_parameters()}
        flags = {name: p.requires_grad for name, p in params.items()}
        try:
            for p in params.values():
                p.requires_grad_(True)
            with torch.enable_grad(), swapped_attention(net, fn):
                grads = torch.autograd.grad(loss_fn(net), list(params.values()), allow_unused=True)
        finally:
            for name, p in params.items():
                p.requires_grad_(flags[name])
        return {name: g.double() for name, g in zip(params, grads) if g is not None}

    exact = gradient(scaled_exact_attention(multiplier))
    approx = gradient(polynomial_attention(degree, multiplier))

    def rel(names: list[str]) -> float:
        num = math.sqrt(sum(float((approx[n] - exact[n]).pow(2).sum()) for n in names))
        den = math.sqrt(sum(float(exact[n].pow(2).sum()) for n in names))
        return num / den if den > 0 else 0.0

    blocks = [n for n in exact if n.startswith("blocks.")]
    groups = {"attention": [n for n in blocks if ".attn." in n], "mlp": [n for n in blocks if ".mlp." in n],
              "all": list(exact)}
    for i in range(len(net.blocks)):
        groups[f"block{i}.qkv"] = [n for n in exact if n.startswith(f"blocks.{i}.attn.qkv")]
    return {key: rel(names) for key, names in groups.items() if names}
