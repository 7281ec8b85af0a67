"""A transformer whose weights are set by hand so that its forward pass runs ``L`` steps of gradient
descent on an ``N``-layer ReLU network over the in-context examples (Wu, Su, Hu, Song, Liu,
"Transformers are Deep Optimizers: Provable In-Context Learning for Deep Model Training", ICML 2025
as "In-Context Deep Learning via Transformer Models"; arXiv 2411.16549).

**The statement (the paper's).** A ``(2N+4)L``-layer transformer with ReLU attention, given a prompt
of examples ``(x_i, y_i)`` and a query ``x``, approximates ``L`` gradient-descent steps of an
``N``-layer network on the in-context loss (to any given error, with a bound on how errors add up
over the steps), and predicts at the query with the trained network. The paper also states a
``4L``-layer softmax-attention version, built from a universal-approximation lemma.

**What is the paper's here and what is derived.** The paper's full text (its Lemmas 1-6 and the
weights) could not be read from this machine; only its statement and a summary of its layer plan
were reachable: per GD step, ``N`` attention layers for the forward pass, one attention layer for the
activation derivatives ``r'``, one MLP for the loss derivative, ``N`` element-wise multiplication
layers (EWML, a non-standard layer) for the chain-rule terms, one attention layer for the update and
one MLP projecting the parameters onto a bounded set; smooth functions are approximated by sums of
ReLUs ("(eps, R, H, C)-approximable", as in Bai et al. 2023). The construction below follows that
plan, but **every weight formula in it is derived here**, not copied from the paper:

- *Tokens.* The zoo's encoder format (``model.encoder_tokens``): ``[x_j, y_j, 0]`` per example and
  ``[x_q, 0, 1]`` per query. The read-in (an affine map) copies them into a wide residual stream
  and writes the constant 1 and the initial parameters ``w_0`` (the same for every prompt) into every
  token's *parameter block*: each token carries its own copy of all ``N`` weight matrices.
- *ReLU attention.* ``h_i <- h_i + sum_heads (1/n) sum_{j example} ReLU(<Q h_i, K h_j>) O V h_j``:
  every token is a query, the ``n`` example tokens are the keys (the query tokens are not), the
  normalization is by ``n`` (Bai et al.'s ``ReLU(QK^T)/N``; the zoo's ``attend(kind="relu")``
  also counts the query token itself).
- *Forward pass (exact).* All tokens hold the same ``W_l``, so a head with query ``h_{l-1,i}``
  (token ``i``'s activations), key ``W_l[a, :]`` (token ``j``'s copy) and value the constant 1
  writes ``(1/n) sum_j ReLU(W_l[a,:] . h_{l-1,i}) = ReLU(z_{l,i}[a])``: one head per unit, exact.
  The linear output layer uses two heads, ``ReLU(z) - ReLU(-z) = z``.
- *``r'`` (approximate).* The ReLU's derivative is a step, which no sum of ReLUs matches near 0:
  the gate is the ramp ``ReLU(z/delta) - ReLU(z/delta - 1)`` (two heads per unit), equal to
  ``1[z > 0]`` except for ``0 < z < delta`` (``ramp_width``). The paper's theorem assumes a
  Lipschitz ``r'``, which the ReLU does not have; this is the one approximation a ReLU network forces.
- *Loss derivative (exact).* ``u = p - y`` for the squared loss, an MLP with two ReLUs.
- *Chain rule.* ``v_l = W_{l+1}^T s_{l+1}`` is bilinear in the stored ``W`` and the token's ``s``,
  which one attention layer computes exactly (query ``+-s_{l+1,i}``, key ``W_{l+1}[:, k]``, two
  heads). The product ``s_l = r'(z_l) * v_l`` of two quantities of the *same* token is what attention
  cannot form; ``product`` chooses how:

  - ``"relu_sum"`` (standard layers only; the knob ``relu_terms``): an MLP computes
    ``g v = ((g + v)^2 - (g - v)^2) / 4`` with each square replaced by its piecewise-linear
    interpolant on ``relu_terms`` equal pieces of ``[0, bound + 1]``, a sum of ``2 relu_terms``
    ReLUs; the error is at most ``h^2 / 8`` per product for ``|v| <= bound``,
    ``h = (bound + 1) / relu_terms``. (For a 0/1 gate the error even cancels when ``2 / h`` is an
    integer, since ``t^2`` minus its interpolant is ``h``-periodic; the defaults avoid that case.)
  - ``"gate"`` (derived here; exact for a 0/1 gate): one attention layer with heads
    ``ReLU(+-v + M g - M)``, ``M = bound``, which is ``g v`` when ``g`` is 0 or 1 and ``|v| <= M``.
  - ``"ewml"``: the paper's element-wise multiplication layer, exact (not a standard transformer
    layer).
- *Update (exact).* ``W_l[a, :] -= eta (1/n) sum_j s_{l,j}[a] h_{l-1,j}``: heads with a constant
  query, key ``+-s_{l,j}[a]`` and value ``h_{l-1,j}``, so every token's copy of ``W_l`` gets the
  same full-batch gradient step on ``L(w) = (1/2n) sum_i (f(w, x_i) - y_i)^2``.
- *Projection and clean-up (exact).* An MLP clips every parameter to ``[-radius, radius]``
  (``w - ReLU(w - R) + ReLU(-w - R)``; no-op for ``radius=inf``) and zeroes the scratch
  coordinates for the next step.
- After the ``L`` steps, ``N`` more forward layers evaluate ``f(w_L, x_q)`` at the query tokens; the
  read-out is a linear map of that coordinate.

Layers per step: ``2N + 3`` with ``product="gate"``, ``3N + 2`` with ``"relu_sum"`` or ``"ewml"``
(an attention layer plus a product layer per backward level), against the paper's ``2N + 4``; the
final prediction adds ``N`` layers. Every layer is a plain :class:`ReLUAttention`, :class:`ReLUMLP`
(or the paper's :class:`ElementwiseProduct`) with dense weights; the forward pass multiplies by them
as sparse matrices (almost all entries are exactly 0), which changes only the order of the sums.

:func:`reference_gd` is the slow reference (loops over prompts, steps, examples and layers, fp64),
optionally with the same approximations (``ramp_width``, ``product``) so that the construction can be
checked to be *exactly* what it claims; :func:`batched_gd` is the same exact GD vectorized over
prompts, for benchmarks. Not done: the paper's softmax-attention version (its text could not be
read, and the summary describes it as resting on a universal-approximation lemma, not explicit
weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError

PRODUCTS = ("relu_sum", "gate", "ewml")


# ----------------------------------------------------------------------------------------- layers

def _sparse_linear(x: Tensor, weight: tuple[Tensor, Tensor, Tensor], size: int | None = None) -> Tensor:
    """``x @ W.T`` for ``weight = (rows, cols, W[rows][:, cols])`` (dense, or sparse where it is
    mostly zeros), ``x [..., c]``: ``[..., len(rows)]``, or ``[..., size]`` with zeros outside
    ``rows``."""
    rows, cols, matrix = weight
    xc = x[..., cols]
    if matrix.is_sparse:
        flat = xc.reshape(-1, len(cols)).T.contiguous()
        out = torch.sparse.mm(matrix, flat).T.reshape(*x.shape[:-1], len(rows))
    else:
        out = xc @ matrix.T
    if size is None or len(rows) == size:
        return out
    return out.new_zeros(*x.shape[:-1], size).index_copy_(-1, rows, out)


class _SparseWeights:
    """The layers multiply by their weights restricted to the non-zero rows and columns, as sparse
    matrices where those are still mostly zeros: the hand-set weights are almost all exactly 0, and
    the result is the dense product's up to the order of the floating-point sums. The copies are
    rebuilt whenever a parameter changes (in place: its version counter; or by ``.to()``: its
    storage, dtype or device)."""

    def sparse(self, name: str, matrix) -> tuple[Tensor, Tensor, Tensor]:
        param = getattr(self, name)
        stamp = (param._version, param.data_ptr(), param.dtype, param.device)
        cache = self.__dict__.setdefault("_sparse_cache", {})
        if name not in cache or cache[name][0] != stamp:
            dense = matrix(param.detach())
            nonzero = dense.ne(0)
            rows, cols = nonzero.any(1).nonzero().squeeze(1), nonzero.any(0).nonzero().squeeze(1)
            compact = dense[rows][:, cols]
            if compact.numel() and compact.ne(0).float().mean() < 0.02:
                compact = compact.to_sparse().coalesce()
            cache[name] = (stamp, (rows, cols, compact))
        return cache[name][1]


class ReLUAttention(_SparseWeights, nn.Module):
    """Multi-head ReLU attention with a residual connection; the keys are the example tokens.

    ``h_i <- h_i + sum_h (1 / n) sum_{j: keys[j]} ReLU(<Q_h h_i, K_h h_j>) O_h V_h h_j`` with
    ``Q_h, K_h [e, D]``, ``V_h [e_v, D]``, ``O_h [D, e_v]`` and ``n`` the number of keys.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, value_dim: int, dtype=torch.float64) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(heads, head_dim, dim, dtype=dtype))
        self.key = nn.Parameter(torch.zeros(heads, head_dim, dim, dtype=dtype))
        self.value = nn.Parameter(torch.zeros(heads, value_dim, dim, dtype=dtype))
        self.out = nn.Parameter(torch.zeros(heads, dim, value_dim, dtype=dtype))

    def forward(self, h: Tensor, keys: Tensor) -> Tensor:
        b, t, dim = h.shape
        heads, e, e_v = self.query.shape[0], self.query.shape[1], self.value.shape[1]

        def project(name: str, size: int) -> Tensor:  # [H, size, D] -> [B, H, T, size]
            weight = self.sparse(name, lambda w: w.reshape(heads * size, dim))
            return _sparse_linear(h, weight, heads * size).view(b, t, heads, size).transpose(1, 2)

        q, k, v = project("query", e), project("key", e), project("value", e_v)
        weight = keys.to(h.dtype) / keys.sum(-1, keepdim=True).clamp_min(1).to(h.dtype)  # [B, T]
        mixed = (torch.relu(q @ k.transpose(-1, -2)) * weight[:, None, None, :]) @ v  # [B, H, T, e_v]
        out = self.sparse("out", lambda w: w.permute(1, 0, 2).reshape(dim, heads * e_v))
        return h.index_add(-1, out[0], _sparse_linear(mixed.transpose(1, 2).reshape(b, t, heads * e_v), out))


