"""One LightningModule per paper (or paper family); each imports only ``zoo.nn`` layers."""

from zoo.models.antibody_lm import AntibodyLM
from zoo.models.autoencoder import ImageAutoencoder
from zoo.models.base import ZooModule
from zoo.models.classifier import ImageClassifier
from zoo.models.dit import ConditionalDiT
from zoo.models.forecaster import Forecaster
from zoo.models.hopfield_mil import HopfieldMIL
from zoo.models.icl import InContextRegression
from zoo.models.latent_dit import LatentDiT
from zoo.models.uhop import UHopPlus

__all__ = [
    "AntibodyLM", "ConditionalDiT", "Forecaster", "HopfieldMIL", "ImageAutoencoder", "ImageClassifier",
    "InContextRegression", "LatentDiT", "UHopPlus", "ZooModule",
]
