"""Plain torch building blocks (no Lightning): NdLinear, Hopfield retrieval, DiT blocks, LoRA, ..."""

__all__: list[str] = []
