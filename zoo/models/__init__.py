"""One LightningModule per paper (or paper family); each imports only ``zoo.nn`` layers."""

from zoo.models.base import ZooModule
from zoo.models.classifier import ImageClassifier
from zoo.models.forecaster import Forecaster

__all__ = ["Forecaster", "ImageClassifier", "ZooModule"]
