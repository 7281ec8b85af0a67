"""The diffusion math of AlignAb stage 2, each against an independent reference: the multinomial forward
process and posterior against explicit transition matrices and Bayes' rule by enumeration; the Gaussian
reverse step against the closed-form posterior; IGSO3's density against quadrature, a Brownian random walk on
SO(3) and its small-noise Gaussian limit, its sampler against the density; rotation maps against SciPy; the
losses at the true noise; and the context left bit-identical by sampling."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from zoo.alignab.codesign_diffusion import NUM_TYPES, LoopDiffusion, LoopState, cosine_schedule
from zoo.alignab.so3 import (
    IGSO3,
    igso3_angle_density,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
    rotation_angle,
    rotation_loss,
    so3_exp,
    so3_log,
)

pytestmark = pytest.mark.usefixtures("one_thread")
K = NUM_TYPES


@pytest.fixture(scope="module")
def diffusion():
    return LoopDiffusion(num_steps=20, igso3_points=1024).double()


def transition_matrices(diffusion):
    """Q_t = alpha_t I + (1 - alpha_t) / K 11^T (row x_{t-1} -> column x_t) and their products Qbar_t."""
    eye, ones = torch.eye(K, dtype=torch.float64), torch.ones(K, K, dtype=torch.float64) / K
    qs = [None] + [a * eye + (1 - a) * ones for a in diffusion.alphas[1:].tolist()]
    bars = [eye]
    for q in qs[1:]:
        bars.append(bars[-1] @ q)
    return qs, bars


def test_schedule_is_the_clipped_cosine(diffusion):
    tables = cosine_schedule(20)
    assert tables["alpha_bars"][0] == 1 and tables["betas"][0] == 0 and tables["posterior_variance"][1] == 0
    f = lambda t: math.cos((t / 20 + 0.01) / 1.01 * math.pi / 2) ** 2  # noqa: E731
    for t in range(1, 20):  # before the last step no beta is clipped
        assert tables["alpha_bars"][t].item() == pytest.approx(f(t) / f(0), rel=1e-12)
    assert tables["betas"][20] == pytest.approx(0.999)
    assert torch.all(tables["alpha_bars"][1:] < tables["alpha_bars"][:-1])


def test_multinomial_marginal_is_the_product_of_transitions(diffusion):
    _, bars = transition_matrices(diffusion)
    x0 = torch.eye(K, dtype=torch.float64)[None]  # every x_0 at once: [1, K, K]
    for t in range(1, 21):
        marginal = diffusion.seq_marginal(x0, torch.tensor([t]))[0]
        assert torch.allclose(marginal, bars[t], atol=1e-12)


def test_multinomial_posterior_is_bayes_rule_by_enumeration(diffusion):
    qs, bars = transition_matrices(diffusion)
    for t in (1, 2, 7, 20):
        for x0 in (0, 5, 19):
            for xt in (0, 5, 13):
                # q(x_{t-1} = j | x_t, x_0) = q(x_t | j) q(j | x_0) / q(x_t | x_0), j enumerated
                joint = torch.tensor([qs[t][j, xt] * bars[t - 1][x0, j] for j in range(K)], dtype=torch.float64)
                expected = joint / bars[t][x0, xt]
                onehot = torch.eye(K, dtype=torch.float64)[x0].view(1, 1, K)
                got = diffusion.seq_posterior(torch.tensor([[xt]]), onehot, torch.tensor([t]))[0, 0]
                assert torch.allclose(got, expected, atol=1e-12), (t, x0, xt)
    # a jump t -> s over several steps (respaced sampling): the same rule with Qbar_s^-1 Qbar_t
    for t, s in ((9, 3), (20, 0), (5, 4)):
        jump = torch.linalg.solve(bars[s], bars[t])
        for x0, xt in ((2, 2), (2, 11)):
            joint = torch.tensor([jump[j, xt] * bars[s][x0, j] for j in range(K)], dtype=torch.float64)
            onehot = torch.eye(K, dtype=torch.float64)[x0].view(1, 1, K)
            got = diffusion.seq_posterior(torch.tensor([[xt]]), onehot, torch.tensor([t]), torch.tensor([s]))[0, 0]
            assert torch.allclose(got, joint / bars[t][x0, xt], atol=1e-10), (t, s, x0, xt)
    # a soft x_0 (the model's prediction) mixes the posteriors in proportion to q(x_t | x_0)
    probs = torch.softmax(torch.randn(K, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0)
    t, xt = 5, 3
    weights = probs * bars[t][:, xt]
    mixture = sum(weights[k] * diffusion.seq_posterior(torch.tensor([[xt]]), torch.eye(K, dtype=torch.float64)[k]
                                                       .view(1, 1, K), torch.tensor([t]))[0, 0] for k in range(K))
    # Eq. (3) with a probability vector is the posterior under the predicted mixture, renormalised
    got = diffusion.seq_posterior(torch.tensor([[xt]]), probs.view(1, 1, K), torch.tensor([t]))[0, 0]
    assert torch.allclose(got, mixture / weights.sum(), atol=1e-12)


def test_multinomial_draws_follow_the_marginal(diffusion):
    n = 20000
    state = LoopState(torch.full((1, n), 4), torch.zeros(1, n, 3, dtype=torch.float64),
                      torch.eye(3, dtype=torch.float64).expand(1, n, 3, 3))
    noisy, _ = diffusion.add_noise(state, torch.ones(1, n, dtype=torch.bool), torch.tensor([6]),
                                   torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy.aa[0], minlength=K).double() / n
    expected = diffusion.seq_marginal(torch.eye(K, dtype=torch.float64)[4].view(1, 1, K), torch.tensor([6]))[0, 0]
    assert (counts - expected).abs().max() < 4 * math.sqrt(0.25 / n)


def test_position_posterior_is_gaussian_conditioning(diffusion):
    """With the true noise, Eq. (5) gives q(x_s | x_t, x_0), here from conditioning the joint Gaussian of
    (x_s, x_t) given x_0: x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s) e, x_t = sqrt(abar_t / abar_s) x_s + ..."""
    g = torch.Generator().manual_seed(1)
    x0 = 0.5 * torch.randn(1, 6, 3, generator=g, dtype=torch.float64)  # inside pos_clip
    design = torch.ones(1, 6, dtype=torch.bool)
    state = LoopState(torch.zeros(1, 6, dtype=torch.long), x0, torch.eye(3, dtype=torch.float64).expand(1, 6, 3, 3))
    for t, s in ((1, 0), (2, 1), (10, 9), (19, 18), (19, 4), (12, 0)):
        abar_t, abar_s = diffusion.alpha_bars[t].item(), diffusion.alpha_bars[s].item()
        noisy, eps = diffusion.add_noise(state, design, torch.tensor([t]), g)
        cov = math.sqrt(abar_t / abar_s) * (1 - abar_s)
        expected_mean = math.sqrt(abar_s) * x0 + cov / (1 - abar_t) * (noisy.pos - math.sqrt(abar_t) * x0)
        expected_var = (1 - abar_s) - cov**2 / (1 - abar_t)
        mean, variance = diffusion.pos_posterior(noisy.pos, eps, t, s)
        assert torch.allclose(mean, expected_mean, atol=1e-10), (t, s)
        assert variance == pytest.approx(expected_var, abs=1e-12)
        if s == t - 1:
            assert variance == pytest.approx(diffusion.posterior_variance[t].item(), abs=1e-12)
    # x0^ farther than pos_clip (30 A) from the anchor centre is shortened to pos_clip: the mean stays bounded
    far = torch.full((1, 1, 3), 1e3, dtype=torch.float64)
    mean, _ = diffusion.pos_posterior(far, torch.zeros_like(far), 20, 19)
    abar, abar_s = diffusion.alpha_bars[20].item(), diffusion.alpha_bars[19].item()
    x0 = far / far.norm() * diffusion.pos_clip
    c0 = math.sqrt(abar_s) * (1 - abar / abar_s) / (1 - abar)
    assert torch.allclose(mean, c0 * x0 + math.sqrt(abar / abar_s) * (1 - abar_s) / (1 - abar) * far)


def test_losses_vanish_at_the_truth_and_grow_away_from_it(diffusion):
    g = torch.Generator().manual_seed(2)
    b, n = 2, 7
    state = LoopState(torch.randint(0, K, (b, n), generator=g), torch.randn(b, n, 3, generator=g, dtype=torch.float64),
                      random_rotations((b, n), g, torch.float64))
    design = torch.rand(b, n, generator=g) < 0.6
    t = torch.tensor([3, 15])
    noisy, eps = diffusion.add_noise(state, design, t, g)
    exact = torch.nn.functional.one_hot(state.aa, K).double() * 60.0  # logits of a near-certain x_0 = truth
    losses = diffusion.losses(state, noisy, eps, t, eps, state.rot, exact, design)
    assert losses["pos"] == 0 and losses["rot"].abs() < 1e-12 and losses["seq"] < 1e-12 and losses["seq_ce"] < 1e-12
    previous = None
    for scale in (0.05, 0.2, 0.5):
        turn = so3_exp(scale * torch.randn(b, n, 3, generator=g, dtype=torch.float64))
        wrong = diffusion.losses(state, noisy, eps, t, eps + scale, turn @ state.rot, exact.roll(1, -1), design)
        assert wrong["pos"] > 0 and wrong["rot"] > 0 and wrong["seq"] > losses["seq"] and wrong["seq_ce"] > 1
        if previous is not None:
            assert wrong["pos"] > previous
        previous = wrong["pos"]
    angle = torch.linspace(0, math.pi, 30, dtype=torch.float64)
    loss = rotation_loss(so3_exp(angle[:, None] * torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)),
                         torch.eye(3, dtype=torch.float64))
    assert torch.allclose(loss, 2 * (1 - angle.cos()), atol=1e-12) and torch.all(loss[1:] > loss[:-1])


def test_rotation_maps_match_scipy():
    g = torch.Generator().manual_seed(3)
    rot = random_rotations((500,), g, torch.float64)
    assert torch.allclose(so3_log(rot), torch.tensor(Rotation.from_matrix(rot.numpy()).as_rotvec()), atol=1e-10)
    v = torch.randn(500, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(so3_exp(v), torch.tensor(Rotation.from_rotvec(v.numpy()).as_matrix()), atol=1e-12)
    q = matrix_to_quaternion(rot)
    assert torch.allclose(quaternion_to_matrix(q), rot, atol=1e-12)
    near_pi = so3_exp(torch.nn.functional.normalize(v, dim=-1) * (math.pi - 1e-9))
    assert torch.allclose(so3_exp(so3_log(near_pi)), near_pi, atol=1e-7)
    angle = torch.tensor(Rotation.from_rotvec(v.numpy()).magnitude())
    assert torch.allclose(rotation_angle(so3_exp(v)), angle, atol=1e-6)


@pytest.mark.parametrize("eps", [0.05, 0.3, 1.0, 2.0])
def test_igso3_angle_density_normalizes(eps):
    grid = torch.linspace(0, math.pi, 200001, dtype=torch.float64)
    assert torch.trapezoid(igso3_angle_density(grid, eps), grid).item() == pytest.approx(1.0, abs=1e-6)


def test_igso3_small_noise_is_the_gaussian_rotation_vector():
    """For small eps the rotation vector is N(0, eps^2 I): its length has the Maxwell density."""
    eps = 0.05
    omega = torch.linspace(1e-4, 0.3, 300, dtype=torch.float64)
    maxwell = math.sqrt(2 / math.pi) * omega**2 / eps**3 * torch.exp(-(omega**2) / (2 * eps**2))
    assert torch.allclose(igso3_angle_density(omega, eps), maxwell, rtol=0.02, atol=0.02)


def histogram_distance(angles: torch.Tensor, eps: float, bins: int = 30) -> float:
    """Largest difference between the binned frequencies of ``angles`` and the density's bin masses."""
    edges = torch.linspace(0, math.pi, bins + 1, dtype=torch.float64)
    counts = torch.histogram(angles.double(), bins=edges).hist / len(angles)
    fine = torch.linspace(0, math.pi, 30001, dtype=torch.float64)
    density = igso3_angle_density(fine, eps)
    mass = torch.stack([torch.trapezoid(density[(fine >= a) & (fine <= b)], fine[(fine >= a) & (fine <= b)])
                        for a, b in zip(edges[:-1], edges[1:])])
    return float((counts - mass).abs().max())


