"""Soft prompts on the shipped ICL transformer through the registry: the prompted forward is the
base's ``prompt_embeds`` path, only the prompt gets gradients and the base stays bit-identical (and
in eval mode), a few steps on a shifted task lower the loss, and bases that cannot take a prompt end
in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import zoo
from data_modules.icl_tasks import sample_prompts
from zoo.core.errors import ConfigError
from zoo.prompt_tuning.icl_prompt import PromptedRegressor, load_prompted_regressor, prompt_width

pytestmark = pytest.mark.usefixtures("one_thread")


def shifted(num: int, seed: int, scale: float = 3.0):
    """Prompts of ``y = scale * w^T x`` for icl-linear-d5 (d = 5, 11 examples) and their variance."""
    xs, ys, var = sample_prompts("linear", num, 11, 5, torch.Generator().manual_seed(seed))
    return xs, scale * ys, scale**2 * var


def test_the_prompted_forward_is_the_bases_prompt_path():
    torch.manual_seed(0)
    model = load_prompted_regressor("icl-linear-d5", 3)
    assert model.prompt.embedding.weight.shape == (3, 64)
    xs, ys, _ = shifted(4, 0)
    with torch.no_grad():
        expected = model.base_model.net(xs, ys, prompt_embeds=model.prompt.embedding.weight)
        assert torch.equal(model(xs, ys), expected)
        assert not torch.allclose(model(xs, ys), model.base_model(xs, ys))


def test_only_the_prompt_trains_and_the_loss_falls():
    torch.manual_seed(0)
    model = load_prompted_regressor("icl-linear-d5", 2)
    model.train()
    assert not model.base_model.training, "the frozen base stays in eval mode"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt.embedding.weight"]
    base = {k: v.clone() for k, v in zoo.load_pretrained("icl-linear-d5").state_dict().items()}
    optimizer = torch.optim.Adam(model.prompt.parameters(), lr=0.03)
    xs, ys, var = shifted(64, 1)
    losses = []
    for step in range(25):
        loss = ((model(xs, ys) - ys) ** 2 / var[:, None]).mean()
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in model.named_parameters()}
            assert grads.pop("prompt.embedding.weight").abs().sum() > 0
            assert all(g is None for g in grads.values())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    own = model.base_model.state_dict()
    assert own.keys() == base.keys() and all(torch.equal(own[k], base[k]) for k in base), "base bit-identical"


class NoPrompt(nn.Module):
    def forward(self, xs, ys):
        return ys


class NoWidth(nn.Module):
    def forward(self, xs, ys, prompt_embeds=None):
        return ys


def test_a_base_that_cannot_take_a_prompt_ends_in_one_line():
    with pytest.raises(ConfigError, match="prompt-tuning base NoPrompt takes no prompt_embeds; expected an in-context "
                                          "regressor"):
        prompt_width(NoPrompt())
    with pytest.raises(ConfigError, match="base NoWidth records no positive integer width in its hparams, got None"):
        PromptedRegressor(NoWidth(), 2)
    with pytest.raises(ConfigError, match="num_virtual_tokens must be a positive integer, got 0"):
        load_prompted_regressor("icl-linear-d5", 0)