class ReLUMLP(_SparseWeights, nn.Module):
    """``h <- h + W_2 ReLU(W_1 h + b_1)`` per token."""

    def __init__(self, dim: int, hidden: int, dtype=torch.float64) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(hidden, dim, dtype=dtype))
        self.b1 = nn.Parameter(torch.zeros(hidden, dtype=dtype))
        self.w2 = nn.Parameter(torch.zeros(dim, hidden, dtype=dtype))

    def forward(self, h: Tensor, keys: Tensor | None = None) -> Tensor:
        w1, w2 = self.sparse("w1", lambda w: w), self.sparse("w2", lambda w: w)
        hidden = torch.relu(_sparse_linear(h, w1, self.w1.shape[0]) + self.b1)
        return h.index_add(-1, w2[0], _sparse_linear(hidden, w2))


class ElementwiseProduct(nn.Module):
    """The paper's element-wise multiplication layer (EWML): ``h[out] <- h[out] + h[a] * h[b]``
    per token, for fixed coordinate lists (not a standard transformer layer)."""

    def __init__(self, out: list[int], a: list[int], b: list[int]) -> None:
        super().__init__()
        self.register_buffer("out_index", torch.tensor(out, dtype=torch.long))
        self.register_buffer("a_index", torch.tensor(a, dtype=torch.long))
        self.register_buffer("b_index", torch.tensor(b, dtype=torch.long))

    def forward(self, h: Tensor, keys: Tensor | None = None) -> Tensor:
        return h.index_add(-1, self.out_index, h[..., self.a_index] * h[..., self.b_index])


