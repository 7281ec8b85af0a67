"""Modern Hopfield retrieval: dense, sparse and kernelized, with its energy.

Memories are the rows of ``memories [M, d]`` (the paper's columns of Xi), queries the rows of
``x [B, d]``. One retrieval step (Ramsauer et al. 2021; Hu et al. 2023; Wu et al. 2024):

    T(x) = Xi^T Sep(beta K(Xi, x)),   K(u, v) = <Phi(u), Phi(v)>

``Sep`` is softmax (dense), sparsemax, 1.5-entmax or alpha-entmax; ``Phi`` is the identity
(classic models) or a feature map such as U-Hop+'s linear ``Phi(u) = W u`` (kernelized Hopfield
model, KHM). The output is always a combination of the raw memories. Each step lowers

    E(x) = -(1/beta) Psi*(beta K(Xi, x)) + 1/2 ||Phi(x)||^2,
    Psi*(z) = max_{p in simplex} <p, z> + H_alpha(p)            (= logsumexp(z) for softmax)

(the concave-convex procedure; for a linear ``Phi`` the decrease holds in feature space, and
constants such as ``log M / beta`` are dropped). ``retrieve`` runs up to ``steps`` updates and
stops early once no query moves more than ``tol``.

Memory: the feature map runs over the memories ``chunk_size`` rows at a time and once per call
(not per step); the largest intermediate is the ``[B, M]`` score matrix (split a large query
batch to bound it).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError
from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax

SEPARATIONS = ("softmax", "sparsemax", "entmax15", "entmax")
FeatureMap = Callable[[Tensor], Tensor]


def separate(scores: Tensor, kind: str = "softmax", alpha: float | Tensor = 1.5, dim: int = -1) -> Tensor:
    """The separation function ``Sep`` applied to ``scores`` along ``dim``."""
    if kind == "softmax":
        return torch.softmax(scores, dim=dim)
    if kind == "sparsemax":
        return sparsemax(scores, dim=dim)
    if kind == "entmax15":
        return entmax15(scores, dim=dim)
    if kind == "entmax":
        return entmax_bisect(scores, alpha, dim=dim)
    raise ConfigError(f"separation must be one of {SEPARATIONS}, got {kind!r}")


def conjugate(scores: Tensor, kind: str = "softmax", alpha: float | Tensor = 1.5, dim: int = -1) -> Tensor:
    """``Psi*(z) = <p, z> + H_alpha(p)`` at ``p = Sep(z)``: the convex function whose gradient is ``Sep``."""
    if kind == "softmax":
        return torch.logsumexp(scores, dim=dim)
    p = separate(scores, kind, alpha, dim)
    a = {"sparsemax": 2.0, "entmax15": 1.5}.get(kind, alpha)
    a = torch.as_tensor(a, dtype=scores.dtype, device=scores.device)
    while a.dim() and a.dim() < scores.dim():
        a = a.unsqueeze(-1)
    tsallis = (1 - (p**a).sum(dim=dim, keepdim=True)) / (a * (a - 1))
    return ((p * scores).sum(dim=dim, keepdim=True) + tsallis).squeeze(dim)


def _check(x: Tensor, memories: Tensor, beta: float) -> None:
    if memories.dim() != 2 or memories.shape[0] == 0:
        raise ShapeError(f"memories must be a non-empty [M, d] matrix, got shape {list(memories.shape)}")
    if x.dim() != 2 or x.shape[1] != memories.shape[1]:
        raise ShapeError(
            f"queries must have shape [B, {memories.shape[1]}] to match memories [M, {memories.shape[1]}], "
            f"got {list(x.shape)}"
        )
    if not beta > 0:
        raise ConfigError(f"beta must be > 0, got {beta}")
    if not math.isfinite(beta):
        raise ConfigError(f"beta must be finite (an inverse temperature), got {beta}")
    # a NaN or inf anywhere makes the sum non-finite (inf - inf is NaN), so a finite sum proves the
    # input finite at the cost of one reduction; the element-wise check runs only to name the culprit
    # (an overflowing sum of finite values falls through to it and passes)
    if not bool(x.sum().isfinite() & memories.sum().isfinite()) and not bool(
            torch.isfinite(x).all() & torch.isfinite(memories).all()):
        name = "queries" if not bool(torch.isfinite(x).all()) else "memories"
        raise ShapeError(f"{name} must be finite numbers, got NaN or inf in {name} of shape "
                         f"{list((x if name == 'queries' else memories).shape)}")


def memory_features(memories: Tensor, feature_map: FeatureMap | None = None, chunk_size: int | None = None) -> Tensor:
    """``Phi`` of every memory, computed ``chunk_size`` memories at a time (the identity without a map)."""
    if feature_map is None:
        return memories
    blocks = memories.split(chunk_size or len(memories))
    first = feature_map(blocks[0])
    if len(blocks) == 1:
        return first
    # write each block into one preallocated [M, D] output: peak memory is the features plus one
    # block, not the features twice (a list of blocks and their concatenation)
    features = first.new_empty((len(memories), *first.shape[1:]))
    features[: len(first)] = first
    start = len(first)
    for block in blocks[1:]:
        features[start : start + len(block)] = feature_map(block)
        start += len(block)
    return features


def similarities(x: Tensor, stored: Tensor, feature_map: FeatureMap | None = None, beta: float = 1.0) -> Tensor:
    """``beta K(Xi, x) = beta Phi(x) Phi(Xi)^T`` as a ``[B, M]`` matrix, from the memories' features ``stored``."""
    features = x if feature_map is None else feature_map(x)
    # beta scales the [B, D] query features rather than the [B, M] product: the same numbers up to
    # float rounding (the product is linear in each factor), but B*D multiplies instead of B*M and
    # no second [B, M] tensor; this is what keeps one dense step at the cost of bare attention.
    return (beta * features) @ stored.T


