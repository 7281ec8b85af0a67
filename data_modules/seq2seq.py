"""Seeded sequence-to-sequence data for the limits of prompt tuning (Hu et al., ICLR 2025): random
Lipschitz maps (universality) and random pairs (memorization capacity).

Inputs are ``X in [0, 1]^{L x d}``, uniform. Two tasks:

- ``lipschitz``: ``y = f(X) - mean_train f(X)``, ``f`` the random map of :func:`lipschitz_map`,

      f(X) = W_2 tanh(W_1 vec(X) - b),   ||W_1||_2 = ||W_2||_2 = 1,

  so ``f`` is 1-Lipschitz in the Frobenius norm and every output token depends on every input token;
  subtracting the constant training mean keeps ``y`` 1-Lipschitz. The splits are disjoint draws:
  ``num_train`` training inputs, then ``num_val`` held-out inputs, then ``num_test`` more.
- ``memorize``: ``N = num_train`` pairs ``(X_n, y_n)`` with ``y_n ~ N(0, noise_std^2)`` per entry,
  independent of ``X_n``. Memorization is measured on the pairs themselves, so the validation and
  test sets are the training pairs.

The model a target is meant for adds its own constant: the prompt-tuning module fits
``y + c``, with ``c`` the frozen model's mean output on the training inputs, so the prompt does not
have to learn a global shift (``zoo.prompt_tuning.limits_module``).

Draws (the same numbers as ``benchmarks/prompt_tuning/limits.py``): the map from ``seed``; the
inputs, then the targets, from one generator seeded with ``LIPSCHITZ_OFFSET + seed`` or
``MEMORIZE_OFFSET + seed``. Batches are ``(X [B, L, d], y [B, L, d])``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from data_modules.base import TensorSet, ZooDataModule
from zoo.core.errors import ConfigError

TASKS = ("lipschitz", "memorize")
LIPSCHITZ_OFFSET = 100
MEMORIZE_OFFSET = 200


def lipschitz_map(length: int, dim: int, width: int = 64, seed: int = 0) -> Callable[[Tensor], Tensor]:
    """A random map ``[0, 1]^{L x d} -> R^{L x d}`` with Lipschitz constant <= 1 in the Frobenius
    norm: ``f(X) = W_2 tanh(W_1 vec(X) - b)`` with ``W_1``, ``W_2`` of spectral norm 1 (tanh is
    1-Lipschitz), computed in fp64. Every output token depends on every input token."""
    g = torch.Generator().manual_seed(seed)
    n = length * dim
    w1 = torch.randn(width, n, generator=g, dtype=torch.float64)
    w2 = torch.randn(n, width, generator=g, dtype=torch.float64)
    w1, w2 = w1 / torch.linalg.matrix_norm(w1, ord=2), w2 / torch.linalg.matrix_norm(w2, ord=2)
    b = torch.randn(width, generator=g, dtype=torch.float64)

    def f(x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], n).to(torch.float64)
        return (torch.tanh(flat @ w1.T - b) @ w2.T).reshape(x.shape).to(x.dtype)

    return f


def lipschitz_inputs(sizes: tuple[int, ...], length: int, dim: int, seed: int) -> list[Tensor]:
    """Disjoint input sets ``[n, L, d]`` uniform in ``[0, 1]``, one per size, drawn in order."""
    g = torch.Generator().manual_seed(LIPSCHITZ_OFFSET + seed)
    return [torch.rand(n, length, dim, generator=g) for n in sizes]


def memorization_pairs(n: int, length: int, dim: int, seed: int, noise_std: float = 0.5) -> tuple[Tensor, Tensor]:
    """``N`` inputs ``[N, L, d]`` uniform in ``[0, 1]`` and targets ``N(0, noise_std^2)``, from one
    generator: the inputs first, then the targets."""
    g = torch.Generator().manual_seed(MEMORIZE_OFFSET + seed)
    x = torch.rand(n, length, dim, generator=g)
    return x, noise_std * torch.randn(n, length, dim, generator=g)


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"Seq2SeqDataModule {name} must be a positive integer, got {value!r}")
    return value


class Seq2SeqDataModule(ZooDataModule):
    """Random Lipschitz maps or random pairs on ``[0, 1]^{L x d}`` (module docstring).

    Args:
        task: ``lipschitz`` (universality) or ``memorize`` (memorization capacity).
        dim: d, the token width.
        length: L, tokens per sequence.
        num_train: training inputs (``N`` pairs for ``memorize``).
        num_val, num_test: held-out inputs (``lipschitz`` only; ``memorize`` evaluates on its pairs).
        map_width: hidden width of the Lipschitz map.
        noise_std: standard deviation of the ``memorize`` targets.
        batch_size: samples per batch (``num_train`` or more: full-batch training, as the paper's
            experiments here use).
        seed: draws the map, the inputs and the targets (module docstring) and the shuffle.

    ``val_dataloader`` gives two loaders for ``lipschitz``: the held-out inputs, then the training
    inputs in order (the training error as measured after a step); one, the pairs, for ``memorize``.
    """

    def __init__(self, task: str = "lipschitz", dim: int = 2, length: int = 2, num_train: int = 128,
                 num_val: int = 256, num_test: int = 256, map_width: int = 64, noise_std: float = 0.5,
                 batch_size: int = 256, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(None, batch_size, num_workers, seed)
        if task not in TASKS:
            raise ConfigError(f"Seq2SeqDataModule task must be one of {', '.join(TASKS)}, got {task!r}")
        for name, value in (("dim", dim), ("length", length), ("num_train", num_train), ("num_val", num_val),
                            ("num_test", num_test), ("map_width", map_width)):
            _positive(name, value)
        if not noise_std > 0:
            raise ConfigError(f"Seq2SeqDataModule noise_std must be > 0, got {noise_std!r}")
        self.task, self.dim, self.length = task, dim, length
        self.sizes = (num_train, num_val, num_test)
        self.map_width, self.noise_std = map_width, noise_std

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        if self.task == "memorize":
            x, y = memorization_pairs(self.sizes[0], self.length, self.dim, self.seed, self.noise_std)
            self.train_set = self.val_set = self.test_set = TensorSet(x, y)
            return
        f = lipschitz_map(self.length, self.dim, self.map_width, self.seed)
        inputs = lipschitz_inputs(self.sizes, self.length, self.dim, self.seed)
        shift = f(inputs[0]).mean(0)
        self.train_set, self.val_set, self.test_set = (TensorSet(x, f(x) - shift) for x in inputs)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.task == "memorize":
            return self._loader(self.val_set)
        return [self._loader(self.val_set), self._loader(self.train_set)]
