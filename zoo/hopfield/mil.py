"""Multiple-instance learning with Hopfield pooling, with and without U-Hop+ separation (Ramsauer
et al. 2021, "Hopfield Networks is All You Need", Sec. 4; Wu, Hu et al. 2024, U-Hop+ learning tasks).

A bag of instances ``x_1..x_n`` is encoded instance by instance, ``y_i = f(x_i)``, and pooled by
a Hopfield layer whose state patterns are ``quantity`` learned queries ``q`` and whose stored
patterns are the bag (``zoo.hopfield.HopfieldPooling``):

    z = Sep(beta q K^T) V,   K = LN(Y) W_K,   V = LN(Y) W_V,         logit = w^T z + b

U-Hop+ treats the key map ``Phi(y) = W_K LN(y)`` as the kernel feature map of the stored
patterns and asks the keys of each bag to form a well-separated spherical code. Here the
separation loss of every bag (``zoo.hopfield.retrieval.separation_loss``, pairs ``mu < nu`` of its real
instances only) is added to the classification loss with weight ``separation_weight``:

    L = BCE(logit, label) + separation_weight * mean_bags L_sep(Phi(Y_bag))

``separation_weight = 0`` is plain Hopfield pooling. (The paper alternates a separation step and a
task step; the weighted sum is its one-optimizer form.) Test metrics: ``test/auroc``, ``test/acc``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.hopfield.layers import HopfieldPooling
from zoo.hopfield.retrieval import SEPARATIONS


def bag_separation_loss(features: Tensor, padding: Tensor, tau: float = 0.1) -> Tensor:
    """Mean over bags of U-Hop+'s separation loss of each bag's real instances:
    ``(1/n) log[ 2/(n(n-1)) sum_{mu<nu} exp(<phi_mu, phi_nu> / tau) ]`` with ``phi`` the
    normalized ``features [B, N, D]`` and ``padding [B, N]`` True at empty slots. Bags with
    fewer than two instances are left out."""
    phi = F.normalize(features, dim=-1)
    scores = phi @ phi.transpose(1, 2) / tau
    real = ~padding
    upper = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu(diagonal=1)
    pairs = real[:, :, None] & real[:, None, :] & upper
    n = real.sum(-1).to(scores.dtype)
    counted = n >= 2
    lse = scores.masked_fill(~pairs, -math.inf).flatten(1)[counted].logsumexp(-1)
    n = n[counted]
    return ((lse - torch.log(n * (n - 1) / 2)) / n).mean()


class HopfieldMIL(ZooModule):
    """Bag classifier: instance MLP -> HopfieldPooling -> linear.

    Args:
        in_dim: width of a flattened instance (64 for 8x8 digits).
        hidden_size: instance embedding and key width.
        num_heads: heads of the pooling layer.
        quantity: learned queries.
        separation: ``softmax``, ``sparsemax``, ``entmax15`` or ``entmax``.
        alpha: alpha of ``entmax``.
        scaling: beta of the pooling (default ``1 / sqrt(head width)``).
        separation_weight: weight of the U-Hop+ separation loss (0 = plain pooling).
        tau: temperature of the separation loss.
        dropout: dropout of the instance encoder and of the association weights.
    """

    def __init__(
        self,
        in_dim: int = 64,
        hidden_size: int = 64,
        num_heads: int = 1,
        quantity: int = 1,
        separation: str = "softmax",
        alpha: float = 1.5,
        scaling: float | None = None,
        separation_weight: float = 0.0,
        tau: float = 0.1,
        dropout: float = 0.1,
        lr: float = 0.001,
        weight_decay: float = 0.0001,
    ) -> None:
        super().__init__()
        if separation not in SEPARATIONS:
            raise ConfigError(f"separation must be one of {SEPARATIONS}, got {separation!r}")
        if separation_weight < 0:
            raise ConfigError(f"separation_weight must be >= 0, got {separation_weight}")
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.ReLU(), nn.Dropout(dropout),
                                     nn.Linear(hidden_size, hidden_size), nn.ReLU())
        self.pool = HopfieldPooling(hidden_size, quantity=quantity, hidden_size=hidden_size // num_heads,
                                    num_heads=num_heads, separation=separation, alpha=alpha, scaling=scaling,
                                    dropout=dropout)
        self.head = nn.Linear(quantity * hidden_size, 1)
        self.val_auroc, self.test_auroc = BinaryAUROC(), BinaryAUROC()
        self.val_acc, self.test_acc = BinaryAccuracy(), BinaryAccuracy()

    def forward(self, instances: Tensor, padding: Tensor) -> Tensor:
        """Bag logits ``[B]`` from ``instances [B, N, in_dim]`` and ``padding [B, N]`` (True = empty)."""
        self.check_shape("instances", instances, (None, None, self.hparams.in_dim))
        return self.head(self.pool(self.encoder(instances), stored_pattern_padding_mask=padding)).squeeze(-1)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        instances, padding, labels = batch
        embedded = self.encoder(instances)
        logits = self.head(self.pool(embedded, stored_pattern_padding_mask=padding)).squeeze(-1)
        task = F.binary_cross_entropy_with_logits(logits, labels)
        loss = task
        if self.hparams.separation_weight > 0:
            separation = bag_separation_loss(self.pool.hopfield.keys(embedded), padding, self.hparams.tau)
            loss = task + self.hparams.separation_weight * separation
            self.log_train(batch_idx, loss=loss, bce=task, separation=separation)
        else:
            self.log_train(batch_idx, loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_auroc, self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_auroc, self.test_acc)

    def _evaluate(self, batch, stage: str, auroc: BinaryAUROC, accuracy: BinaryAccuracy) -> None:
        instances, padding, labels = batch
        logits = self(instances, padding)
        probs = torch.sigmoid(logits)
        auroc(probs, labels.long())
        accuracy(probs, labels.long())
        self.log(f"{stage}/loss", F.binary_cross_entropy_with_logits(logits, labels), sync_dist=True)
        self.log(f"{stage}/auroc", auroc, prog_bar=True)
        self.log(f"{stage}/acc", accuracy)
