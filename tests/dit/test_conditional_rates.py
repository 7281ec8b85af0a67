"""Conditional rate checks: the data, its closed-form conditional score, the quadrature marginal
score, classifier-free guidance and the in-context score network, against slow fp64 references
(autograd, loops, adaptive quadrature, numerical convolution)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from zoo.core.errors import ConfigError, ShapeError
from zoo.dit.conditional_rates import ConditionalGaussianData, InContextScoreNet, guidance_errors, guided

pytestmark = pytest.mark.usefixtures("one_thread")


def points(data: ConditionalGaussianData, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=generator, dtype=torch.float64)
    x = 2 * torch.randn(n, data.x_dim, generator=generator, dtype=torch.float64)
    return x, y


def test_mean_matches_a_loop_over_frequencies():
    data = ConditionalGaussianData(x_dim=3, smoothness=2.5, frequencies=7, amplitude=1.3, function_seed=5)
    y = torch.tensor([0.0, 0.13, 0.5, 0.77, 1.0], dtype=torch.float64)
    norm = math.sqrt(sum(k ** (-2 * 2.5) for k in range(1, 8)))
    expected = torch.zeros(5, 3, dtype=torch.float64)
    for i in range(5):
        for j in range(3):
            for k in range(1, 8):
                phase = float(data.phases[j, k - 1])
                expected[i, j] += 1.3 * k ** -2.5 / norm * math.sin(math.pi * k * float(y[i]) + phase)
    torch.testing.assert_close(data.mean(y), expected, rtol=1e-12, atol=1e-12)
    assert data.coefficients.square().sum().item() == pytest.approx(1.0, abs=1e-12)
    ratios = data.coefficients / data.coefficients[0]
    torch.testing.assert_close(ratios, torch.arange(1, 8, dtype=torch.float64) ** -2.5)
    assert data.holder_order == pytest.approx(1.5)


@pytest.mark.parametrize("abar", [0.9999, 0.5, 0.02])
def test_conditional_score_is_autograd_of_the_log_density(abar):
    data = ConditionalGaussianData(x_dim=3, smoothness=1.5, frequencies=16)
    x, y = points(data, 10)
    x = x.requires_grad_(True)
    (grad,) = torch.autograd.grad(data.conditional_log_density(x, y, abar).sum(), x)
    score = data.conditional_score(x.detach(), y, abar)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-10)
    per_row = torch.full((10,), abar, dtype=torch.float64)  # one abar per row gives the same
    torch.testing.assert_close(data.conditional_score(x.detach(), y, per_row), score)
    b = math.sqrt(1 - abar)
    torch.testing.assert_close(data.true_eps(x.detach(), y, abar), -b * score)
    # the log density itself: a multivariate normal with mean a mu(y), covariance v_t I
    cov = data.noised_variance(abar) * torch.eye(3, dtype=torch.float64)
    for i in range(3):
        mvn = torch.distributions.MultivariateNormal(math.sqrt(abar) * data.mean(y[i : i + 1])[0], cov)
        assert data.conditional_log_density(x[i : i + 1].detach(), y[i : i + 1], abar).item() == pytest.approx(
            mvn.log_prob(x[i].detach()).item(), rel=1e-12)


@pytest.mark.parametrize("abar", [0.95, 0.3])
def test_conditional_score_matches_the_convolved_density(abar):
    """p_t(x | y) = int N(x; a x0, b^2) N(x0; mu(y), sigma0^2) dx0 on a grid (a loop), its log
    differentiated by central differences: the variance a^2 sigma0^2 + b^2 of Eq. (2) is right."""
    data = ConditionalGaussianData(x_dim=1, smoothness=2.0, frequencies=8, data_std=0.4)
    a, b = math.sqrt(abar), math.sqrt(1 - abar)
    grid = torch.linspace(-6, 6, 60001, dtype=torch.float64)

    def log_p(x: float, mu: float) -> float:
        prior = torch.exp(-0.5 * ((grid - mu) / 0.4) ** 2) / (0.4 * math.sqrt(2 * math.pi))
        kernel = torch.exp(-0.5 * ((x - a * grid) / b) ** 2) / (b * math.sqrt(2 * math.pi))
        return math.log(torch.trapezoid(prior * kernel, grid).item())

    for x_value, y_value in [(0.3, 0.2), (-1.1, 0.7), (1.7, 0.95)]:
        mu = data.mean(torch.tensor([y_value], dtype=torch.float64)).item()
        h = 1e-4
        numeric = (log_p(x_value + h, mu) - log_p(x_value - h, mu)) / (2 * h)
        exact = data.conditional_score(torch.tensor([[x_value]], dtype=torch.float64),
                                       torch.tensor([y_value], dtype=torch.float64), abar).item()
        assert exact == pytest.approx(numeric, rel=1e-6, abs=1e-7)
        assert log_p(x_value, mu) == pytest.approx(data.conditional_log_density(
            torch.tensor([[x_value]], dtype=torch.float64), torch.tensor([y_value], dtype=torch.float64),
            abar).item(), abs=1e-8)


@pytest.mark.parametrize("abar", [0.9999, 0.6, 0.05])
def test_marginal_score_matches_adaptive_quadrature(abar):
    """Eq. (3) against scipy's adaptive quadrature of the numerator and the denominator, point by point."""
    data = ConditionalGaussianData(x_dim=2, smoothness=1.5, frequencies=32)  # the roughest mean of the benchmark
    x, _ = points(data, 6, seed=1)
    x = x / 2 + math.sqrt(abar) * data.mean(torch.rand(6, generator=torch.Generator().manual_seed(2)).double())
    v = data.noised_variance(abar)
    score = data.marginal_score(x, abar)
    for i in range(len(x)):
        xi = x[i].numpy()

        def density(y: float, xi=xi) -> float:
            mu = data.mean(torch.tensor([y], dtype=torch.float64))[0].numpy()
            return math.exp(-0.5 * float(((xi - math.sqrt(abar) * mu) ** 2).sum()) / v)

        def moment(y: float, j: int, xi=xi) -> float:
            mu = data.mean(torch.tensor([y], dtype=torch.float64))[0].numpy()
            return -(xi[j] - math.sqrt(abar) * mu[j]) / v * density(y)

        options = dict(limit=400, epsabs=0, epsrel=1e-11)
        z = integrate.quad(density, 0, 1, **options)[0]
        expected = [integrate.quad(moment, 0, 1, args=(j,), **options)[0] / z for j in range(2)]
        torch.testing.assert_close(score[i], torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_marginal_score_is_autograd_of_the_marginal_log_density_and_eps():
    data = ConditionalGaussianData(x_dim=2, smoothness=2.5, frequencies=16, quadrature=512)
    x, _ = points(data, 8)
    abar = torch.linspace(0.01, 0.999, 8, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(data.marginal_log_density(xg, abar).sum(), xg)
    torch.testing.assert_close(data.marginal_score(x, abar, chunk=3), grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(data.true_eps(x, None, abar), -(1 - abar).sqrt()[:, None] * grad, rtol=1e-10,
                               atol=1e-10)
    # as t -> T the marginal of x_t forgets y: both scores tend to -x
    far = data.marginal_score(x, 1e-8)
    torch.testing.assert_close(far, data.conditional_score(x, torch.rand(8, dtype=torch.float64), 1e-8),
                               rtol=1e-3, atol=1e-3)


def test_guidance_formula_and_its_target():
    generator = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(guided(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(guided(uncond, cond, 1.0), cond)
    for w in (2.0, 4.0):
        torch.testing.assert_close(guided(uncond, cond, w), (1 - w) * uncond + w * cond)
    # the guided true score is the gradient of (1 - w) log p_t(x) + w log p_t(x | y) (autograd, fp64)
    data = ConditionalGaussianData(x_dim=2, smoothness=2.0, frequencies=8, quadrature=1024)
    x, y = points(data, 6)
    abar = 0.4
    for w in (0.0, 1.0, 2.0, 4.0):
        xg = x.clone().requires_grad_(True)
        target = (1 - w) * data.marginal_log_density(xg, abar) + w * data.conditional_log_density(xg, y, abar)
        (grad,) = torch.autograd.grad(target.sum(), xg)
        torch.testing.assert_close(guided(data.marginal_score(x, abar), data.conditional_score(x, y, abar), w), grad,
                                   rtol=1e-9, atol=1e-9)
    with pytest.raises(ShapeError, match=r"\[5, 3\] and \[5, 2\]"):
        guided(uncond, cond[:, :2], 1.0)


def test_guidance_errors_match_a_per_point_loop():
    torch.manual_seed(3)
    data = ConditionalGaussianData(x_dim=2, smoothness=2.0, frequencies=8, quadrature=1024)
    net = InContextScoreNet(x_dim=2, hidden_size=16, depth=1, num_heads=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave the zero init, so cond and uncond differ
    x, y = data.sample(12, torch.Generator().manual_seed(1))
    t = torch.randint(0, 1000, (12,), generator=torch.Generator().manual_seed(2))
    net.train()  # guidance_errors must switch the random dropout off
    errors = guidance_errors(net, data, x, t, y, [0.0, 1.0, 2.0, 4.0])
    assert net.training
    net.eval()
    abar = net.diffusion.alphas_cumprod
    sums = {w: 0.0 for w in errors}
    with torch.no_grad():
        for i in range(12):
            xi, ti, yi = x[i : i + 1], t[i : i + 1], y[i : i + 1]
            cond = net(xi, ti, yi).double()
            uncond = net(xi, ti, yi, force_drop=torch.tensor([True])).double()
            b = math.sqrt(1 - abar[ti].item())
            true_cond = -b * data.conditional_score(xi, yi, abar[ti].item())
            true_uncond = -b * data.marginal_score(xi, abar[ti].item())
            for w in sums:
                est = uncond + w * (cond - uncond)
                true = true_uncond + w * (true_cond - true_uncond)
                sums[w] += ((est - true) ** 2).sum().item()
    for w, error in errors.items():
        assert error == pytest.approx(sums[w] / 24, rel=1e-5)


def test_sampling_is_seeded_and_has_the_stated_law():
    data = ConditionalGaussianData(x_dim=2, smoothness=1.5)
    x1, y1 = data.sample(5000, torch.Generator().manual_seed(7))
    x2, y2 = data.sample(5000, torch.Generator().manual_seed(7))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, _ = data.sample(5000, torch.Generator().manual_seed(8))
    assert not torch.equal(x1, x3)
    assert x1.shape == (5000, 2) and y1.shape == (5000,) and x1.dtype == torch.float32
    assert 0 <= y1.min() and y1.max() <= 1
    residual = x1.double() - data.mean(y1.double())
    assert residual.mean(0).abs().max() < 0.03 and (residual.std(0) - 0.5).abs().max() < 0.02
    # the function is fixed by function_seed, not by the sample's seed
    torch.testing.assert_close(ConditionalGaussianData(x_dim=2, smoothness=1.5).phases, data.phases)
    assert not torch.equal(ConditionalGaussianData(x_dim=2, smoothness=1.5, function_seed=1).phases, data.phases)
    # equal energy for every smoothness, E_y mu_j^2 ~ A^2 / 2 (random phases; exact only on average)
    grid = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for s in (1.5, 4.0):
        energy = ConditionalGaussianData(x_dim=2, smoothness=s).mean(grid).square().mean().item()
        assert 0.5 * 1.5**2 / 3 < energy < 0.5 * 1.5**2 * 3


def test_network_skip_null_token_and_dropout():
    torch.manual_seed(0)
    net = InContextScoreNet(x_dim=3, hidden_size=16, depth=1, num_heads=2, cond_dropout=0.5)
    x = torch.randn(6, 3)
    t = torch.tensor([0, 10, 100, 500, 900, 999])
    y = torch.rand(6)
    b = net.diffusion.one_minus_alphas_cumprod.sqrt()[t].float()
    torch.testing.assert_close(net(x, t, y), b[:, None] * x)  # zero-initialised output: the skip alone
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    net.eval()
    out = net(x, t, y)
    assert out.shape == (6, 3) and torch.equal(out, net(x, t, y))  # eval: deterministic
    drop = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(net(x, t, y, force_drop=drop), net(x, t, torch.rand(6), force_drop=drop))
    assert not torch.allclose(out, net(x, t, torch.rand(6)))  # the condition matters
    cond, uncond = net.conditional_and_unconditional(x, t, y)
    torch.testing.assert_close(cond, out)
    torch.testing.assert_close(uncond, net(x, t, y, force_drop=drop))
    net.train()
    torch.manual_seed(1)
    a = net(x.repeat(50, 1), t.repeat(50), y.repeat(50))
    uncond_rows = torch.isclose(a, uncond.repeat(50, 1), atol=1e-6).all(1)
    assert 0.3 < uncond_rows.float().mean() < 0.7  # about half the conditions dropped


def test_short_training_beats_the_untrained_network():
    torch.manual_seed(0)
    data = ConditionalGaussianData(x_dim=2, smoothness=4.0, quadrature=1024)
    x, y = data.sample(256, torch.Generator().manual_seed(0))
    net = InContextScoreNet(x_dim=2, hidden_size=32, depth=1, num_heads=2)
    xe, ye = data.sample(512, torch.Generator().manual_seed(1))
    te = torch.randint(0, 1000, (512,), generator=torch.Generator().manual_seed(2))
    xt = net.diffusion.q_sample(xe, te, generator=torch.Generator().manual_seed(3))
    before = guidance_errors(net, data, xt, te, ye, [0.0, 1.0])
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(4)
    for _ in range(120):
        rows = torch.randint(0, 256, (128,), generator=generator)
        loss = net.diffusion.training_loss(net, x[rows], generator=generator, y=y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = guidance_errors(net, data, xt, te, ye, [0.0, 1.0])
    assert after[0.0] < 0.8 * before[0.0] and after[1.0] < 0.8 * before[1.0]


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(ConfigError, match="smoothness must be > 0, got 0"):
        ConditionalGaussianData(smoothness=0)
    with pytest.raises(ConfigError, match="data_std must be > 0, got -1"):
        ConditionalGaussianData(data_std=-1)
    with pytest.raises(ConfigError, match="x_dim must be >= 1, got 0"):
        ConditionalGaussianData(x_dim=0)
    with pytest.raises(ConfigError, match="quadrature must be >= 2 nodes, got 1"):
        ConditionalGaussianData(quadrature=1)
    with pytest.raises(ConfigError, match="n must be >= 1, got 0"):
        ConditionalGaussianData().sample(0)
    data = ConditionalGaussianData(x_dim=2)
    with pytest.raises(ShapeError, match=r"x_t must have shape \[B, 2\] \(x_dim = 2\), got \[4, 3\]"):
        data.conditional_score(torch.zeros(4, 3), torch.zeros(4), 0.5)
    with pytest.raises(ShapeError, match=r"y must have shape \[4\] \(one condition per point\), got \[5\]"):
        data.conditional_score(torch.zeros(4, 2), torch.zeros(5), 0.5)
    with pytest.raises(ShapeError, match=r"schedule values must be a scalar or of shape \[4\], got \[3\]"):
        data.marginal_score(torch.zeros(4, 2), torch.full((3,), 0.5))
    with pytest.raises(ConfigError, match="cond_dropout must lie in \\[0, 1\\), got 1"):
        InContextScoreNet(cond_dropout=1)
    with pytest.raises(ConfigError, match="hidden_size=30 must be divisible by num_heads=4"):
        InContextScoreNet(hidden_size=30)
    net = InContextScoreNet(x_dim=2, hidden_size=16, depth=1)
    with pytest.raises(ShapeError, match=r"x must have shape \[B, 2\] \(x_dim = 2\), got \[3, 4\]"):
        net(torch.zeros(3, 4), torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ShapeError, match=r"t must have shape \[3\], got \[2\]"):
        net(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3))
    for error in (ConfigError, ShapeError):
        assert issubclass(error, ValueError)
