"""Modern Hopfield memory: dense, sparse and kernelized (Ramsauer et al. 2021, "Hopfield Networks
is All You Need"; Hu et al. 2023, "On Sparse Modern Hopfield Model"; Wu, Hu et al. 2024, "Provably
Optimal Memory Capacity for Modern Hopfield Models", U-Hop+).

Paper -> code:
- The energy and the retrieval update ``x <- Xi Sep(beta Xi^T x)`` with softmax, sparsemax or
  entmax separation (``zoo.nn.entmax``), and the kernelized similarity ``<Phi xi, Phi x>``:
  ``retrieval`` (``energy``, ``retrieve``, ``separate``, ``LinearFeatureMap``).
- Ramsauer et al. Sec. 3, the layers (``Hopfield``, ``HopfieldPooling``, ``HopfieldLayer``): ``layers``.
- U-Hop+ Stage I (learn ``Phi`` by the separation loss) and Stage II (retrieve with it): ``uhop.UHopPlus``.
- Multiple-instance learning with Hopfield pooling, with and without U-Hop+: ``mil.HopfieldMIL``.
- Memories as spherical codes (the capacity statement): the separation of a point set, bounds on the
  best separation of M points on S^{D-1} and codes that reach a known one: ``capacity``.

Configs: ``configs/hopfield/``; results: ``docs/hopfield.md``.
"""

from zoo.hopfield.capacity import best_cosine_bound, best_known_code, cosine_bounds, max_cosine, min_angle
from zoo.hopfield.layers import Hopfield, HopfieldLayer, HopfieldPooling
from zoo.hopfield.mil import HopfieldMIL
from zoo.hopfield.retrieval import LinearFeatureMap, energy, retrieval_weights, retrieve, separate
from zoo.hopfield.uhop import UHopPlus

__all__ = [
    "Hopfield", "HopfieldLayer", "HopfieldMIL", "HopfieldPooling", "LinearFeatureMap", "UHopPlus",
    "best_cosine_bound", "best_known_code", "cosine_bounds", "energy", "max_cosine", "min_angle",
    "retrieval_weights", "retrieve", "separate",
]
