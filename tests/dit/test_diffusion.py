"""zoo.dit.diffusion against closed forms in float64: the schedules against their formulas, the
posterior against Bayes' rule written out with scalar loops, and the samplers against data whose
optimal denoiser is known exactly (a single point, and a centred Gaussian)."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.dit.diffusion import GaussianDiffusion, guided

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def abar_loop(betas: list[float], t: int) -> float:
    """prod_{s <= t} (1 - beta_s), one factor at a time (1 for t = -1)."""
    value = 1.0
    for s in range(t + 1):
        value *= 1 - betas[s]
    return value


def dirac_oracle(diffusion: GaussianDiffusion, point: torch.Tensor):
    """The exact model for data that is always ``point``: eps = (x_t - a point) / b, v = a eps - b point."""
    abar = diffusion.alphas_cumprod

    def model(x, t, **_):
        a = abar[t].sqrt().view(-1, *[1] * (x.dim() - 1))
        b = (1 - abar[t]).sqrt().view(-1, *[1] * (x.dim() - 1))
        eps = (x - a * point) / b
        return eps if diffusion.prediction == "epsilon" else a * eps - b * point

    return model


def gaussian_oracle(diffusion: GaussianDiffusion, s: float):
    """The exact model for data N(0, s^2 I): x_t ~ N(0, (abar s^2 + 1 - abar) I), so
    E[eps | x_t] = b x_t / (abar s^2 + 1 - abar) and E[x_0 | x_t] = a s^2 x_t / (abar s^2 + 1 - abar)."""
    abar = diffusion.alphas_cumprod

    def model(x, t, **_):
        ab = abar[t].view(-1, *[1] * (x.dim() - 1))
        a, b, var = ab.sqrt(), (1 - ab).sqrt(), ab * s**2 + 1 - ab
        eps, x0 = b * x / var, a * s**2 * x / var
        return eps if diffusion.prediction == "epsilon" else a * eps - b * x0

    return model


class Wiggly:
    """A fixed nonlinear model that depends on t and on a label; counts its calls and batch sizes."""

    def __init__(self, num_steps: int = 1000) -> None:
        self.num_steps, self.batches = num_steps, []

    def __call__(self, x, t, y=None, **_):
        self.batches.append(len(x))
        shape = (-1, *[1] * (x.dim() - 1))
        out = torch.tanh(0.7 * x + (t.to(x.dtype) / self.num_steps).view(shape)) + 0.1 * x.flip(-1)
        if y is not None:
            # a different response per label and per channel, so guidance of each channel shows
            channel = torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, *[1] * (x.dim() - 2))
            out = out + torch.sin(y.to(x.dtype).view(shape) * (1 + channel))
        return out


# -- schedules ------------------------------------------------------------------------------------
def test_linear_betas_exact():
    d = GaussianDiffusion(num_steps=7, beta_start=1e-3, beta_end=0.3)
    expected = [1e-3 + (0.3 - 1e-3) * i / 6 for i in range(7)]
    assert d.betas.dtype == F64
    torch.testing.assert_close(d.betas, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-16)
    assert d.betas[0].item() == 1e-3 and d.betas[-1].item() == 0.3
    assert GaussianDiffusion(num_steps=1).betas.tolist() == [1e-4]


@pytest.mark.parametrize("num_steps", [1000, 50, 2])
def test_cosine_schedule_matches_its_formula(num_steps):
    d = GaussianDiffusion(num_steps=num_steps, schedule="cosine")
    f = [math.cos((u / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(num_steps + 1)]
    abar = d.alphas_cumprod.tolist()
    for t in range(num_steps - 1):  # abar_t = f(t + 1) / f(0) up to the clipped last beta
        assert abar[t] == pytest.approx(f[t + 1] / f[0], rel=1e-11)
    assert f[num_steps] < 1e-30 and d.betas[-1].item() == pytest.approx(0.999, rel=1e-15)
    assert abar[-1] == pytest.approx(abar[-2] * 0.001 if num_steps > 1 else 0.001, rel=1e-12)
    assert (d.betas <= 0.999).all() and (d.betas > 0).all()


def test_alphas_cumprod_is_the_running_product():
    d = GaussianDiffusion(num_steps=200)
    betas = d.betas.tolist()
    for t in (0, 1, 57, 199):
        assert d.alphas_cumprod[t].item() == pytest.approx(abar_loop(betas, t), rel=1e-12)
        assert d.alphas_cumprod_prev[t].item() == pytest.approx(abar_loop(betas, t - 1), rel=1e-12)


def test_schedule_stays_float64_under_dtype_casts_and_is_not_saved():
    d = GaussianDiffusion()
    reference = d.alphas_cumprod.clone()
    d = d.to(torch.bfloat16).float().half()
    for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance",
                 "posterior_log_variance_clipped"):
        assert getattr(d, name).dtype == F64
    assert torch.equal(d.alphas_cumprod, reference)
    assert d.state_dict() == {}


# -- forward process and posterior ------------------------------------------------------------------
def test_q_sample_by_construction():
    d = GaussianDiffusion(num_steps=100)
    betas = d.betas.tolist()
    x0 = torch.randn(4, 3, 5, dtype=F64, generator=gen(0))
    noise = torch.randn(4, 3, 5, dtype=F64, generator=gen(1))
    t = torch.tensor([0, 9, 50, 99])
    xt = d.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        abar = abar_loop(betas, step)
        expected = math.sqrt(abar) * x0[i] + math.sqrt(1 - abar) * noise[i]
        torch.testing.assert_close(xt[i], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_moments(schedule):
    d = GaussianDiffusion(schedule=schedule)
    x0 = torch.tensor([1.5, -0.5, 0.0], dtype=F64).expand(40_000, 3)
    for step in (10, 400, 900):
        abar = d.alphas_cumprod[step].item()
        xt = d.q_sample(x0, step, generator=gen(step))
        n = len(xt)
        mean_tol = 5 * math.sqrt((1 - abar) / n)
        torch.testing.assert_close(xt.mean(0), math.sqrt(abar) * x0[0], rtol=0, atol=mean_tol)
        torch.testing.assert_close(xt.var(0), torch.full((3,), 1 - abar, dtype=F64), rtol=5 * math.sqrt(2 / n), atol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(schedule):
    """q(x_{t-1} | x_t, x_0) prop. to q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of two Gaussians in
    x_{t-1}, N(x_t / sqrt(alpha_t), beta_t / alpha_t) and N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1});
    precisions add, precision-weighted means add. Elementwise, with scalar loops."""
    d = GaussianDiffusion(num_steps=100, schedule=schedule)
    betas = d.betas.tolist()
    x0 = torch.randn(5, 2, dtype=F64, generator=gen(2))
    xt = torch.randn(5, 2, dtype=F64, generator=gen(3))
    t = torch.tensor([1, 2, 30, 98, 99])
    mean, var, log_var = d.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        alpha, abar_prev = 1 - betas[step], abar_loop(betas, step - 1)
        v1, v2 = betas[step] / alpha, 1 - abar_prev
        precision = 1 / v1 + 1 / v2
        assert var[i].item() == pytest.approx(1 / precision, rel=1e-10)
        assert log_var[i].item() == pytest.approx(math.log(1 / precision), rel=1e-10)
        for j in range(2):
            m1, m2 = xt[i, j].item() / math.sqrt(alpha), math.sqrt(abar_prev) * x0[i, j].item()
            assert mean[i, j].item() == pytest.approx((m1 / v1 + m2 / v2) / precision, rel=1e-10, abs=1e-12)


def test_posterior_by_quadrature():
    """Mean and variance of the unnormalised density q(x_t | x_{t-1}) q(x_{t-1} | x_0) on a fine grid."""
    d = GaussianDiffusion(num_steps=1000)
    betas = d.betas.tolist()
    for step, x0, xt in ((1, 0.3, 0.25), (500, -0.7, 1.2)):
        alpha, abar_prev = 1 - betas[step], abar_loop(betas, step - 1)
        grid = torch.linspace(-4, 4, 400_001, dtype=F64)
        log_p = (-(xt - math.sqrt(alpha) * grid) ** 2 / (2 * betas[step])
                 - (grid - math.sqrt(abar_prev) * x0) ** 2 / (2 * (1 - abar_prev)))
        w = torch.softmax(log_p, 0)
        m = (w * grid).sum().item()
        v = (w * (grid - m) ** 2).sum().item()
        mean, var, _ = d.q_posterior(torch.tensor([x0], dtype=F64), torch.tensor([xt], dtype=F64), step)
        assert mean.item() == pytest.approx(m, rel=1e-8, abs=1e-10)
        assert var.item() == pytest.approx(v, rel=1e-6)


def test_posterior_at_t0_is_x0_and_log_variance_is_clipped():
    d = GaussianDiffusion(num_steps=10)
    x0, xt = torch.randn(3, 4, dtype=F64, generator=gen(4)), torch.randn(3, 4, dtype=F64, generator=gen(5))
    mean, var, log_var = d.q_posterior(x0, xt, 0)
    torch.testing.assert_close(mean, x0, rtol=1e-15, atol=0)
    assert (var == 0).all()
    torch.testing.assert_close(log_var, d.posterior_variance[1].log().expand(3, 1), rtol=1e-15, atol=0)
    assert var.shape == log_var.shape == (3, 1)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_conversions_round_trip(prediction, schedule):
    d = GaussianDiffusion(schedule=schedule, prediction=prediction)
    x0 = torch.randn(6, 2, 3, dtype=F64, generator=gen(6))
    eps = torch.randn(6, 2, 3, dtype=F64, generator=gen(7))
    t = torch.tensor([0, 1, 100, 500, 990, 998])
    xt = d.q_sample(x0, t, eps)
    out = d.target(x0, t, eps)
    if prediction == "v":
        abar = d.alphas_cumprod[t].view(-1, 1, 1)
        torch.testing.assert_close(out, abar.sqrt() * eps - (1 - abar).sqrt() * x0)
    torch.testing.assert_close(d.predict_x0(xt, t, out), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.predict_eps(xt, t, out), eps, rtol=1e-9, atol=1e-9)


# -- training loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_loss_by_hand_and_zero_for_the_oracle(prediction):
    d = GaussianDiffusion(num_steps=100, prediction=prediction)
    x0 = torch.randn(5, 2, 3, dtype=F64, generator=gen(8))
    noise = torch.randn(5, 2, 3, dtype=F64, generator=gen(9))
    t = torch.tensor([0, 3, 50, 70, 99])
    model = Wiggly(100)
    losses = d.training_loss(model, x0, t, noise, reduction="none", y=torch.arange(5))
    xt = d.q_sample(x0, t, noise)
    expected = ((model(xt, t, y=torch.arange(5)) - d.target(x0, t, noise)) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(losses, expected, rtol=1e-14, atol=0)
    assert d.training_loss(model, x0, t, noise, y=torch.arange(5)).item() == pytest.approx(expected.mean().item())

    point = x0[0]  # a Dirac data set: the oracle's loss is zero at every t
    assert d.training_loss(dirac_oracle(d, point), point.expand(64, 2, 3), generator=gen(10)).item() < 1e-20


def test_training_loss_draws_t_uniformly_and_reproducibly():
    d = GaussianDiffusion(num_steps=10)
    seen = []

    def model(x, t):
        seen.append(t)
        return x

    x0 = torch.zeros(4000, 1)
    a = d.training_loss(model, x0, generator=gen(11))
    b = d.training_loss(model, x0, generator=gen(11))
    assert a.dim() == 0 and a.item() == b.item() and torch.equal(seen[0], seen[1])
    counts = torch.bincount(seen[0], minlength=10)
    assert seen[0].dtype == torch.long and len(counts) == 10 and counts.min() > 300


# -- samplers -------------------------------------------------------------------------------------------
def test_ddim_timesteps():
    d = GaussianDiffusion(num_steps=1000)
    for steps in (2, 3, 10, 25, 250, 999):
        taus = d.ddim_timesteps(steps)
        assert len(taus) == steps and taus[0] == 0 and taus[-1] == 999 and taus == sorted(set(taus))
    assert d.ddim_timesteps(1000) == list(range(1000))
    assert d.ddim_timesteps(1) == [999]
    assert d.ddim_timesteps(4) == [0, 333, 666, 999]


SAMPLERS = [("ddpm", None, None)] + [("ddim", s, e) for s in (1, 10, 50) for e in (0.0, 1.0)]


def sample(d, sampler, steps, eta, model, shape, **kwargs):
    if sampler == "ddpm":
        return d.ddpm_sample(model, shape, **kwargs)
    return d.ddim_sample(model, shape, steps, eta, **kwargs)


@pytest.mark.parametrize("sampler,steps,eta", SAMPLERS)
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_samplers_recover_a_dirac(sampler, steps, eta, prediction, schedule):
    d = GaussianDiffusion(schedule=schedule, prediction=prediction)
    point = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.25, -0.75]], dtype=F64)
    noise = torch.randn(4, 2, 3, dtype=F64, generator=gen(12))
    out = sample(d, sampler, steps, eta, dirac_oracle(d, point), (4, 2, 3), noise=noise, generator=gen(13))
    torch.testing.assert_close(out, point.expand(4, 2, 3), rtol=0, atol=1e-8)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 100)])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_samplers_reproduce_gaussian_data(sampler, steps, prediction):
    s = 0.5
    d = GaussianDiffusion(prediction=prediction)
    noise = torch.randn(3000, 2, dtype=F64, generator=gen(14))
    out = sample(d, sampler, steps, 0.0, gaussian_oracle(d, s), (3000, 2), noise=noise, generator=gen(15))
    assert out.std().item() == pytest.approx(s, rel=0.05)
    assert out.mean().abs().item() < 0.05


def test_ddim_on_gaussian_data_is_a_linear_map_converging_to_the_exact_one():
    """For N(0, s^2) data every DDIM(eta=0) step is linear, so x_0 = c_S x_T; the probability-flow
    ODE maps N(0, abar s^2 + 1 - abar) at T - 1 onto N(0, s^2), and DDIM, a first-order solver,
    approaches that map as the step count S grows."""
    s = 0.5
    d = GaussianDiffusion()
    abar = d.alphas_cumprod[-1].item()
    exact = s / math.sqrt(abar * s**2 + 1 - abar)
    x = torch.tensor([[1.0], [-2.0]], dtype=F64)
    errors = []
    for steps in (25, 100, 400, 1000):
        out = d.ddim_sample(gaussian_oracle(d, s), (2, 1), steps, noise=x)
        torch.testing.assert_close(out[1], -2 * out[0], rtol=1e-12, atol=0)
        errors.append(abs(out[0].item() - exact))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.005 * exact
    assert errors[1] / errors[3] == pytest.approx(10, rel=0.2)  # error ~ 1 / S


@pytest.mark.parametrize("clip_x0", [False, True])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_ddim_with_eta_1_and_all_steps_is_ddpm(prediction, clip_x0):
    """sigma^2 = beta~_t and the same update, so the same noise stream gives the same samples."""
    d = GaussianDiffusion(num_steps=50, prediction=prediction)
    noise = torch.randn(3, 2, 4, dtype=F64, generator=gen(16))
    model = Wiggly(50)
    ddpm = d.ddpm_sample(model, (3, 2, 4), noise=noise, generator=gen(17), clip_x0=clip_x0)
    ddim = d.ddim_sample(model, (3, 2, 4), 50, eta=1.0, noise=noise, generator=gen(17), clip_x0=clip_x0)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)
    other = d.ddim_sample(model, (3, 2, 4), 50, eta=0.5, noise=noise, generator=gen(17), clip_x0=clip_x0)
    assert not torch.allclose(other, ddpm)


def test_clip_x0_keeps_the_prediction_in_range():
    d = GaussianDiffusion(num_steps=100)
    point = torch.full((2, 3), 3.0, dtype=F64)
    noise = torch.randn(4, 2, 3, dtype=F64, generator=gen(18))
    free = d.ddim_sample(dirac_oracle(d, point), (4, 2, 3), 10, noise=noise)
    clipped = d.ddim_sample(dirac_oracle(d, point), (4, 2, 3), 10, noise=noise, clip_x0=True)
    torch.testing.assert_close(free, point.expand(4, 2, 3))
    torch.testing.assert_close(clipped, torch.ones(4, 2, 3, dtype=F64))
    ddpm = d.ddpm_sample(dirac_oracle(d, point), (4, 2, 3), noise=noise, generator=gen(19), clip_x0=True)
    torch.testing.assert_close(ddpm, torch.ones(4, 2, 3, dtype=F64))


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, None), ("ddim", 10, 0.0), ("ddim", 10, 1.0)])
def test_samplers_are_deterministic_per_seed(sampler, steps, eta):
    d = GaussianDiffusion(num_steps=50)
    model = Wiggly(50)
    a = sample(d, sampler, steps, eta, model, (2, 3, 4), generator=gen(20))
    b = sample(d, sampler, steps, eta, model, (2, 3, 4), generator=gen(20))
    c = sample(d, sampler, steps, eta, model, (2, 3, 4), generator=gen(21))
    assert a.dtype == torch.get_default_dtype() and a.shape == (2, 3, 4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_samplers_call_the_model_once_per_step_with_original_timesteps():
    d = GaussianDiffusion(num_steps=100)
    seen = []

    def model(x, t, **kwargs):
        seen.append((t.tolist(), kwargs))
        return torch.zeros_like(x)

    d.ddim_sample(model, (2, 3), 4, generator=gen(22), progress=True, y=torch.tensor([1, 2]))
    assert [t for t, _ in seen] == [[99, 99], [66, 66], [33, 33], [0, 0]]
    assert all(torch.equal(kwargs["y"], torch.tensor([1, 2])) for _, kwargs in seen)
    seen.clear()
    d.ddpm_sample(model, (2, 3), generator=gen(22), progress=False)
    assert [t[0] for t, _ in seen] == list(range(99, -1, -1))


# -- classifier-free guidance ---------------------------------------------------------------------------
def test_guidance_is_one_batched_call_on_all_channels():
    model = Wiggly()
    x = torch.randn(3, 4, 2, 2, dtype=F64, generator=gen(23))
    t, y, null = torch.tensor([5, 500, 900]), torch.tensor([0, 1, 2]), 7
    out = guided(model, 4.0, null)(x, t, y)
    assert model.batches == [6]
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, null))
    expected = uncond + 4.0 * (cond - uncond)
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    assert ((cond - uncond).abs().flatten(2).amax(2) > 1e-3).all()  # every channel is guided
    assert not torch.allclose(out[:, 3], cond[:, 3])


def test_guidance_scale_one_is_the_conditional_model_and_zero_the_unconditional():
    model = Wiggly()
    x = torch.randn(3, 4, 2, 2, dtype=F64, generator=gen(24))
    t, y = torch.tensor([5, 500, 900]), torch.tensor([0, 1, 2])
    assert torch.equal(guided(model, 1.0, 7)(x, t, y), model(x, t, y))
    torch.testing.assert_close(guided(model, 0.0, 7)(x, t, y), model(x, t, torch.full_like(y, 7)), rtol=0, atol=1e-15)


def test_guided_sampling_doubles_each_batch():
    d = GaussianDiffusion(num_steps=100)
    model = Wiggly(100)
    out = d.ddim_sample(guided(model, 3.0, 10), (2, 4, 2, 2), 5, generator=gen(25), y=torch.tensor([1, 3]))
    assert out.shape == (2, 4, 2, 2) and model.batches == [4] * 5


# -- bad inputs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"num_steps": 0}, "num_steps must be >= 1, got 0"),
    ({"schedule": "quadratic"}, "schedule must be one of .* got 'quadratic'"),
    ({"prediction": "x0"}, "prediction must be one of .* got 'x0'"),
    ({"beta_start": 0.0}, "beta_start=0.0"),
    ({"beta_start": 0.02, "beta_end": 0.01}, "beta_start=0.02, beta_end=0.01"),
    ({"beta_end": 1.0}, "beta_end=1.0"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GaussianDiffusion(**kwargs)


def _zeros(x, t, **_):
    return torch.zeros_like(x)


D = GaussianDiffusion(num_steps=10)
X = torch.zeros(2, 3)


@pytest.mark.parametrize("call,error,match", [
    (lambda: D.ddim_sample(_zeros, (2, 3), 0), ConfigError, r"steps must be in \[1, 10\].*got 0"),
    (lambda: D.ddim_sample(_zeros, (2, 3), 11), ConfigError, r"steps must be in \[1, 10\].*got 11"),
    (lambda: D.ddim_sample(_zeros, (2, 3), 5, eta=-0.1), ConfigError, "eta must be >= 0, got -0.1"),
    (lambda: D.ddim_sample(_zeros, (2, 3), 5, eta=float("nan")), ConfigError, "eta must be >= 0, got nan"),
    (lambda: D.q_sample(X, torch.tensor([0, 10])), ConfigError,
     r"timesteps must be in \[0, 9\], got values in \[0, 10\]"),
    (lambda: D.q_sample(X, -1), ConfigError, r"timesteps must be in \[0, 9\], got values in \[-1, -1\]"),
    (lambda: D.q_posterior(X, X, 10), ConfigError, r"timesteps must be in \[0, 9\]"),
    (lambda: D.predict_x0(X, torch.tensor([0.5, 1.0]), X), ConfigError, "timesteps must be integers"),
    (lambda: D.predict_eps(X, torch.tensor([1, 2, 3]), X), ShapeError, r"timesteps must have shape \[2\]"),
    (lambda: D.q_sample(X, 1, torch.zeros(2, 4)), ShapeError, r"noise must have the shape of x, \[2, 3\]"),
    (lambda: D.training_loss(lambda x, t: x[:, :2], X), ShapeError, "the model output must have the shape"),
    (lambda: D.training_loss(_zeros, X, reduction="sum"), ConfigError, "reduction must be 'mean' or 'none', got 'sum'"),
    (lambda: D.ddpm_sample(_zeros, (2, 3), noise=torch.zeros(3, 2)), ShapeError, r"noise must have shape \[2, 3\]"),
    (lambda: guided(_zeros, -1.0, 0), ConfigError, "guidance scale must be >= 0, got -1.0"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
