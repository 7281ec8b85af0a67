"""Gaussian diffusion: schedules, the forward process and its posterior, the training loss, DDPM and
DDIM samplers, and classifier-free guidance.

Timesteps are 0-based: index ``t = 0, ..., T - 1`` is step ``t + 1`` of Ho et al. (2020), so
``alpha_t = 1 - beta_t``, ``abar_t = prod_{s <= t} alpha_s`` and ``abar_{-1} = 1``. With ``T = num_steps``:

    linear:  beta_t = beta_start + (beta_end - beta_start) t / (T - 1)                           (1)
    cosine:  beta_t = min(1 - f(t + 1) / f(t), 0.999),  f(u) = cos^2((u / T + s) / (1 + s) pi / 2)  (2)

with ``s = 0.008``; (2) gives Nichol & Dhariwal's (2021, Eq. 17) ``abar_t = f(t + 1) / f(0)`` at
every step up to the first clipped beta (the last one for ``T >= 2``). The forward process and its
posterior (Ho et al., Eqs. 4, 6, 7):

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)                                             (3)
    q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, beta~_t I),                                      (4)
    c0_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t),   ct_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t),
    beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)

``beta~_0 = 0`` (x_0 is known); the clipped log variance uses ``beta~_1`` at ``t = 0`` (``beta_0``
when ``T = 1``). With ``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)`` and ``x_t = a x_0 + b eps``, a
model predicts ``eps`` or ``v`` (Salimans & Ho, 2022), and either gives the other two:

    epsilon:  x_0 = (x_t - b eps) / a                                                              (5)
    v = a eps - b x_0:  x_0 = a x_t - b v,   eps = b x_t + a v                                     (6)

Training minimises the mean squared error to the target (Ho et al.'s L_simple, Eq. 14), with
``t ~ U{0, ..., T - 1}`` and ``eps ~ N(0, I)``:

    L = mean_elements (model(x_t, t) - target)^2                                                   (7)

Samplers start from ``x ~ N(0, I)`` at ``t = T - 1`` and plug the model's ``x0^`` (optionally
clipped to [-1, 1]) and ``eps^`` into the update. DDPM (Ho et al., Algorithm 2, ``sigma_t^2 = beta~_t``):

    x_{t-1} = c0_t x0^ + ct_t x_t + sqrt(beta~_t) z,   t = T - 1, ..., 0                           (8)

DDIM (Song et al., 2021, Eq. 12 with sigma of their Eq. 16) over respaced steps ``tau_1 < ... < tau_S``,
from ``t = tau_i`` to ``p = tau_{i-1}`` (``abar_p = 1`` after ``tau_1``):

    x_p = sqrt(abar_p) x0^ + sqrt(1 - abar_p - sigma^2) eps^ + sigma z,                            (9)
    sigma = eta sqrt((1 - abar_p) / (1 - abar_t)) sqrt(1 - abar_t / abar_p)

The respaced steps are ``round(linspace(0, T - 1, S))``, so both ends are included (``S = 1`` takes
``T - 1`` alone). With ``S = T`` and ``eta = 1``, ``sigma^2 = beta~_t`` and (9) is (8): both draw
``z`` at every step but the last, so the same generator gives the same samples. After clipping,
``eps^`` is recomputed from ``x0^`` by (3). Classifier-free guidance (Ho & Salimans, 2022) with
weight ``w`` on every channel:

    out = out(x, t, null) + w (out(x, t, y) - out(x, t, null))                                    (10)

The schedule is computed in float64 and kept in float64 on whatever device or dtype the module is
moved to (a bfloat16 ``abar_t`` rounds ``1 - abar_t`` to 0 at small t); coefficients are cast to the
data's dtype on use. The tables are non-persistent buffers, rebuilt from the arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from zoo.core.errors import ConfigError, ShapeError

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("epsilon", "v")
Model = Callable[..., Tensor]


def linear_betas(num_steps: int, beta_start: float, beta_end: float) -> Tensor:
    """Eq. (1), float64."""
    return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Eq. (2), float64."""
    u = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((u / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _randn(shape: Sequence[int], device: torch.device, dtype: torch.dtype,
           generator: torch.Generator | None) -> Tensor:
    """Standard normal noise drawn on the generator's device, so a seed gives the same numbers anywhere."""
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)


class GaussianDiffusion(nn.Module):
    """The diffusion process of the module docstring: ``num_steps`` steps, a ``linear`` or ``cosine``
    schedule, and a model that predicts ``epsilon`` or ``v``. Models are called as
    ``model(x_t, t, **model_kwargs)`` with ``t`` a long tensor ``[B]`` and return a tensor shaped like ``x_t``."""

    def __init__(self, num_steps: int = 1000, schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, prediction: str = "epsilon") -> None:
        super().__init__()
        if num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ConfigError(f"betas must satisfy 0 < beta_start < beta_end < 1, got beta_start={beta_start}, "
                              f"beta_end={beta_end}")
        self.num_steps, self.schedule, self.prediction = num_steps, schedule, prediction
        betas = linear_betas(num_steps, beta_start, beta_end) if schedule == "linear" else cosine_betas(num_steps)
        # 1 - abar_t as -expm1(sum log(1 - beta)): exact to rounding at small t, where 1 - abar_t ~ beta_0
        log_abar = torch.cumsum(torch.log1p(-betas), dim=0)
        abar, one_minus_abar = log_abar.exp(), -torch.expm1(log_abar)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        one_minus_abar_prev = torch.cat([abar.new_zeros(1), one_minus_abar[:-1]])
        variance = betas * one_minus_abar_prev / one_minus_abar
        clipped = variance.clone()
        clipped[0] = variance[1] if num_steps > 1 else betas[0]
        self._tables = {"betas": betas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
                        "one_minus_alphas_cumprod": one_minus_abar, "posterior_variance": variance,
                        "posterior_log_variance_clipped": clipped.log()}
        for name, table in self._tables.items():
            self.register_buffer(name, table, persistent=False)

    def _apply(self, fn, recurse=True):
        # follow the device of a move, never its dtype (module docstring)
        super()._apply(fn, recurse)
        device = self.betas.device
        for name, table in self._tables.items():
            self._buffers[name] = table.to(device)
        return self

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, schedule={self.schedule!r}, prediction={self.prediction!r}"

    # -- per-sample timesteps --------------------------------------------------------------------
    def _timesteps(self, t: int | Tensor, x: Tensor, check_range: bool = True) -> Tensor:
        """``t`` as a long tensor ``[B]`` on ``x``'s device, checked against ``x`` and (unless
        ``check_range`` is false: timesteps drawn here, in range by construction) ``[0, T)``; the
        range check reads the values, a host sync on an accelerator."""
        if x.dim() == 0:
            raise ShapeError("x must have a batch dimension, got a 0-d tensor")
        t = torch.as_tensor(t, device=x.device)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ConfigError(f"timesteps must be integers, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(len(x))
        if t.shape != (len(x),):
            raise ShapeError(f"timesteps must have shape [{len(x)}] (one per sample), got {list(t.shape)}")
        if check_range and len(t) and (t.min() < 0 or t.max() >= self.num_steps):
            raise ConfigError(f"timesteps must be in [0, {self.num_steps - 1}], got values in "
                              f"[{int(t.min())}, {int(t.max())}]")
        return t.long()

    def _at(self, table: Tensor, t: Tensor, x: Tensor) -> Tensor:
        """``table[t]`` in ``x``'s dtype, shaped ``[B, 1, ..., 1]`` to broadcast against ``x``."""
        values = table[t.to(table.device)].to(device=x.device, dtype=x.dtype)
        return values.view(-1, *[1] * (x.dim() - 1))

    def _ab(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``a = sqrt(abar_t)``, ``b = sqrt(1 - abar_t)``, taken in float64 before the cast."""
        return self._at(self.alphas_cumprod.sqrt(), t, x), self._at(self.one_minus_alphas_cumprod.sqrt(), t, x)

    @staticmethod
    def _check_like(name: str, y: Tensor, x: Tensor) -> None:
        if y.shape != x.shape:
            raise ShapeError(f"{name} must have the shape of x, {list(x.shape)}, got {list(y.shape)}")

    # -- forward process, posterior, conversions -------------------------------------------------
    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """A draw of ``x_t ~ q(x_t | x_0)``, Eq. (3): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
        t = self._timesteps(t, x0)
        if noise is None:
            noise = _randn(x0.shape, x0.device, x0.dtype, generator)
        self._check_like("noise", noise, x0)
        a, b = self._ab(t, x0)
        return a * x0 + b * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of ``q(x_{t-1} | x_t, x_0)``, Eq. (4); the latter
        two broadcast as ``[B, 1, ..., 1]``."""
        self._check_like("xt", xt, x0)
        t = self._timesteps(t, x0)
        c0 = self._at(self.alphas_cumprod_prev.sqrt() * self.betas / self.one_minus_alphas_cumprod, t, x0)
        ct = self._at((1 - self.betas).sqrt() * self.posterior_variance / self.betas, t, x0)
        return (c0 * x0 + ct * xt, self._at(self.posterior_variance, t, x0),
                self._at(self.posterior_log_variance_clipped, t, x0))

    def target(self, x0: Tensor, t: int | Tensor, noise: Tensor) -> Tensor:
        """What the model regresses on: ``noise``, or ``v = a noise - b x0`` (Eq. 6)."""
        self._check_like("noise", noise, x0)
        t = self._timesteps(t, x0)
        if self.prediction == "epsilon":
            return noise
        a, b = self._ab(t, x0)
        return a * noise - b * x0

    def _x0(self, xt: Tensor, out: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        return (xt - b * out) / a if self.prediction == "epsilon" else a * xt - b * out

    def _eps(self, xt: Tensor, out: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
        return out if self.prediction == "epsilon" else b * xt + a * out

    def predict_x0(self, xt: Tensor, t: int | Tensor, model_output: Tensor) -> Tensor:
        """``x_0`` implied by the model's output at ``(x_t, t)``, Eq. (5) or (6)."""
        self._check_like("model_output", model_output, xt)
        return self._x0(xt, model_output, *self._ab(self._timesteps(t, xt), xt))

    def predict_eps(self, xt: Tensor, t: int | Tensor, model_output: Tensor) -> Tensor:
        """``eps`` implied by the model's output at ``(x_t, t)``, Eq. (6) (the output itself for epsilon)."""
        self._check_like("model_output", model_output, xt)
        return self._eps(xt, model_output, *self._ab(self._timesteps(t, xt), xt))

    # -- training --------------------------------------------------------------------------------
    def training_loss(self, model: Model, x0: Tensor, t: int | Tensor | None = None, noise: Tensor | None = None,
                      generator: torch.Generator | None = None, reduction: str = "mean", **model_kwargs) -> Tensor:
        """Eq. (7). ``t`` and ``noise`` are drawn (in that order, from ``generator``) when not given.
        ``reduction="mean"`` gives a scalar, ``"none"`` the per-sample losses ``[B]``."""
        if reduction not in ("mean", "none"):
            raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        drawn = t is None
        if drawn:
            if x0.dim() == 0:
                raise ShapeError("x0 must have a batch dimension, got a 0-d tensor")
            device = generator.device if generator is not None else x0.device
            t = torch.randint(0, self.num_steps, (len(x0),), generator=generator, device=device).to(x0.device)
        t = self._timesteps(t, x0, check_range=not drawn)  # checked once; drawn ones need no check (no sync)
        if noise is None:
            noise = _randn(x0.shape, x0.device, x0.dtype, generator)
        self._check_like("noise", noise, x0)
        a, b = self._ab(t, x0)
        out = model(a * x0 + b * noise, t, **model_kwargs)  # q_sample, Eq. (3)
        self._check_like("the model output", out, x0)
        target = noise if self.prediction == "epsilon" else a * noise - b * x0  # Eq. (6)
        losses = ((out - target) ** 2).reshape(len(x0), -1).mean(dim=1)
        return losses.mean() if reduction == "mean" else losses

    # -- sampling --------------------------------------------------------------------------------
    def ddim_timesteps(self, steps: int) -> list[int]:
        """The respaced steps ``tau_1 < ... < tau_S``, ``round(linspace(0, T - 1, S))`` (``[T - 1]`` for S = 1)."""
        if not 1 <= steps <= self.num_steps:
            raise ConfigError(f"DDIM steps must be in [1, {self.num_steps}] (num_steps), got {steps}")
        if steps == 1:
            return [self.num_steps - 1]
        return torch.linspace(0, self.num_steps - 1, steps, dtype=torch.float64).round().long().tolist()

    def _start(self, shape: Sequence[int], noise: Tensor | None,
               generator: torch.Generator | None) -> Tensor:
        """``x`` at ``t = T - 1``: ``noise``, or a draw on the schedule's device in the default dtype."""
        if noise is None:
            return _randn(shape, self.betas.device, torch.get_default_dtype(), generator)
        if tuple(noise.shape) != tuple(shape):
            raise ShapeError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
        return noise

    def _host_tables(self, *names: str) -> list[list[float]]:
        """Schedule tables as Python floats, read from the float64 CPU originals the buffers were
        made from: no copy back from (and no wait for) the device the module lives on."""
        return [self._tables[name].tolist() for name in names]

    @staticmethod
    def _step_timesteps(seq: Sequence[int], x: Tensor) -> Tensor:
        """``[S, B]`` long: row ``i`` is the timestep ``seq[i]`` for each of ``x``'s samples, built
        once per sampling call (one copy to the device) so that no step builds a tensor."""
        return torch.tensor(seq, dtype=torch.long).to(x.device)[:, None].expand(len(seq), len(x)).contiguous()

    def _predict(self, model: Model, x: Tensor, t: Tensor, abar: float, one_minus_abar: float, clip_x0: bool,
                 model_kwargs: dict) -> tuple[Tensor, Tensor]:
        """``(x0^, eps^)`` at one sampling step (``t``: the step's ``[B]`` timesteps), with ``eps^``
        recomputed from a clipped ``x0^``. Only Python floats and device tensors: no host sync."""
        out = model(x, t, **model_kwargs)
        self._check_like("the model output", out, x)
        a, b = math.sqrt(abar), math.sqrt(one_minus_abar)
        x0 = self._x0(x, out, a, b)
        if not clip_x0:
            return x0, self._eps(x, out, a, b)
        x0 = x0.clamp(-1, 1)
        return x0, (x - a * x0) / b

    @torch.no_grad()
    def ddpm_sample(self, model: Model, shape: Sequence[int], noise: Tensor | None = None,
                    generator: torch.Generator | None = None, progress: bool = False, clip_x0: bool = False,
                    **model_kwargs) -> Tensor:
        """Ancestral sampling over all ``num_steps`` steps, Eq. (8). ``noise`` is the starting ``x``
        (it sets the device and dtype); the per-step noise comes from ``generator``."""
        x = self._start(shape, noise, generator)
        names = ("betas", "alphas_cumprod", "one_minus_alphas_cumprod", "alphas_cumprod_prev", "posterior_variance")
        betas, abar, one_minus_abar, abar_prev, variance = self._host_tables(*names)
        seq = list(range(self.num_steps - 1, -1, -1))
        steps_t = self._step_timesteps(seq, x)
        for i, t in enumerate(tqdm(seq, desc="DDPM", disable=not progress)):
            x0, _ = self._predict(model, x, steps_t[i], abar[t], one_minus_abar[t], clip_x0, model_kwargs)
            c0 = math.sqrt(abar_prev[t]) * betas[t] / one_minus_abar[t]
            ct = math.sqrt(1 - betas[t]) * variance[t] / betas[t]
            x = c0 * x0 + ct * x
            if t > 0:
                x = x + math.sqrt(variance[t]) * _randn(x.shape, x.device, x.dtype, generator)
        return x

    @torch.no_grad()
    def ddim_sample(self, model: Model, shape: Sequence[int], steps: int, eta: float = 0.0,
                    noise: Tensor | None = None, generator: torch.Generator | None = None, progress: bool = False,
                    clip_x0: bool = False, **model_kwargs) -> Tensor:
        """DDIM over ``steps`` respaced steps, Eq. (9): deterministic for ``eta = 0``, DDPM's
        variance for ``eta = 1``. For ``eta > 1`` the ``eps^`` term is dropped where ``sigma^2`` exceeds
        ``1 - abar_p``."""
        if not eta >= 0:
            raise ConfigError(f"eta must be >= 0, got {eta}")
        taus = self.ddim_timesteps(steps)
        x = self._start(shape, noise, generator)
        abar, one_minus_abar = self._host_tables("alphas_cumprod", "one_minus_alphas_cumprod")
        log_abar = self._tables["alphas_cumprod"].log().tolist()
        pairs = list(zip(taus[::-1], [*taus[-2::-1], None]))
        steps_t = self._step_timesteps([t for t, _ in pairs], x)
        for i, (t, p) in enumerate(tqdm(pairs, desc="DDIM", disable=not progress)):
            abar_p, one_minus_abar_p, log_abar_p = ((1.0, 0.0, 0.0) if p is None
                                                    else (abar[p], one_minus_abar[p], log_abar[p]))
            x0, eps = self._predict(model, x, steps_t[i], abar[t], one_minus_abar[t], clip_x0, model_kwargs)
            # 1 - abar_t / abar_p as -expm1 of the log ratio: no cancellation when the two are close
            sigma = eta * math.sqrt(one_minus_abar_p / one_minus_abar[t] * -math.expm1(log_abar[t] - log_abar_p))
            x = math.sqrt(abar_p) * x0 + math.sqrt(max(one_minus_abar_p - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * _randn(x.shape, x.device, x.dtype, generator)
        return x


def guided(model: Model, scale: float, null_label: int) -> Model:
    """Classifier-free guidance, Eq. (10), as a model ``f(x, t, y, **kwargs)``: the conditional and
    unconditional outputs come from one call on the doubled batch ``[x; x]`` with labels ``[y; null]``
    (other keyword arguments are passed unchanged). ``scale = 1`` is the conditional model itself,
    called on the batch alone; ``scale = 0`` the unconditional one."""
    if not scale >= 0:
        raise ConfigError(f"guidance scale must be >= 0, got {scale}")

    def guided_model(x: Tensor, t: Tensor, y: Tensor, **kwargs) -> Tensor:
        if scale == 1:
            return model(x, t, y=y, **kwargs)
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]), **kwargs)
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided_model
