"""One LightningModule per paper (or paper family); each imports only ``zoo.nn`` layers."""

from zoo.models.base import ZooModule
from zoo.models.classifier import ImageClassifier

__all__ = ["ImageClassifier", "ZooModule"]
