"""zoo: a PyTorch Lightning model zoo for one research line.

``python -m zoo fit --config configs/<paper>/<experiment>.yaml`` trains; ``zoo.load_pretrained``
returns the shipped checkpoints (see ``zoo.pretrained``).
"""

from zoo.pretrained import list_pretrained, load_pretrained, pretrained_info

__version__ = "0.1.0"
__all__ = ["list_pretrained", "load_pretrained", "pretrained_info"]
