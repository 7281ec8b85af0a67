"""Conditional score estimation with a closed-form truth, for the conditional-DiT rate checks
(Hu et al., "On Statistical Rates of Conditional Diffusion Transformers: Approximation,
Estimation and Minimax Optimality", ICLR 2025). Plain torch, no Lightning.

Data (``ConditionalGaussianData``). A condition ``y ~ U[0, 1]`` and, given ``y``,

    x | y ~ N(mu(y), sigma0^2 I_dx),   mu_j(y) = A sum_{k=1}^K c_k sin(pi k y + phi_jk),          (1)
    c_k = k^{-s} / sqrt(sum_{l<=K} l^{-2s}),

``j = 1..dx``, phases ``phi_jk ~ U[0, 2 pi)`` fixed by ``function_seed`` (the function does not
change with the seed of the sample). ``s`` (``smoothness``) sets the smoothness of the condition's
effect: a Fourier series with coefficients ``k^{-s}`` is Hoelder(-Zygmund) of order ``beta = s - 1``
in ``y`` (for ``K -> inf``; the truncation at ``K`` makes it analytic below the scale ``1 / K``),
and ``p(x | y)`` inherits that order in ``y``; it is analytic in ``x``. ``sum_k c_k^2 = 1``, so every
``s`` has the same energy ``E_y |mu_j(y)|^2 ~ A^2 / 2`` and only the roughness changes.

Forward process: that of ``zoo.dit.diffusion`` (``x_t = a x_0 + b eps``, ``a = sqrt(abar_t)``,
``b = sqrt(1 - abar_t)``). Given ``y`` the noised point is Gaussian, so the conditional score is
closed form:

    x_t | y ~ N(a mu(y), v_t I),   v_t = a^2 sigma0^2 + b^2,                                        (2)
    grad log p_t(x | y) = -(x - a mu(y)) / v_t,   eps*(x, y) = -b grad log p_t(x | y).

The marginal over ``y`` (the unconditional score CFG needs) is a mixture over a continuum,

    p_t(x) = int_0^1 N(x; a mu(y), v_t I) dy,
    grad log p_t(x) = int_0^1 w(y | x) grad log p_t(x | y) dy,  w(y | x) = p_t(x | y) / p_t(x),     (3)

computed by the midpoint rule with ``quadrature`` nodes in float64 (log-sum-exp weights; its
error is tested against adaptive quadrature, ``scipy.integrate.quad``, point by point).

Classifier-free guidance at scale ``w`` (Ho & Salimans 2022; ``zoo.dit.diffusion.guided``):

    eps_w = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null)),                                  (4)

whose target is the same combination of the truths, i.e. ``-b`` times the guided score
``(1 - w) grad log p_t(x) + w grad log p_t(x | y)`` (the score of ``p_t(x) p_t(y | x)^w`` up to
normalisation). The error reported at scale ``w`` (``guidance_errors``) is

    err(w) = E_{t, x_0, y, eps} mean_j (eps_w,hat - eps_w*)_j^2,                                    (5)

``t`` uniform on ``{0..T-1}``: the weighting of ``benchmarks/dit/latent_rates.py`` (in score units,
``E_t (1 - abar_t) |s_hat - s*|^2 / dx``). ``w = 0`` is the unconditional model's error, ``w = 1``
the conditional model's (no guidance).

Score network (``InContextScoreNet``): the in-context conditional DiT the theory studies, small.
Tokens: one per coordinate of ``x_t`` (the value times a learned vector, plus a learned position),
one for ``t`` and one for ``y`` (both through the DiT's ``TimestepEmbedder``, ``y`` scaled to
``1000 y`` so it uses the same frequencies as ``t``), then ``zoo.dit.model.Block`` s (pre-norm, no
adaLN), then LayerNorm + a zero-initialised Linear per ``x`` token. A learned null token replaces
the ``y`` token with probability ``cond_dropout`` in training (and wherever ``force_drop``), so one
network is both the conditional and the unconditional model. With ``skip`` (default) the output is

    eps_theta(x_t, t, y) = b_t x_t + DiT(x_t, t, y),                                                 (6)

``b_t x_t`` being the true noise for data of zero mean and unit variance (the generic
preconditioning of EDM, as in ``zoo.dit.latent``; it knows nothing of ``mu`` or ``sigma0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.core.errors import ConfigError, ShapeError
from zoo.dit.diffusion import GaussianDiffusion
from zoo.dit.model import Block, TimestepEmbedder


def _check_points(name: str, x: Tensor, dim: int) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ShapeError(f"{name} must have shape [B, {dim}] (x_dim = {dim}), got {list(x.shape)}")


def _check_conditions(y: Tensor, batch: int) -> None:
    if y.shape != (batch,):
        raise ShapeError(f"y must have shape [{batch}] (one condition per point), got {list(y.shape)}")


def _column(value: float | Tensor, batch: int, like: Tensor) -> Tensor:
    """A scalar or ``[B]`` schedule value as a ``[B, 1]`` column in ``like``'s dtype and device."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if value.dim() == 0:
        value = value.expand(batch)
    if value.shape != (batch,):
        raise ShapeError(f"schedule values must be a scalar or of shape [{batch}], got {list(value.shape)}")
    return value[:, None]