# ----------------------------------------------------------------------------------------- layout


class Layout:
    """Coordinates of the residual stream: ``one, x, y, flag``, the parameter block ``W_1..W_N``
    (row-major), then scratch: activations ``h_1..h_{N-1}``, output ``p``, gates ``g_l``, loss
    derivative ``u``, back-propagated ``v_l`` (not with ``product="gate"``) and ``s_l``."""

    def __init__(self, n_dims: int, depth: int, width: int, product: str) -> None:
        self.n_dims, self.depth, self.width = n_dims, depth, width
        self.sizes = [n_dims] + [width] * (depth - 1) + [1]
        self.shapes = [(self.sizes[l], self.sizes[l - 1]) for l in range(1, depth + 1)]  # W_l, l = 1..N
        self.slots: dict = {}
        self.dim = 0
        for name, size in (("one", 1), ("x", n_dims), ("y", 1), ("flag", 1)):
            self._take(name, size)
        for l, (o, i) in enumerate(self.shapes, 1):
            self._take(("W", l), o * i)
        self.scratch_start = self.dim
        for l in range(1, depth):
            self._take(("h", l), width)
        self._take("p", 1)
        for l in range(1, depth):
            self._take(("g", l), width)
        self._take("u", 1)
        for l in range(1, depth):
            if product != "gate":
                self._take(("v", l), width)
            self._take(("s", l), width)

    def _take(self, name, size: int) -> None:
        self.slots[name] = list(range(self.dim, self.dim + size))
        self.dim += size

    def __getitem__(self, name) -> list[int]:
        return self.slots[name]

    def act(self, l: int) -> list[int]:
        """Coordinates of ``h_l`` (``h_0 = x``), the input of layer ``l + 1``."""
        return self["x"] if l == 0 else self[("h", l)]

    def delta(self, l: int) -> list[int]:
        """Coordinates of ``s_l = dloss/dz_l`` (``s_N = u``)."""
        return self["u"] if l == self.depth else self[("s", l)]

    def w(self, l: int, a: int, b: int) -> int:
        return self[("W", l)][a * self.shapes[l - 1][1] + b]

    @property
    def parameters(self) -> list[int]:
        return list(range(self["flag"][0] + 1, self.scratch_start))

    @property
    def scratch(self) -> list[int]:
        return list(range(self.scratch_start, self.dim))


@dataclass
class _Head:
    q: list  # (slot, coordinate, coefficient): the query is sum coef * h[coordinate] in that slot
    k: list
    v: list
    o: list  # (coordinate, value slot, coefficient)


def _fill(tensor: Tensor, index: list[tuple], values: list[float]) -> None:
    """``tensor[i] += value`` for every index tuple (repeats add up)."""
    if index:
        columns = [torch.tensor(c, dtype=torch.long) for c in zip(*index)]
        tensor.index_put_(tuple(columns), torch.tensor(values, dtype=tensor.dtype), accumulate=True)


def _attention(layout: Layout, heads: list[_Head], dtype) -> ReLUAttention:
    e = 1 + max(slot for head in heads for slot, _, _ in head.q + head.k)
    e_v = 1 + max(slot for head in heads for slot, _, _ in head.v)
    layer = ReLUAttention(layout.dim, len(heads), e, e_v, dtype)
    with torch.no_grad():
        for tensor, part in ((layer.query, "q"), (layer.key, "k"), (layer.value, "v")):
            terms = [(n, slot, coord, coef) for n, head in enumerate(heads) for slot, coord, coef in getattr(head, part)]
            _fill(tensor, [t[:3] for t in terms], [t[3] for t in terms])
        terms = [(n, coord, slot, coef) for n, head in enumerate(heads) for coord, slot, coef in head.o]
        _fill(layer.out, [t[:3] for t in terms], [t[3] for t in terms])
    return layer


