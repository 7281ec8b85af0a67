"""zoo.dit.metrics against closed forms and loop definitions."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import scipy.linalg
import torch

from zoo.core.errors import ShapeError
from zoo.dit.metrics import frechet_distance, gaussian_w2, median_bandwidth, mmd, sliced_wasserstein

pytestmark = pytest.mark.usefixtures("one_thread")


def random_cov(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_in_one_dimension_and_for_diagonal_covariances():
    one = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert float(one) == pytest.approx((1 + 2) ** 2 + (2 - 3) ** 2, abs=1e-12)
    a, b = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 0.1, 0.5], dtype=torch.float64)
    diagonal = frechet_distance(torch.zeros(3), torch.diag(a), torch.zeros(3), torch.diag(b))
    assert float(diagonal) == pytest.approx(float(((a.sqrt() - b.sqrt()) ** 2).sum()), abs=1e-12)


def test_frechet_distance_equals_the_sqrtm_formula():
    """The FID formula with scipy's general matrix square root of ``S1 S2``, in float64."""
    s1, s2 = random_cov(6, 0), random_cov(6, 1)
    m1, m2 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((m1 - m2) ** 2).sum()) + float(np.trace(s1.numpy() + s2.numpy() - 2 * cross))
    assert float(frechet_distance(m1, s1, m2, s2)) == pytest.approx(expected, rel=1e-9)
    assert float(frechet_distance(m2, s2, m1, s1)) == pytest.approx(expected, rel=1e-9)  # symmetric
    assert abs(float(frechet_distance(m1, s1, m1, s1))) < 1e-10
    with pytest.raises(ShapeError, match=r"mean2 must be \[6\] and cov2 \[6, 6\], got \[5\]"):
        frechet_distance(m1, s1, m2[:5], s2)


def test_gaussian_w2_of_many_samples_is_near_zero_and_sees_a_wrong_scale():
    cov = random_cov(4, 2)
    chol = torch.linalg.cholesky(cov)
    x = torch.randn(20000, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ chol.T
    assert float(gaussian_w2(x, torch.zeros(4), cov)) < 0.01
    # 1.5 x the samples: W2^2 = tr(cov) (1.5 - 1)^2 for Gaussians of proportional covariances
    assert float(gaussian_w2(1.5 * x, torch.zeros(4), cov)) == pytest.approx(0.25 * float(torch.trace(cov)), rel=0.05)
    with pytest.raises(ShapeError, match=r"samples must have shape \[N >= 2, 4\], got \[10, 3\]"):
        gaussian_w2(torch.zeros(10, 3), torch.zeros(4), cov)


def test_mmd_equals_its_definition_by_loops():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.5
    h = 0.8

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert float(mmd(x, y, bandwidth=h)) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    pairs = [float((a - b).norm()) for i, a in enumerate(torch.cat([x, y])) for b in torch.cat([x, y])[i + 1:]]
    assert median_bandwidth(x, y) == pytest.approx(statistics.median_low(pairs), rel=1e-12)  # torch's median: the lower one


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    same = float(mmd(x, y))
    shifted = float(mmd(x, y + 0.5))
    assert abs(same) < 0.005 and shifted > 10 * max(abs(same), 1e-3)
    with pytest.raises(ShapeError, match=r"y must have shape \[N >= 2, 4\], got \[5, 3\]"):
        mmd(x, torch.zeros(5, 3))


def test_sliced_wasserstein_in_one_dimension_is_the_exact_w2_and_sees_a_shift():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(200, 1, generator=g, dtype=torch.float64), torch.rand(200, 1, generator=g, dtype=torch.float64)
    exact = float(((x[:, 0].sort().values - y[:, 0].sort().values) ** 2).mean())  # sorted pairs, u = +-1
    assert float(sliced_wasserstein(x, y, directions=5, generator=g)) == pytest.approx(exact, rel=1e-12)
    # y = x + c: every projection moves by c.u, so SW^2 = E_u (c.u)^2 = ||c||^2 / d
    x = torch.randn(300, 5, generator=g, dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    value = float(sliced_wasserstein(x, x + c, directions=4000, generator=g))
    assert value == pytest.approx(float(c @ c) / 5, rel=0.05)
    with pytest.raises(ShapeError, match="equal size, got 300 and 299"):
        sliced_wasserstein(x, x[:-1])


def test_fid_with_the_shipped_digit_classifier_as_feature_network():
    """torchmetrics' FID over ``ImageFeatures(digits-cnn)`` = ``frechet_distance`` of the same features;
    real test digits sit far closer to the training digits than blurred or noise images do."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    import zoo
    from data_modules import DigitsDataModule
    from zoo.dit.metrics import ImageFeatures

    scaled = DigitsDataModule(normalize=True)
    scaled.setup()
    raw = DigitsDataModule(normalize=False)
    raw.setup()
    features = ImageFeatures(zoo.load_pretrained("digits-cnn"), scaled.mean, scaled.std)
    assert features.num_features == 128
    features.train()
    assert not features.classifier.training  # BatchNorm keeps its running statistics
    train, test = raw.train_set.tensors[0], raw.test_set.tensors[0]
    fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
    fid.update(train, real=True)
    fid.update(test, real=False)
    real = fid.compute().item()
    a, b = features(train).double(), features(test).double()
    expected = frechet_distance(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T))
    assert real == pytest.approx(float(expected), rel=1e-4)
    fid.reset()
    blurred = torch.nn.functional.avg_pool2d(test, 3, stride=1, padding=1)
    fid.update(blurred, real=False)
    assert fid.compute().item() > 5 * real
    fid.reset()
    fid.update(torch.rand(len(test), *test.shape[1:], generator=torch.Generator().manual_seed(0)), real=False)
    assert fid.compute().item() > 20 * real
