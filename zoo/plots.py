"""Pictures people would rather look at than read: image grids with captions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor


def image_grid(images: Tensor, path: str | Path, captions: Sequence[str] = (), colors: Sequence[str] = (),
               columns: int = 8) -> Path:
    """Save images ``[N, C, H, W]`` (C = 1 or 3, any value range: each image is min-max scaled)
    as a PNG grid, one caption (and caption colour) per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu()
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    rows = math.ceil(len(images) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.3 * columns, 1.45 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        image = images[i]
        ax.imshow(image[0] if image.shape[0] == 1 else image.permute(1, 2, 0), cmap="gray", interpolation="nearest")
        if i < len(captions):
            ax.set_title(captions[i], fontsize=8, color=colors[i] if i < len(colors) else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["image_grid"]
