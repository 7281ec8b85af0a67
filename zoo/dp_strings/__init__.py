"""Differentially private string distances (Hu, Liu, Liu, Song, Zhang, "On Differentially Private
String Distances", arXiv 2411.05750, 2024), in numpy: no torch, no Lightning.

Paper -> code: the private Hamming and edit-distance indexes (sketch, randomized response,
debiasing, the CGK embedding for edit distance) in ``index``; ``python -m zoo dp-strings
build|query`` in ``cli``. Results: ``docs/dp_strings.md``.
"""

from zoo.dp_strings.index import (
    DPEditIndex,
    DPHammingIndex,
    DPIndex,
    Sketch,
    cgk_embed,
    flip_prob,
    hamming,
    load,
    read_strings,
)

__all__ = ["DPEditIndex", "DPHammingIndex", "DPIndex", "Sketch", "cgk_embed", "flip_prob", "hamming", "load",
           "read_strings"]
