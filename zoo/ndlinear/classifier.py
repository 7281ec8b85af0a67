"""Image classifier: a small conv stem and a swappable head.

The baseline of the zoo's image experiments and the CNN of the NdLinear paper (Reneau, Hu et
al., 2025, Sec. 4: conv32-BN-pool, conv64-BN-pool, then ``NdLinear((64, 8, 8), (64, 8, 8))``,
ReLU, ``Linear(4096, 10)`` against a dense ``4096 -> 256 -> 10`` head on CIFAR-10). The stem is
``len(channels)`` blocks of 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool; the head maps the
stem's ``[C, H, W]`` features to class logits:

- ``linear``:   flatten -> Linear(C*H*W, num_classes)
- ``mlp``:      flatten -> Linear(C*H*W, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)
- ``ndlinear``: NdLinear((C, H, W), nd_hidden) -> ReLU -> Dropout -> flatten
                -> Linear(prod(nd_hidden), num_classes), the structure-preserving counterpart of ``mlp``
"""

from __future__ import annotations

import csv
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule
from zoo.core.plots import image_grid
from zoo.ndlinear.layer import NdLinear

HEADS = ("linear", "mlp", "ndlinear")
GRID = 64  # images drawn in predictions.png


def conv_stem(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip([in_channels, *channels], channels):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


class ImageClassifier(ZooModule):
    """Conv stem + head, trained with cross-entropy and AdamW under a cosine schedule.

    Args:
        in_channels, image_size: input images are ``[B, in_channels, image_size, image_size]``.
        num_classes: number of classes.
        channels: output channels of each conv block (each block halves the image size).
        head: ``linear``, ``mlp`` or ``ndlinear`` (see module docstring).
        hidden: width of the ``mlp`` head.
        nd_hidden: output dims ``(C', H', W')`` of the ``ndlinear`` head (default: the stem's ``(C, H, W)``).
        dropout: dropout before the last layer of the ``mlp`` and ``ndlinear`` heads.
        lr, weight_decay: AdamW settings; the learning rate follows a cosine to 0 over the run.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        channels: tuple[int, ...] = (32, 64),
        head: str = "mlp",
        hidden: int = 128,
        nd_hidden: tuple[int, int, int] | None = None,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"ImageClassifier head must be one of {HEADS}, got {head!r}")
        side = image_size // 2 ** len(channels)
        if side < 1:
            raise ConfigError(
                f"ImageClassifier: {len(channels)} conv blocks halve image_size={image_size} to 0; use fewer channels"
            )
        self.save_hyperparameters()
        self.input_shape = (in_channels, image_size, image_size)
        self.stem = conv_stem(in_channels, tuple(channels))
        features = channels[-1] * side * side
        if head == "linear":
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
        elif head == "ndlinear":
            dims = (channels[-1], side, side)
            out = tuple(nd_hidden) if nd_hidden is not None else dims
            self.head = nn.Sequential(
                NdLinear(dims, out), nn.ReLU(), nn.Dropout(dropout), nn.Flatten(), nn.Linear(math.prod(out), num_classes)
            )
        else:
            self.head = nn.Sequential(
                nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
            )
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self._predictions: list[Tensor] = []
        self._shown: list[Tensor] = []

    def forward(self, images: Tensor) -> Tensor:
        self.check_shape("images", images, (None, *self.input_shape),
                         " (set model.init_args.in_channels / image_size to match the data)")
        return self.head(self.stem(images))

    def features(self, images: Tensor) -> Tensor:
        """The head's input to its last Linear ``[B, F]``: the penultimate activations (``hidden``
        wide for ``mlp``), used as the feature space of FID (``zoo.dit.metrics.ImageFeatures``)."""
        self.check_shape("images", images, (None, *self.input_shape))
        return self.head[:-1](self.stem(images)).flatten(1)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log_train(batch_idx, loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        probs = self(images).softmax(-1)
        confidence, predicted = probs.max(-1)
        rows = torch.stack([predicted.float(), confidence, labels.float()], dim=1)
        self._predictions.append(rows.cpu())
        shown = sum(len(x) for x in self._shown)
        if shown < GRID:
            self._shown.append(images[: GRID - shown].cpu())
        return probs

    def on_predict_epoch_end(self) -> None:
        """Write ``predictions.csv`` (predicted class, its probability, label) and
        ``predictions.png`` (the first 64 images captioned "predicted (label)", mistakes in red)
        to the log dir."""
        rows = torch.cat(self._predictions) if self._predictions else torch.empty(0, 3)
        shown = torch.cat(self._shown) if self._shown else torch.empty(0)
        self._predictions.clear()
        self._shown.clear()
        path, grid = self.output_path("predictions.csv"), self.output_path("predictions.png")  # every rank
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["predicted", "probability", "label"])
            writer.writerows([int(p), f"{c:.6f}", int(y)] for p, c, y in rows.tolist())
        if len(shown):
            pairs = [(int(p), int(y)) for p, _, y in rows[: len(shown)].tolist()]
            image_grid(shown, grid, [f"{p} ({y})" for p, y in pairs],
                       ["black" if p == y else "red" for p, y in pairs])
        print(f"wrote {len(rows)} predictions to {path}")
