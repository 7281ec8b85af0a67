"""Distances between a model's samples and a known distribution, for synthetic data where the truth
is known (the latent-DiT subspace data) and for features of images (FID-style).

- :func:`frechet_distance`: the squared 2-Wasserstein distance between two Gaussians,
  ``||m1 - m2||^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})`` (Dowson & Landau 1982). For the
  true Gaussian on one side it is the exact W2^2 to that Gaussian of the samples' Gaussian fit; on
  Inception features it is FID.
- :func:`mmd`: the unbiased estimate of the squared maximum mean discrepancy with a Gaussian kernel
  (Gretton et al. 2012, Eq. 3), bandwidth by the median heuristic unless given.
- :func:`sliced_wasserstein`: the squared sliced 2-Wasserstein distance between two equal-size
  samples, exact per direction (sorted 1-D samples), averaged over random unit directions.
- :class:`ImageFeatures`: a trained classifier's penultimate layer as the feature network of FID.

The distances are computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.core.errors import ShapeError


def _samples(name: str, x: Tensor, dim: int | None = None) -> Tensor:
    if x.dim() != 2 or len(x) < 2 or (dim is not None and x.shape[1] != dim):
        want = f"[N >= 2, {dim}]" if dim is not None else "[N >= 2, d]"
        raise ShapeError(f"{name} must have shape {want}, got {list(x.shape)}")
    return x.double()


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> Tensor:
    """Squared W2 between ``N(mean1, cov1)`` and ``N(mean2, cov2)`` (module docstring), float64."""
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    d = len(mean1)
    for name, mean, cov in (("1", mean1, cov1), ("2", mean2, cov2)):
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ShapeError(f"frechet_distance: mean{name} must be [{d}] and cov{name} [{d}, {d}], "
                             f"got {list(mean.shape)} and {list(cov.shape)}")
    root = _psd_sqrt(cov1)
    cross = _psd_sqrt(root @ cov2 @ root)
    return ((mean1 - mean2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * torch.trace(cross)


def gaussian_w2(samples: Tensor, mean: Tensor, cov: Tensor) -> Tensor:
    """Squared W2 between the Gaussian fit (mean, unbiased covariance) of ``samples [N, d]`` and
    ``N(mean, cov)``."""
    x = _samples("samples", samples, len(mean))
    return frechet_distance(x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1]), mean, cov)


def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """The median of the pairwise distances in ``x`` and ``y`` together (the median heuristic)."""
    z = torch.cat([x, y]).double()
    distances = torch.cdist(z, z)
    return float(distances[torch.triu_indices(len(z), len(z), offset=1).unbind()].median())


def mmd(x: Tensor, y: Tensor, bandwidth: float | None = None) -> Tensor:
    """Unbiased squared MMD between samples ``x [N, d]`` and ``y [M, d]`` with the kernel
    ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``; ``h`` by :func:`median_bandwidth` unless given.
    Zero in expectation when the two distributions are equal (it can then be slightly negative)."""
    x = _samples("x", x)
    y = _samples("y", y, x.shape[1])
    h = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h))

    n, m = len(x), len(y)
    kxx, kyy = kernel(x, x), kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kernel(x, y).mean()


def sliced_wasserstein(x: Tensor, y: Tensor, directions: int = 128, generator: torch.Generator | None = None) -> Tensor:
    """Squared sliced W2 between equal-size samples ``x, y [N, d]``: the mean over ``directions``
    random unit vectors ``u`` of the exact 1-D W2^2 between ``x u`` and ``y u`` (sorted pairs)."""
    x = _samples("x", x)
    y = _samples("y", y, x.shape[1])
    if len(x) != len(y):
        raise ShapeError(f"sliced_wasserstein needs samples of equal size, got {len(x)} and {len(y)}")
    u = torch.randn(x.shape[1], directions, generator=generator, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    px, _ = (x @ u).sort(dim=0)
    py, _ = (y @ u).sort(dim=0)
    return ((px - py) ** 2).mean()


class ImageFeatures(nn.Module):
    """A trained image classifier (``zoo.ndlinear.ImageClassifier``, loaded through the registry) as the feature network of torchmetrics'
    ``FrechetInceptionDistance(feature=ImageFeatures(...))``: FID without hub weights (Inception
    cannot be downloaded here), in the feature space of a classifier this project trained and ships
    (``digits-cnn``). Takes images in ``[0, 1]`` and standardizes them as the classifier's training
    data were (``(x - mean) / std``); returns ``[B, num_features]``.
    """

    def __init__(self, classifier: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.mean, self.std = float(mean), float(std)
        with torch.no_grad():
            self.num_features = self(torch.zeros(1, *classifier.input_shape)).shape[1]

    def train(self, mode: bool = True) -> "ImageFeatures":
        """Stays in eval mode: BatchNorm must use the classifier's running statistics."""
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier.features((images - self.mean) / self.std)