def _mlp(layout: Layout, neurons: list[tuple[list, float, list]], dtype) -> ReLUMLP:
    """``neurons``: (input terms [(coordinate, coef)], bias, output terms [(coordinate, coef)])."""
    layer = ReLUMLP(layout.dim, len(neurons), dtype)
    with torch.no_grad():
        inputs = [(n, coord, coef) for n, (terms, _, _) in enumerate(neurons) for coord, coef in terms]
        _fill(layer.w1, [t[:2] for t in inputs], [t[2] for t in inputs])
        layer.b1.copy_(torch.tensor([bias for _, bias, _ in neurons], dtype=dtype))
        outputs = [(coord, n, coef) for n, (_, _, terms) in enumerate(neurons) for coord, coef in terms]
        _fill(layer.w2, [t[:2] for t in outputs], [t[2] for t in outputs])
    return layer


def _forward_layer(layout: Layout, l: int, dtype) -> ReLUAttention:
    """``h_l = ReLU(W_l h_{l-1})`` (one head per unit) or ``p = W_N h_{N-1}`` (two heads)."""
    inputs, heads = layout.act(l - 1), []
    out, _ = layout.shapes[l - 1]
    one = [(0, layout["one"][0], 1.0)]
    for a in range(out):
        q = [(b, c, 1.0) for b, c in enumerate(inputs)]
        if l < layout.depth:
            heads.append(_Head(q, [(b, layout.w(l, a, b), 1.0) for b in range(len(inputs))], one,
                               [(layout[("h", l)][a], 0, 1.0)]))
        else:
            for sign in (1.0, -1.0):
                heads.append(_Head(q, [(b, layout.w(l, a, b), sign) for b in range(len(inputs))], one,
                                   [(layout["p"][0], 0, sign)]))
    return _attention(layout, heads, dtype)


def _gate_layer(layout: Layout, ramp_width: float, dtype) -> ReLUAttention:
    """``g_l = ReLU(z_l / delta) - ReLU(z_l / delta - 1)`` for every hidden layer: the ramp that
    stands for ``1[z_l > 0]``."""
    heads, one = [], layout["one"][0]
    for l in range(1, layout.depth):
        inputs = layout.act(l - 1)
        bias_slot = len(inputs)
        for a in range(layout.width):
            for shift, sign in ((0.0, 1.0), (1.0, -1.0)):
                q = [(b, c, 1.0 / ramp_width) for b, c in enumerate(inputs)] + [(bias_slot, one, -shift)]
                k = [(b, layout.w(l, a, b), 1.0) for b in range(len(inputs))] + [(bias_slot, one, 1.0)]
                heads.append(_Head(q, k, [(0, one, 1.0)], [(layout[("g", l)][a], 0, sign)]))
    return _attention(layout, heads, dtype)


def _loss_mlp(layout: Layout, dtype) -> ReLUMLP:
    """``u = p - y``: the derivative of ``(p - y)^2 / 2``."""
    p, y, u = layout["p"][0], layout["y"][0], layout["u"][0]
    return _mlp(layout, [([(p, 1.0), (y, -1.0)], 0.0, [(u, 1.0)]), ([(p, -1.0), (y, 1.0)], 0.0, [(u, -1.0)])], dtype)


def _backward_attention(layout: Layout, l: int, product: str, bound: float, dtype) -> ReLUAttention:
    """``v_l = W_{l+1}^T s_{l+1}`` (written to ``v_l``), or with ``product="gate"`` directly
    ``s_l = ReLU(v + M g - M) - ReLU(-v + M g - M)`` (``= g v`` for ``g`` in {0, 1}, ``|v| <= M``)."""
    heads, one = [], layout["one"][0]
    source = layout.delta(l + 1)
    for k in range(layout.width):
        for sign in (1.0, -1.0):
            q = [(a, c, sign) for a, c in enumerate(source)]
            key = [(a, layout.w(l + 1, a, k), 1.0) for a in range(len(source))]
            if product == "gate":
                slot = len(source)
                q += [(slot, layout[("g", l)][k], bound), (slot, one, -bound)]
                key += [(slot, one, 1.0)]
                target = layout[("s", l)][k]
            else:
                target = layout[("v", l)][k]
            heads.append(_Head(q, key, [(0, one, 1.0)], [(target, 0, sign)]))
    return _attention(layout, heads, dtype)


def square_knots(relu_terms: int, bound: float) -> tuple[float, list[float]]:
    """Knot spacing ``h`` and coefficients ``c_k`` of ``q(t) = sum_k c_k (ReLU(t - k h) +
    ReLU(-t - k h))``, the piecewise-linear interpolant of ``t^2`` on ``relu_terms`` equal pieces of
    ``[0, bound + 1]`` (extended linearly beyond): ``c_0 = h``, ``c_k = 2 h``."""
    h = (bound + 1.0) / relu_terms
    return h, [h] + [2.0 * h] * (relu_terms - 1)


