"""Layers that several papers share, in plain torch (no Lightning): the sparse probability maps
(sparsemax, 1.5-entmax, alpha-entmax) that sparse Hopfield retrieval and sparse attention use.
A paper's own layers live in its package (``zoo.<paper>``)."""

from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax

__all__ = ["entmax15", "entmax_bisect", "sparsemax"]
