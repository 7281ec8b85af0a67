"""Plain torch building blocks (no Lightning): NdLinear, sparse separation maps, Hopfield retrieval and
layers, the Diffusion Transformer and Gaussian diffusion."""

from zoo.nn.diffusion import GaussianDiffusion, guided
from zoo.nn.dit import DIT_SIZES, DiT, dit
from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax
from zoo.nn.hopfield import energy, retrieval_weights, retrieve, separate
from zoo.nn.hopfield_layers import Hopfield, HopfieldLayer, HopfieldPooling
from zoo.nn.ndlinear import NdLinear

__all__ = [
    "DIT_SIZES", "DiT", "GaussianDiffusion", "Hopfield", "HopfieldLayer", "HopfieldPooling", "NdLinear", "dit",
    "energy", "entmax15", "entmax_bisect", "guided", "retrieval_weights", "retrieve", "separate", "sparsemax",
]
