"""zoo: a PyTorch Lightning model zoo for one research line.

``python -m zoo fit --config configs/<paper>/<experiment>.yaml`` trains; ``zoo.load_pretrained``
returns the shipped checkpoints (``zoo.core.registry``). One package per paper: ``zoo.ndlinear``,
``zoo.hopfield``, ``zoo.dit``, ``zoo.icl``, ``zoo.alignab``, ``zoo.dp_strings``; shared layers in
``zoo.nn``, the CLI, registry and base classes in ``zoo.core``. Importing ``zoo`` imports neither
torch nor Lightning: the registry functions below load on first use.
"""

__version__ = "0.1.0"
__all__ = ["list_pretrained", "load_pretrained", "pretrained_info"]


def __getattr__(name: str):
    if name in __all__:
        from zoo.core import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
