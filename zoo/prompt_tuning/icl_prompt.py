"""Soft prompts on a frozen in-context regressor (the ICL transformer of ``zoo.icl``, reached through
the registry or duck-typed: this package does not import ``zoo.icl``).

The base maps a prompt of examples ``xs [B, n, d], ys [B, n]`` to in-context predictions
``f(xs, ys)[:, i]`` made from the ``i`` examples before position ``i`` and ``x_i``. Prompt tuning
prepends ``m`` trainable vectors ``P [m, width]`` in the base's hidden width after its read-in,

    yhat_i = f(P; x_1, y_1, ..., x_{i-1}, y_{i-1}, x_i),

and trains only ``P`` (``SoftPrompt``, PEFT's random init ``N(0, 1)`` times ``init_scale``) on
the normalized in-context error of a shifted task,

    L(P) = (1/n) sum_i (yhat_i - y_i)^2 / Var(y),

so that one prompt adapts the frozen learner to a task distribution it was not trained on. A base
qualifies when its ``forward(xs, ys, prompt_embeds=...)`` takes the leading vectors (``zoo.icl``'s
``InContextRegression``) and it records its ``width`` in ``hparams``.
"""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from zoo.core.errors import ConfigError
from zoo.core.registry import load_pretrained
from zoo.prompt_tuning.soft_prompt import SoftPrompt


def prompt_width(base: nn.Module) -> int:
    """The hidden width a prompt for ``base`` must have, or a one-line ``ConfigError`` when ``base``
    cannot take a prompt."""
    forward = getattr(base, "forward", None)
    if forward is None or "prompt_embeds" not in inspect.signature(forward).parameters:
        raise ConfigError(f"prompt-tuning base {type(base).__name__} takes no prompt_embeds; expected an in-context "
                          f"regressor whose forward(xs, ys, prompt_embeds=...) reads leading vectors "
                          f"(e.g. 'icl-linear-d5')")
    width = getattr(getattr(base, "hparams", {}), "get", lambda _: None)("width")
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ConfigError(f"prompt-tuning base {type(base).__name__} records no positive integer width in its "
                          f"hparams, got {width!r}; expected the hidden width of its prompt_embeds")
    return width


class PromptedRegressor(nn.Module):
    """A frozen in-context regressor read after a trainable soft prompt (module docstring).

    Args:
        base: the frozen regressor (its parameters get ``requires_grad = False``; it stays in eval mode).
        num_virtual_tokens: ``m``, the prompt's length.
        init_scale: the prompt's init is ``N(0, init_scale^2)``.
    """

    def __init__(self, base: nn.Module, num_virtual_tokens: int, init_scale: float = 1.0) -> None:
        super().__init__()
        width = prompt_width(base)
        self.base_model = base.requires_grad_(False).eval()
        self.prompt = SoftPrompt(num_virtual_tokens, width)
        self.prompt.embedding.weight.data.mul_(init_scale)

    def train(self, mode: bool = True) -> PromptedRegressor:
        """Train mode for the prompt only: the frozen base stays in eval mode."""
        super().train(mode)
        self.base_model.eval()
        return self

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """In-context predictions ``[B, n]`` read after the prompt."""
        return self.base_model(xs, ys, prompt_embeds=self.prompt.embedding.weight)


def load_prompted_regressor(name: str, num_virtual_tokens: int, init_scale: float = 1.0) -> PromptedRegressor:
    """A soft prompt on the registered in-context regressor ``name`` (``zoo.load_pretrained``:
    sha256-checked, ``weights_only``)."""
    return PromptedRegressor(load_pretrained(name), num_virtual_tokens, init_scale)