@pytest.mark.parametrize("eps", [0.2, 0.7, 1.5])
def test_igso3_sampler_matches_the_density(eps):
    angles = IGSO3([eps]).sample_angle(torch.zeros(100000, dtype=torch.long), torch.Generator().manual_seed(4))
    assert histogram_distance(angles, eps) < 0.006  # binomial sd <= 0.0016 per bin


@pytest.mark.parametrize("eps", [0.4, 1.0])
def test_igso3_is_the_law_of_brownian_motion_on_so3(eps):
    """An independent reference: compose 200 small random rotations (rotation vectors N(0, eps^2 / 200 I))."""
    g = torch.Generator().manual_seed(5)
    n, steps = 20000, 200
    rot = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    for _ in range(steps):
        rot = so3_exp(torch.randn(n, 3, generator=g, dtype=torch.float64) * eps / math.sqrt(steps)) @ rot
    assert histogram_distance(rotation_angle(rot), eps, bins=20) < 0.012  # binomial sd <= 0.0035 per bin


def test_igso3_rotations_have_uniform_axes():
    v = IGSO3([0.8]).sample(torch.zeros(50000, dtype=torch.long), torch.Generator().manual_seed(6), torch.float64)
    axis = torch.nn.functional.normalize(v, dim=-1)
    assert axis.mean(0).abs().max() < 0.02 and (axis.pow(2).mean(0) - 1 / 3).abs().max() < 0.02