def _product_mlp(layout: Layout, l: int, relu_terms: int, bound: float, dtype) -> ReLUMLP:
    """``s_l ~ g_l * v_l = (q(g + v) - q(g - v)) / 4`` with ``q`` the ReLU-sum square
    (:func:`square_knots`): ``4 relu_terms`` ReLUs per product."""
    h, coefs = square_knots(relu_terms, bound)
    neurons = []
    for k in range(layout.width):
        g, v, s = layout[("g", l)][k], layout[("v", l)][k], layout[("s", l)][k]
        for eps in (1.0, -1.0):  # t = g + eps v
            for direction in (1.0, -1.0):  # ReLU(t - kh) and ReLU(-t - kh)
                for j, c in enumerate(coefs):
                    neurons.append(([(g, direction), (v, direction * eps)], -j * h, [(s, eps * c / 4.0)]))
    return _mlp(layout, neurons, dtype)


def _update_layer(layout: Layout, eta: float, dtype) -> ReLUAttention:
    """``W_l[a, :] <- W_l[a, :] - eta (1/n) sum_j s_{l,j}[a] h_{l-1,j}`` for every layer and row."""
    heads, one = [], layout["one"][0]
    for l in range(1, layout.depth + 1):
        out, inp = layout.shapes[l - 1]
        inputs = layout.act(l - 1)
        for a in range(out):
            for sign in (1.0, -1.0):
                heads.append(_Head([(0, one, 1.0)], [(0, layout.delta(l)[a], sign)],
                                   [(b, c, 1.0) for b, c in enumerate(inputs)],
                                   [(layout.w(l, a, b), b, -sign * eta) for b in range(inp)]))
    return _attention(layout, heads, dtype)


def _project_mlp(layout: Layout, radius: float, dtype) -> ReLUMLP:
    """Clip every parameter to ``[-radius, radius]`` (omitted for ``radius = inf``) and zero the
    scratch coordinates: ``c - ReLU(c) + ReLU(-c) = 0``."""
    neurons = []
    if math.isfinite(radius):
        for c in layout.parameters:
            neurons += [([(c, 1.0)], -radius, [(c, -1.0)]), ([(c, -1.0)], -radius, [(c, 1.0)])]
    for c in layout.scratch:
        neurons += [([(c, 1.0)], 0.0, [(c, -1.0)]), ([(c, -1.0)], 0.0, [(c, 1.0)])]
    return _mlp(layout, neurons, dtype)


# ------------------------------------------------------------------------------------------ model


@dataclass
class GDTrace:
    """What :meth:`GDTransformer.trace` reads off the residual stream.

    ``predictions [B, L + 1, m]``: ``f(w_t, x_q)`` at the ``m`` queries for ``t = 0..L`` (from the
    forward layers of step ``t + 1``, the last from the final forward pass). ``iterates``: ``L + 1``
    lists of ``N`` tensors ``[B, out, in]``, the parameter block of the first query token after each
    step (``iterates[0]`` is ``w_0``). ``stream``: the final residual stream ``[B, n + m, D]``.
    """

    predictions: Tensor
    iterates: list[list[Tensor]]
    stream: Tensor = field(repr=False)


