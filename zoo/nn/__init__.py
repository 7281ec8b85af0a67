"""Plain torch building blocks (no Lightning): NdLinear, Hopfield retrieval, DiT blocks, LoRA, ..."""

from zoo.nn.ndlinear import NdLinear

__all__ = ["NdLinear"]