def test_sampling_leaves_the_context_bit_identical(diffusion):
    g = torch.Generator().manual_seed(7)
    b, n = 3, 9
    state = LoopState(torch.randint(0, 21, (b, n), generator=g), torch.randn(b, n, 3, generator=g, dtype=torch.float64),
                      random_rotations((b, n), g, torch.float64))
    design = torch.zeros(b, n, dtype=torch.bool)
    design[:, 3:6] = True
    weights = torch.randn(3, 3, generator=g, dtype=torch.float64)

    def network(s, t):  # any function of the state: here a crude, rotation-mixing one
        eps = torch.tanh(s.pos @ weights)
        return eps, so3_exp(0.1 * eps) @ s.rot, torch.randn(b, n, K, generator=g, dtype=torch.float64)

    out = diffusion.sample(network, state, design, torch.Generator().manual_seed(8))
    fast = diffusion.sample(network, state, design, torch.Generator().manual_seed(8), steps=4)
    assert diffusion.sampling_timesteps(4) == [20, 14, 7, 1, 0]
    assert torch.equal(fast.pos[~design], state.pos[~design]) and torch.equal(fast.rot[~design], state.rot[~design])
    keep = ~design
    assert torch.equal(out.aa[keep], state.aa[keep]) and torch.equal(out.pos[keep], state.pos[keep])
    assert torch.equal(out.rot[keep], state.rot[keep])
    assert not torch.equal(out.pos[design], state.pos[design])
    assert torch.allclose(out.rot.transpose(-1, -2) @ out.rot, torch.eye(3, dtype=torch.float64).expand(b, n, 3, 3),
                          atol=1e-9)