def guided(uncond: Tensor, cond: Tensor, scale: float) -> Tensor:
    """Eq. (4): ``uncond + scale (cond - uncond)`` (scores, noises: the map is linear)."""
    if uncond.shape != cond.shape:
        raise ShapeError(f"guided: uncond and cond must have the same shape, got {list(uncond.shape)} and "
                         f"{list(cond.shape)}")
    return uncond + scale * (cond - uncond)


class ConditionalGaussianData:
    """Eq. (1): ``y ~ U[0, 1]``, ``x | y ~ N(mu(y), sigma0^2 I)``, and the exact scores of its noised
    versions, Eqs. (2)-(3). All truths are computed in float64.

    Args:
        x_dim: dx, the dimension of ``x``.
        smoothness: ``s > 0``; the mean is Hoelder of order ``s - 1`` in ``y`` (module docstring).
        frequencies: K, the number of Fourier terms.
        amplitude: A.
        data_std: sigma0 > 0.
        function_seed: seed of the phases ``phi``.
        quadrature: nodes of the midpoint rule for the marginal score, Eq. (3).
    """

    def __init__(self, x_dim: int = 2, smoothness: float = 2.0, frequencies: int = 32, amplitude: float = 1.5,
                 data_std: float = 0.5, function_seed: int = 0, quadrature: int = 4096) -> None:
        if x_dim < 1:
            raise ConfigError(f"ConditionalGaussianData: x_dim must be >= 1, got {x_dim}")
        if not smoothness > 0:
            raise ConfigError(f"ConditionalGaussianData: smoothness must be > 0, got {smoothness}")
        if frequencies < 1:
            raise ConfigError(f"ConditionalGaussianData: frequencies must be >= 1, got {frequencies}")
        if not data_std > 0:
            raise ConfigError(f"ConditionalGaussianData: data_std must be > 0, got {data_std}")
        if quadrature < 2:
            raise ConfigError(f"ConditionalGaussianData: quadrature must be >= 2 nodes, got {quadrature}")
        self.x_dim, self.smoothness, self.frequencies = x_dim, smoothness, frequencies
        self.amplitude, self.data_std, self.quadrature = amplitude, data_std, quadrature
        k = torch.arange(1, frequencies + 1, dtype=torch.float64)
        c = k ** -smoothness
        self.coefficients = c / c.square().sum().sqrt()  # [K], sum c_k^2 = 1
        generator = torch.Generator().manual_seed(function_seed)
        self.phases = 2 * math.pi * torch.rand(x_dim, frequencies, generator=generator, dtype=torch.float64)
        self.nodes = (torch.arange(quadrature, dtype=torch.float64) + 0.5) / quadrature  # midpoints of [0, 1]
        self._node_means = self.mean(self.nodes)  # [G, dx]

    @property
    def holder_order(self) -> float:
        """``beta = s - 1``: the Hoelder order of ``mu`` (and of ``p(x | y)``) in ``y`` as ``K -> inf``."""
        return self.smoothness - 1

    def mean(self, y: Tensor) -> Tensor:
        """``mu(y)``, Eq. (1): ``[B] -> [B, dx]`` in float64."""
        if y.dim() != 1:
            raise ShapeError(f"y must have shape [B], got {list(y.shape)}")
        k = torch.arange(1, self.frequencies + 1, dtype=torch.float64, device=y.device)
        angles = math.pi * y.double()[:, None, None] * k + self.phases.to(y.device)  # [B, dx, K]
        return self.amplitude * (angles.sin() * self.coefficients.to(y.device)).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws ``(x [n, dx], y [n])`` in float32: ``y`` first, then the Gaussian noise of ``x``."""
        if n < 1:
            raise ConfigError(f"ConditionalGaussianData: n must be >= 1, got {n}")
        y = torch.rand(n, generator=generator, dtype=torch.float64)
        x = self.mean(y) + self.data_std * torch.randn(n, self.x_dim, generator=generator, dtype=torch.float64)
        return x.float(), y.float()

    def noised_variance(self, abar: float | Tensor) -> float | Tensor:
        """``v_t = abar sigma0^2 + (1 - abar)``, Eq. (2)."""
        return abar * self.data_std**2 + (1 - abar)

    def conditional_log_density(self, x_t: Tensor, y: Tensor, abar: float | Tensor) -> Tensor:
        """``log N(x_t; a mu(y), v_t I)``, Eq. (2): ``[B]`` in float64 (differentiable in ``x_t``)."""
        _check_points("x_t", x_t, self.x_dim)
        _check_conditions(y, len(x_t))
        x = x_t.double()
        abar_c = _column(abar, len(x), x)
        v = self.noised_variance(abar_c)
        diff = x - abar_c.sqrt() * self.mean(y)
        return -0.5 * (diff.square() / v).sum(1) - 0.5 * self.x_dim * torch.log(2 * math.pi * v[:, 0])

    def conditional_score(self, x_t: Tensor, y: Tensor, abar: float | Tensor) -> Tensor:
        """``grad log p_t(x_t | y) = -(x_t - a mu(y)) / v_t``, Eq. (2): ``[B, dx]`` float64."""
        _check_points("x_t", x_t, self.x_dim)
        _check_conditions(y, len(x_t))
        x = x_t.double()
        abar_c = _column(abar, len(x), x)
        return -(x - abar_c.sqrt() * self.mean(y)) / self.noised_variance(abar_c)

    def marginal_score(self, x_t: Tensor, abar: float | Tensor, chunk: int = 256) -> Tensor:
        """``grad log p_t(x_t)``, Eq. (3), by the midpoint rule over ``y``: ``[B, dx]`` float64."""
        _check_points("x_t", x_t, self.x_dim)
        x = x_t.double()
        abar_c = _column(abar, len(x), x)
        means = self._node_means.to(x.device)  # [G, dx]
        out = []
        for rows in torch.arange(len(x), device=x.device).split(chunk):
            a, v = abar_c[rows].sqrt(), self.noised_variance(abar_c[rows])  # [b, 1]
            diff = x[rows, None, :] - a[:, :, None] * means[None]  # [b, G, dx]
            weights = torch.softmax(-0.5 * diff.square().sum(-1) / v, dim=1)  # w(y | x) on the nodes
            out.append(-(weights[:, :, None] * diff).sum(1) / v)
        return torch.cat(out) if out else x.new_zeros(0, self.x_dim)

    def marginal_log_density(self, x_t: Tensor, abar: float | Tensor) -> Tensor:
        """``log p_t(x_t)`` by the same midpoint rule: ``[B]`` float64 (differentiable in ``x_t``)."""
        _check_points("x_t", x_t, self.x_dim)
        x = x_t.double()
        abar_c = _column(abar, len(x), x)
        v = self.noised_variance(abar_c)  # [B, 1]
        diff = x[:, None, :] - abar_c.sqrt()[:, :, None] * self._node_means.to(x.device)[None]
        log_n = -0.5 * diff.square().sum(-1) / v - 0.5 * self.x_dim * torch.log(2 * math.pi * v)
        return torch.logsumexp(log_n, dim=1) - math.log(self.quadrature)

    def true_eps(self, x_t: Tensor, y: Tensor | None, abar: float | Tensor) -> Tensor:
        """``eps* = -b grad log p_t``: conditional for a ``y``, unconditional (Eq. 3) for ``y = None``."""
        x = x_t.double()
        _check_points("x_t", x_t, self.x_dim)
        b = (1 - _column(abar, len(x), x)).sqrt()
        score = self.marginal_score(x_t, abar) if y is None else self.conditional_score(x_t, y, abar)
        return -b * score


class InContextScoreNet(nn.Module):
    """The in-context conditional DiT of the module docstring, Eq. (6): ``(x_t [B, dx], t [B], y [B])
    -> eps [B, dx]``.

    Args:
        x_dim: dx (one token per coordinate).
        hidden_size, depth, num_heads, mlp_ratio: the transformer (``zoo.dit.model.Block``).
        cond_dropout: probability in ``[0, 1)`` of training a condition as null (CFG).
        num_steps: the diffusion's ``T`` (for ``b_t`` of the skip, linear schedule of ``zoo.dit.diffusion``).
        skip: add ``b_t x_t`` (Eq. 6).
    """

    def __init__(self, x_dim: int = 2, hidden_size: int = 64, depth: int = 2, num_heads: int = 4,
                 mlp_ratio: float = 4.0, cond_dropout: float = 0.1, num_steps: int = 1000, skip: bool = True) -> None:
        super().__init__()
        if x_dim < 1 or depth < 1:
            raise ConfigError(f"InContextScoreNet: x_dim and depth must be >= 1, got x_dim={x_dim}, depth={depth}")
        if hidden_size % num_heads:
            raise ConfigError(f"InContextScoreNet: hidden_size={hidden_size} must be divisible by "
                              f"num_heads={num_heads}")
        if not 0 <= cond_dropout < 1:
            raise ConfigError(f"InContextScoreNet: cond_dropout must lie in [0, 1), got {cond_dropout}")
        self.x_dim, self.cond_dropout, self.skip = x_dim, cond_dropout, skip
        self.value = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.value_bias = nn.Parameter(torch.zeros(hidden_size))
        self.position = nn.Parameter(torch.randn(x_dim, hidden_size) * 0.02)
        self.t_embed = TimestepEmbedder(hidden_size)
        self.y_embed = TimestepEmbedder(hidden_size)
        self.null = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.out = nn.Linear(hidden_size, 1)
        self.diffusion = GaussianDiffusion(num_steps)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for embedder in (self.t_embed, self.y_embed):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor, force_drop: Tensor | None = None) -> Tensor:
        """Eq. (6). ``force_drop [B]`` (bool) replaces those conditions by the null token in any mode;
        in training each condition is also dropped with probability ``cond_dropout``."""
        _check_points("x", x, self.x_dim)
        b = len(x)
        if t.shape != (b,):
            raise ShapeError(f"t must have shape [{b}], got {list(t.shape)}")
        _check_conditions(y, b)
        if force_drop is not None and force_drop.shape != (b,):
            raise ShapeError(f"force_drop must have shape [{b}], got {list(force_drop.shape)}")
        drop = force_drop
        if self.training and self.cond_dropout > 0:
            random = torch.rand(b, device=x.device) < self.cond_dropout
            drop = random if drop is None else drop | random
        y_token = self.y_embed(y * 1000)
        if drop is not None:
            y_token = torch.where(drop[:, None], self.null.to(y_token.dtype), y_token)
        tokens = x[:, :, None] * self.value + self.value_bias + self.position  # [B, dx, D]
        h = torch.cat([tokens, self.t_embed(t)[:, None], y_token[:, None]], dim=1)
        for block in self.blocks:
            h = block(h)
        eps = self.out(self.norm(h[:, : self.x_dim]))[..., 0]
        if self.skip:
            b_t = self.diffusion.one_minus_alphas_cumprod.sqrt()[t.to(self.diffusion.betas.device)]
            eps = eps + b_t.to(device=x.device, dtype=x.dtype)[:, None] * x
        return eps

    def conditional_and_unconditional(self, x: Tensor, t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(eps(x, t, y), eps(x, t, null))`` from one call on the doubled batch."""
        b = len(x)
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), force_drop=drop)
        return out[:b], out[b:]


@torch.no_grad()
def guidance_errors(net: InContextScoreNet, data: ConditionalGaussianData, x_t: Tensor, t: Tensor, y: Tensor,
                    scales: Sequence[float], truth: tuple[Tensor, Tensor] | None = None) -> dict[float, float]:
    """Eq. (5) at each scale: mean over points and coordinates of ``(eps_w,hat - eps_w*)^2`` in float64.
    ``truth = (eps*(x, y), eps*(x))`` may be passed when computed once for many networks. The network
    is evaluated in eval mode (no random condition dropout)."""
    if truth is None:
        abar = net.diffusion.alphas_cumprod[t.to(net.diffusion.betas.device)].to(x_t.device)
        truth = (data.true_eps(x_t, y, abar), data.true_eps(x_t, None, abar))
    training = net.training
    net.eval()
    try:
        cond, uncond = (e.double() for e in net.conditional_and_unconditional(x_t, t, y))
    finally:
        net.train(training)
    true_cond, true_uncond = truth
    return {float(w): float((guided(uncond, cond, w) - guided(true_uncond, true_cond, w)).square().mean())
            for w in scales}