def energy(x: Tensor, memories: Tensor, beta: float = 1.0, kind: str = "softmax", alpha: float | Tensor = 1.5,
           feature_map: FeatureMap | None = None, chunk_size: int | None = None) -> Tensor:
    """Hopfield energy of each query (module docstring), shape ``[B]``."""
    _check(x, memories, beta)
    features = x if feature_map is None else feature_map(x)
    scores = beta * features @ memory_features(memories, feature_map, chunk_size).T
    return -conjugate(scores, kind, alpha) / beta + 0.5 * (features**2).sum(dim=-1)


def retrieve(x: Tensor, memories: Tensor, beta: float = 1.0, kind: str = "softmax", alpha: float | Tensor = 1.5,
             feature_map: FeatureMap | None = None, steps: int = 1, tol: float | None = None,
             chunk_size: int | None = None, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Run up to ``steps`` updates ``x <- Xi^T Sep(beta K(Xi, x))``; stop early when every query
    moved less than ``tol`` (Euclidean norm). Returns the retrieved patterns ``[B, d]``, and with
    ``return_weights`` also the last update's weights ``[B, M]`` (their support is the metastable
    state the query fell into)."""
    _check(x, memories, beta)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    stored = memory_features(memories, feature_map, chunk_size)
    for _ in range(steps):
        weights = separate(similarities(x, stored, feature_map, beta), kind, alpha)
        updated = weights @ memories
        converged = tol is not None and (updated - x).norm(dim=-1).max() < tol
        x = updated
        if converged:
            break
    return (x, weights) if return_weights else x


def retrieval_weights(x: Tensor, memories: Tensor, beta: float = 1.0, kind: str = "softmax",
                      alpha: float | Tensor = 1.5, feature_map: FeatureMap | None = None,
                      chunk_size: int | None = None) -> Tensor:
    """``Sep(beta K(Xi, x))`` for each query, ``[B, M]``: its support size is the size of the
    metastable state the query falls into."""
    _check(x, memories, beta)
    return separate(similarities(x, memory_features(memories, feature_map, chunk_size), feature_map, beta), kind, alpha)


# -- U-Hop+ Stage I: a feature map under which the memories form a well-separated spherical code --
class LinearFeatureMap(torch.nn.Module):
    """``Phi(u) = W u`` with ``W: d -> D`` (the KHM's linear feature map), orthogonally initialized
    so it starts full rank."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"LinearFeatureMap sizes must be >= 1, got {in_dim} -> {out_dim}")
        self.weight = torch.nn.Parameter(torch.empty(out_dim, in_dim))
        torch.nn.init.orthogonal_(self.weight)

    def forward(self, u: Tensor) -> Tensor:
        return u @ self.weight.T


def _pairwise_cosines(memories: Tensor, feature_map: FeatureMap | None) -> Tensor:
    features = memories if feature_map is None else feature_map(memories)
    features = torch.nn.functional.normalize(features, dim=-1)
    return features @ features.T


def separation_loss(memories: Tensor, feature_map: FeatureMap | None = None, tau: float = 0.1) -> Tensor:
    """U-Hop+'s separation loss of a set of ``M >= 2`` memories (Wu, Hu et al., 2024):

        L = (1/M) log[ 2/(M(M-1)) sum_{mu<nu} exp(<phi_mu, phi_nu> / tau) ],   phi = Phi(xi) / ||Phi(xi)||

    a log-sum-exp relaxation of maximizing the smallest pairwise angle (the max-min as tau -> 0).
    Only the ``M(M-1)/2`` pairs ``mu < nu`` enter the sum: the diagonal and the lower triangle are
    excluded, not counted as ``exp(0)`` terms, and both operands keep their gradient.
    """
    m = len(memories)
    if m < 2:
        raise ShapeError(f"separation_loss needs at least 2 memories, got {m}")
    if not tau > 0:
        raise ConfigError(f"tau must be > 0, got {tau}")
    if not math.isfinite(tau):
        raise ConfigError(f"tau must be finite, got {tau}")
    rows, cols = torch.triu_indices(m, m, offset=1, device=memories.device)
    pairs = _pairwise_cosines(memories, feature_map)[rows, cols] / tau
    return (torch.logsumexp(pairs, dim=0) + torch.log(torch.tensor(2.0 / (m * (m - 1))))) / m


def min_separation(memories: Tensor, feature_map: FeatureMap | None = None) -> Tensor:
    """``1 - max_{mu != nu} cos(Phi(xi_mu), Phi(xi_nu))``: 0 for two identical directions, 1 for
    orthogonal ones, 2 for opposite ones. U-Hop+ training should raise it."""
    cosines = _pairwise_cosines(memories, feature_map)
    cosines = cosines - 3 * torch.eye(len(memories), dtype=cosines.dtype, device=cosines.device)  # drop the diagonal
    return 1 - cosines.max()
