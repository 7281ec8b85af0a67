"""Plain torch building blocks (no Lightning): NdLinear, sparse separation maps, Hopfield retrieval and layers."""

from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax
from zoo.nn.hopfield import energy, retrieval_weights, retrieve, separate
from zoo.nn.hopfield_layers import Hopfield, HopfieldLayer, HopfieldPooling
from zoo.nn.ndlinear import NdLinear

__all__ = [
    "Hopfield", "HopfieldLayer", "HopfieldPooling", "NdLinear", "energy", "entmax15", "entmax_bisect",
    "retrieval_weights", "retrieve", "separate", "sparsemax",
]
