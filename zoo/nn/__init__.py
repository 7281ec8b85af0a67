"""Plain torch building blocks (no Lightning): NdLinear, sparse separation maps, Hopfield retrieval."""

from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax
from zoo.nn.hopfield import energy, retrieval_weights, retrieve, separate
from zoo.nn.ndlinear import NdLinear

__all__ = ["NdLinear", "energy", "entmax15", "entmax_bisect", "retrieval_weights", "retrieve", "separate", "sparsemax"]