class GDTransformer(nn.Module):
    """The hand-set transformer (module docstring); build it with :func:`build_gd_transformer`.

    ``forward(xs [B, n, d], ys [B, n], x_query [B, d] or [B, m, d])`` -> the prediction ``[B]``
    (``[B, m]``) at the queries after ``L`` gradient steps on the ``n`` examples.
    """

    def __init__(self, layout: Layout, read_in: nn.Linear, layers: list[nn.Module], roles: list[str],
                 read_out: nn.Linear, config: dict) -> None:
        super().__init__()
        self.layout, self.read_in, self.read_out = layout, read_in, read_out
        self.layers = nn.ModuleList(layers)
        self.roles = roles
        self.config = config

    def prompt(self, xs: Tensor, ys: Tensor, x_query: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder tokens ``[B, n + m, d + 2]`` (``[x_j, y_j, 0]``, then ``[x_q, 0, 1]``) and the key
        mask ``[B, n + m]`` (the examples)."""
        d = self.layout.n_dims
        if xs.dim() != 3 or xs.shape[-1] != d:
            raise ShapeError(f"GDTransformer: xs must have shape [B, n, {d}], got {list(xs.shape)} (n_dims={d})")
        if ys.shape != xs.shape[:2]:
            raise ShapeError(f"GDTransformer: ys must have shape {list(xs.shape[:2])}, got {list(ys.shape)}")
        if x_query.shape[0] != xs.shape[0] or x_query.shape[-1] != d or x_query.dim() not in (2, 3):
            raise ShapeError(f"GDTransformer: x_query must have shape [{xs.shape[0]}, {d}] or "
                             f"[{xs.shape[0]}, m, {d}], got {list(x_query.shape)}")
        xq = x_query[:, None] if x_query.dim() == 2 else x_query
        b, n, m = xs.shape[0], xs.shape[1], xq.shape[1]
        examples = torch.cat([xs, ys[..., None], xs.new_zeros(b, n, 1)], -1)
        queries = torch.cat([xq, xq.new_zeros(b, m, 1), xq.new_ones(b, m, 1)], -1)
        tokens = torch.cat([examples, queries], 1).to(self.read_in.weight.dtype)
        return tokens, tokens[..., -1] == 0

    def run(self, tokens: Tensor, keys: Tensor, record: bool = False):
        """The residual stream after every layer; with ``record``, also the per-step predictions at
        the non-key tokens and the parameter blocks (see :class:`GDTrace`)."""
        h = self.read_in(tokens)
        lay = self.layout
        queries = (~keys).nonzero()
        first = int(queries[0, 1]) if len(queries) else 0
        predictions, iterates = [], []

        def weights(stream: Tensor) -> list[Tensor]:
            return [stream[:, first, lay[("W", l)]].reshape(-1, *lay.shapes[l - 1]) for l in range(1, lay.depth + 1)]

        if record:
            iterates.append(weights(h))
        for layer, role in zip(self.layers, self.roles):
            h = layer(h, keys)
            if record and role == f"forward:{lay.depth}":
                predictions.append(h[..., lay["p"][0]])
            if record and role == "project":
                iterates.append(weights(h))
        if not record:
            return h
        return h, predictions, iterates

    def forward(self, xs: Tensor, ys: Tensor, x_query: Tensor) -> Tensor:
        tokens, keys = self.prompt(xs, ys, x_query)
        out = self.read_out(self.run(tokens, keys))[..., 0][:, xs.shape[1]:]
        return out[:, 0] if x_query.dim() == 2 else out

    def trace(self, xs: Tensor, ys: Tensor, x_query: Tensor) -> GDTrace:
        """Prediction and parameters after every GD step (:class:`GDTrace`)."""
        tokens, keys = self.prompt(xs, ys, x_query)
        h, predictions, iterates = self.run(tokens, keys, record=True)
        n = xs.shape[1]
        return GDTrace(torch.stack(predictions, 1)[:, :, n:], iterates, h)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, positions: list[int] | None = None) -> Tensor:
        """The zoo's convention (``model.ICLTransformer``): at position ``i`` the prediction for
        ``x_i`` from the examples ``j < i`` (0 at ``i = 0``); ``[B, len(positions)]``."""
        positions = list(range(xs.shape[1])) if positions is None else positions
        out = [torch.zeros(xs.shape[0], dtype=self.read_in.weight.dtype) if i == 0
               else self(xs[:, :i], ys[:, :i], xs[:, i]) for i in positions]
        return torch.stack(out, 1)

    def describe(self) -> dict:
        """Sizes: layers (by kind), heads, MLP neurons, residual width, parameters (stored dense) and
        how many of them are non-zero."""
        kinds: dict[str, int] = {}
        for layer in self.layers:
            kinds[type(layer).__name__] = kinds.get(type(layer).__name__, 0) + 1
        steps = self.config["steps"]
        per_step = (len(self.layers) - self.layout.depth) // steps
        return {"layers": len(self.layers), "layers_per_step": per_step, "final_forward_layers": self.layout.depth,
                "paper_layers_per_step": 2 * self.layout.depth + 4, "by_kind": kinds,
                "heads": sum(layer.query.shape[0] for layer in self.layers if isinstance(layer, ReLUAttention)),
                "mlp_neurons": sum(layer.w1.shape[0] for layer in self.layers if isinstance(layer, ReLUMLP)),
                "residual_width": self.layout.dim, "parameters": sum(p.numel() for p in self.parameters()),
                "nonzero_parameters": sum(int(p.count_nonzero()) for p in self.parameters())}


def _check(name: str, value, low, what: str, integer: bool = True, strict: bool = False) -> None:
    bad_type = (not isinstance(value, int) or isinstance(value, bool)) if integer else (
        isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value))
    if bad_type or (value <= low if strict else value < low):
        relation = f"> {low}" if strict else f">= {low}"
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {relation} ({what}), got {value!r}")


def he_init(n_dims: int, depth: int, width: int, seed: int = 0, dtype=torch.float64) -> list[Tensor]:
    """``w_0``: He-initialized ``[out, in]`` matrices ``W_l ~ N(0, 2 / fan_in)``, drawn as the
    task's networks and direct training draw theirs (``data_modules.icl_tasks.init_relu_net``)."""
    from data_modules.icl_tasks import init_relu_net

    return [w[0] for w in init_relu_net(1, n_dims, width, depth, torch.Generator().manual_seed(seed), dtype)]


def build_gd_transformer(depth: int, steps: int, width: int, eta: float, relu_terms: int = 256, *,
                         n_dims: int = 5, product: str = "relu_sum", ramp_width: float = 1e-6,
                         bound: float = 32.0, radius: float = math.inf, init: list[Tensor] | None = None,
                         seed: int = 0, dtype: torch.dtype = torch.float64) -> GDTransformer:
    """The transformer that runs ``steps`` (L) gradient steps of size ``eta`` on the ``depth``-layer
    (N), ``width``-wide bias-free ReLU network ``f(w, x) = W_N ReLU(... ReLU(W_1 x))`` over the
    prompt's examples, from ``init`` (default :func:`he_init` with ``seed``), on
    ``L(w) = (1/2n) sum_i (f(w, x_i) - y_i)^2``, and predicts ``f(w_L, x_q)`` (module docstring).

    Args:
        relu_terms: pieces of the ReLU-sum squares in the products (``product="relu_sum"``).
        n_dims: d, the input dimension.
        product: ``relu_sum``, ``gate`` or ``ewml`` (module docstring).
        ramp_width: delta of the ramp standing for the ReLU's derivative. The gates are rounded to
            about ``eps |z| / delta`` (1e-10 in float64 at the default); in float32 use ``>= 1e-2``.
        bound: ``|v| <= bound`` is where the products are accurate (``relu_sum``) or exact (``gate``).
        radius: the parameters are clipped to ``[-radius, radius]`` after each step (the paper's
            projection); ``inf``: plain GD.

    Raises ``ConfigError`` (one line naming the value) for ``depth < 1``, ``steps < 1``,
    ``width < 1`` and the like.
    """
    _check("depth", depth, 1, "N, the number of layers of the network trained in context")
    _check("steps", steps, 1, "L, the number of gradient steps")
    _check("width", width, 1, "the hidden width of the network trained in context")
    _check("n_dims", n_dims, 1, "the input dimension")
    _check("relu_terms", relu_terms, 1, "pieces of each ReLU-sum square")
    _check("eta", eta, 0, "the step size", integer=False, strict=True)
    _check("ramp_width", ramp_width, 0, "the width of the ramp standing for ReLU'", integer=False, strict=True)
    _check("bound", bound, 0, "the range of the products", integer=False, strict=True)
    _check("radius", radius, 0, "the projection radius", integer=False, strict=True)
    if product not in PRODUCTS:
        raise ConfigError(f"product must be one of {PRODUCTS}, got {product!r}")
    lay = Layout(n_dims, depth, width, product)
    init = he_init(n_dims, depth, width, seed, dtype) if init is None else init
    if len(init) != depth or any(tuple(w.shape) != s for w, s in zip(init, lay.shapes)):
        raise ConfigError(f"init must be {depth} matrices of shapes {lay.shapes}, got "
                          f"{[tuple(w.shape) for w in init]}")

    read_in = nn.Linear(n_dims + 2, lay.dim, dtype=dtype)
    read_out = nn.Linear(lay.dim, 1, bias=False, dtype=dtype)
    with torch.no_grad():
        read_in.weight.zero_()
        read_in.bias.zero_()
        for i, c in enumerate(lay["x"]):
            read_in.weight[c, i] = 1.0
        read_in.weight[lay["y"][0], n_dims] = 1.0
        read_in.weight[lay["flag"][0], n_dims + 1] = 1.0
        read_in.bias[lay["one"][0]] = 1.0
        for l, w in enumerate(init, 1):
            read_in.bias[lay[("W", l)]] = w.detach().to(dtype).reshape(-1)
        read_out.weight.zero_()
        read_out.weight[0, lay["p"][0]] = 1.0

    layers, roles = [], []

    def add(layer: nn.Module, role: str) -> None:
        layers.append(layer)
        roles.append(role)

    for _ in range(steps):
        for l in range(1, depth + 1):
            add(_forward_layer(lay, l, dtype), f"forward:{l}")
        if depth > 1:
            add(_gate_layer(lay, ramp_width, dtype), "gates")
        add(_loss_mlp(lay, dtype), "loss")
        for l in range(depth - 1, 0, -1):
            add(_backward_attention(lay, l, product, bound, dtype), f"backward:{l}")
            if product == "relu_sum":
                add(_product_mlp(lay, l, relu_terms, bound, dtype), f"product:{l}")
            elif product == "ewml":
                add(ElementwiseProduct(lay[("s", l)], lay[("g", l)], lay[("v", l)]), f"product:{l}")
        add(_update_layer(lay, eta, dtype), "update")
        add(_project_mlp(lay, radius, dtype), "project")
    for l in range(1, depth + 1):
        add(_forward_layer(lay, l, dtype), f"forward:{l}")
    config = {"depth": depth, "steps": steps, "width": width, "eta": eta, "relu_terms": relu_terms,
              "n_dims": n_dims, "product": product, "ramp_width": ramp_width, "bound": bound, "radius": radius}
    model = GDTransformer(lay, read_in, layers, roles, read_out, config)
    return model.requires_grad_(False)


# -------------------------------------------------------------------------------------- reference


def interp_square(t: Tensor, relu_terms: int, bound: float) -> Tensor:
    """The piecewise-linear interpolant of ``t^2`` at the knots ``0, h, ..., relu_terms h``
    (``h = (bound + 1) / relu_terms``), even, extended linearly past the last knot: the function the
    ReLU sums of :func:`square_knots` compute, written here as an interpolation."""
    h = (bound + 1.0) / relu_terms
    a = t.abs()
    k = torch.clamp(torch.floor(a / h), max=relu_terms - 1)
    return (k * h) ** 2 + (2 * k + 1) * h * (a - k * h)


def _product(g: Tensor, v: Tensor, product: str, relu_terms: int, bound: float) -> Tensor:
    if product == "exact" or product == "ewml":
        return g * v
    if product == "relu_sum":
        return (interp_square(g + v, relu_terms, bound) - interp_square(g - v, relu_terms, bound)) / 4
    if product == "gate":
        return torch.relu(v + bound * (g - 1)) - torch.relu(-v + bound * (g - 1))
    raise ConfigError(f"product must be 'exact' or one of {PRODUCTS}, got {product!r}")


def relu_derivative(z: Tensor, ramp_width: float = 0.0) -> Tensor:
    """``1[z > 0]`` (``ramp_width = 0``) or the ramp ``clamp(z / delta, 0, 1)``."""
    return (z > 0).to(z.dtype) if ramp_width == 0 else torch.clamp(z / ramp_width, 0.0, 1.0)


def reference_gd(xs: Tensor, ys: Tensor, x_query: Tensor, init: list[Tensor], eta: float, steps: int, *,
                 radius: float = math.inf, ramp_width: float = 0.0, product: str = "exact", relu_terms: int = 256,
                 bound: float = 32.0) -> tuple[list[list[Tensor]], Tensor]:
    """Slow, explicit gradient descent in fp64 with loops over prompts, steps, examples and layers:
    for each prompt, ``w <- clip(w - eta grad L(w), radius)`` with
    ``L(w) = (1/2n) sum_i (f(w, x_i) - y_i)^2``, ``f(w, x) = W_N ReLU(... ReLU(W_1 x))``, the
    gradient by hand-written back-propagation with ``ReLU'(z) = 1[z > 0]``.

    With ``ramp_width > 0`` / ``product != "exact"`` the same loops use the construction's
    approximations instead (the ramp for ``ReLU'``; ``relu_sum``, ``gate`` or ``ewml`` products for
    ``ReLU'(z) * v``), so that the construction can be checked to compute exactly those formulas.

    ``init``: ``N`` matrices ``[out, in]`` (shared by the prompts) or ``[B, out, in]``. Returns
    ``(iterates, predictions)``: ``iterates[t]`` the ``N`` matrices ``[B, out, in]`` after
    ``t`` steps (``t = 0..steps``), ``predictions [B, steps + 1, m]`` = ``f(w_t, x_q)``.
    """
    xs, ys = xs.double(), ys.double()
    xq = (x_query[:, None] if x_query.dim() == 2 else x_query).double()
    b_size, n, _ = xs.shape
    depth = len(init)
    per_prompt_iterates, per_prompt_predictions = [], []
    for b in range(b_size):
        w = [(m[b] if m.dim() == 3 else m).detach().double().clone() for m in init]
        history, preds = [[m.clone() for m in w]], []
        for t in range(steps + 1):
            preds.append(torch.stack([_net(w, xq[b, q]) for q in range(xq.shape[1])]))
            if t == steps:
                break
            grads = [torch.zeros_like(m) for m in w]
            for i in range(n):
                hs, zs = [xs[b, i]], []
                for l in range(depth):
                    z = w[l] @ hs[-1]
                    zs.append(z)
                    hs.append(torch.relu(z) if l < depth - 1 else z)
                s = hs[-1] - ys[b, i]  # dloss_i / dp, shape [1]
                for l in range(depth - 1, -1, -1):
                    grads[l] += torch.outer(s, hs[l]) / n
                    if l > 0:
                        v = w[l].T @ s
                        s = _product(relu_derivative(zs[l - 1], ramp_width), v, product, relu_terms, bound)
            w = [torch.clamp(m - eta * g, -radius, radius) for m, g in zip(w, grads)]
            history.append([m.clone() for m in w])
        per_prompt_iterates.append(history)
        per_prompt_predictions.append(torch.stack(preds))
    iterates = [[torch.stack([per_prompt_iterates[b][t][l] for b in range(b_size)]) for l in range(depth)]
                for t in range(steps + 1)]
    return iterates, torch.stack(per_prompt_predictions)


def _net(w: list[Tensor], x: Tensor) -> Tensor:
    h = x
    for l, m in enumerate(w):
        h = m @ h
        if l < len(w) - 1:
            h = torch.relu(h)
    return h[0]


def batched_gd(xs: Tensor, ys: Tensor, x_query: Tensor, init: list[Tensor], eta: float, steps: int, *,
               radius: float = math.inf, ramp_width: float = 0.0,
               with_preactivations: bool = False):
    """:func:`reference_gd` (exact products) vectorized over prompts and examples, for benchmarks.
    ``init`` matrices ``[out, in]`` (shared) or ``[B, out, in]``. With ``with_preactivations`` also
    returns the hidden pre-activations of every step, ``[steps, B, n, (N-1) width]``."""
    xs, ys = xs.double(), ys.double()
    xq = (x_query[:, None] if x_query.dim() == 2 else x_query).double()
    b_size, n, _ = xs.shape
    w = [(m.double().expand(b_size, *m.shape[-2:]) if m.dim() == 2 else m.double()).clone() for m in init]
    iterates, preds, pre = [[m.clone() for m in w]], [], []
    for t in range(steps + 1):
        preds.append(_batched_net(w, xq)[0])
        if t == steps:
            break
        out, hs, zs = _batched_net(w, xs)
        s = (out - ys)[..., None]  # [B, n, 1]
        grads = [None] * len(w)
        for l in range(len(w) - 1, -1, -1):
            grads[l] = s.transpose(1, 2) @ hs[l] / n
            if l > 0:
                s = relu_derivative(zs[l - 1], ramp_width) * (s @ w[l])
        if with_preactivations:
            pre.append(torch.cat(zs[:-1], -1) if len(zs) > 1 else xs.new_zeros(b_size, n, 0))
        w = [torch.clamp(m - eta * g, -radius, radius) for m, g in zip(w, grads)]
        iterates.append([m.clone() for m in w])
    result = (iterates, torch.stack(preds, 1))
    return (*result, torch.stack(pre)) if with_preactivations else result


def _batched_net(w: list[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    hs, zs = [x], []
    for l, m in enumerate(w):
        z = hs[-1] @ m.transpose(1, 2)
        zs.append(z)
        hs.append(torch.relu(z) if l < len(w) - 1 else z)
    return hs[-1][..., 0], hs, zs
