"""Pictures people would rather look at than read: image grids with captions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


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
        pixels = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
        ax.imshow(pixels.numpy(), cmap="gray", interpolation="nearest")
        if i < len(captions):
            ax.set_title(captions[i], fontsize=8, color=colors[i] if i < len(colors) else "black")
    return save_figure(fig, path)





def forecast_panel(history: Tensor, target: Tensor, forecast: Tensor, path: str | Path, channel: int = -1,
                   title: str = "") -> Path:
    """Plot windows side by side: look-back ``history [N, L, C]``, then ``target`` and
    ``forecast [N, H, C]`` of one channel (the last, e.g. ETT's OT, by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history, target, forecast = (t.detach().float().cpu()[..., channel] for t in (history, target, forecast))
    n, lookback, horizon = len(history), history.shape[1], target.shape[1]
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 2.8), squeeze=False)
    past, future = range(lookback), range(lookback, lookback + horizon)
    for i, ax in enumerate(axes[0]):
        ax.plot(past, history[i].numpy(), color="0.4", lw=1, label="look-back")
        ax.plot(future, target[i].numpy(), color="black", lw=1.2, label="truth")
        ax.plot(future, forecast[i].numpy(), color="tab:red", lw=1.2, label="forecast")
        ax.axvline(lookback - 0.5, color="0.7", lw=0.8, ls="--")
        ax.set_xlabel("step")
        if i == 0:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


__all__ = ["forecast_panel", "image_grid"]
