"""AdamW for the DiT modules: the fused CUDA kernel (one launch for all parameters' updates)
whenever every parameter lives on a CUDA device; elsewhere torch's default implementation, so
CPU training is unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def _groups(params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list:
    """``params`` as a list, each group's ``params`` as a list (generators are read once)."""
    return [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]


def fusable(groups: list) -> bool:
    """Whether the fused AdamW kernel takes all of ``groups``' parameters: floating point, on CUDA."""
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    return bool(tensors) and all(p.device.type == "cuda" and p.is_floating_point() for p in tensors)


def adamw(params: Iterable[Tensor] | Iterable[dict[str, Any]], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)``, with ``fused=True`` when :func:`fusable`."""
    groups = _groups(params)
    if fusable(groups):
        kwargs.setdefault("fused", True)
    return torch.optim.AdamW(groups, **kwargs)


def adamw_cosine(module) -> dict[str, Any]:
    """``ZooModule``'s default optimizer (AdamW at ``hparams.lr`` / ``weight_decay`` on
    ``module.parameter_groups()``, cosine decay to 0 per step over the run), through :func:`adamw`."""
    optimizer = adamw(module.parameter_groups(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay)
    steps = max(int(module.trainer.estimated_stepping_batches), 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
