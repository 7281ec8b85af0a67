"""The ICL transformer's soft-prompt hook (``prompt_embeds``): without it the output is the
original forward's bit for bit, with it the prompt is prepended after the read-in (no position,
visible to every data token), predictions stay causal, and a prompt of the wrong width ends in one
line."""

from __future__ import annotations

import pytest
import torch

import zoo
from data_modules.icl_tasks import sample_prompts
from zoo.core.errors import ShapeError
from zoo.icl.model import ICLTransformer, encoder_tokens, interleave

pytestmark = pytest.mark.usefixtures("one_thread")


def original(net: ICLTransformer, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The forward pass as it was before the hook, written out from the submodules."""
    def trunk(tokens, mask, prompt=None):
        h = net.read_in(tokens)
        if net.positions is not None:
            h = h + net.positions[: h.shape[1]]
        m = 0 if prompt is None else prompt.shape[1]
        if prompt is not None:
            h = torch.cat([prompt, h], 1)
        for block in net.blocks:
            h = block(h, mask)
        return net.read_out(net.norm(h[:, m:])).squeeze(-1)

    b, n, _ = xs.shape
    if net.backbone == "gpt2":
        t = 2 * n
        return trunk(interleave(xs, ys), torch.ones(t, t, dtype=torch.bool).tril()[None, None])[:, ::2]
    prefixes = torch.arange(n)
    tokens = encoder_tokens(xs, ys, prefixes)
    keys = torch.arange(n) <= prefixes[:, None]
    mask = keys[None, :, None, None, :].expand(b, -1, 1, 1, -1).reshape(-1, 1, 1, n)
    out = trunk(tokens.reshape(-1, n, tokens.shape[-1]), mask).view(b, n, n)
    return out.gather(2, prefixes.view(1, -1, 1).expand(b, -1, 1)).squeeze(-1)


def prompts(n_dims=4, n=7, num=6):
    xs, ys, _ = sample_prompts("linear", num, n, n_dims, torch.Generator().manual_seed(0))
    return xs, ys


@pytest.mark.parametrize("backbone, attention", [("gpt2", "softmax"), ("encoder", "relu")])
def test_without_a_prompt_the_output_is_unchanged(backbone, attention):
    torch.manual_seed(0)
    net = ICLTransformer(4, 8, width=16, depth=2, heads=2, backbone=backbone, attention=attention).eval()
    xs, ys = prompts()
    with torch.no_grad():
        assert torch.equal(net(xs, ys), original(net, xs, ys))
        assert torch.equal(net(xs, ys, prompt_embeds=None), original(net, xs, ys))


def test_shipped_model_without_a_prompt_is_unchanged():
    module = zoo.load_pretrained("icl-linear-d5")
    xs, ys = prompts(n_dims=5, n=11)
    with torch.no_grad():
        assert torch.equal(module(xs, ys), original(module.net, xs, ys))


def test_gpt2_prompt_is_prepended_without_position_and_stays_causal():
    torch.manual_seed(0)
    net = ICLTransformer(4, 8, width=16, depth=2, heads=2).eval()
    xs, ys = prompts()
    prompt = torch.randn(3, 16)
    with torch.no_grad():
        out = net(xs, ys, prompt_embeds=prompt)
        h = torch.cat([prompt.expand(len(xs), -1, -1), net.read_in(interleave(xs, ys)) + net.positions[:14]], 1)
        causal = torch.ones(17, 17, dtype=torch.bool).tril()[None, None]
        for block in net.blocks:
            h = block(h, causal)
        torch.testing.assert_close(out, net.read_out(net.norm(h[:, 3:])).squeeze(-1)[:, ::2], rtol=0, atol=0)
        assert not torch.allclose(out, net(xs, ys)), "the prompt changes the predictions"
        batched = net(xs, ys, prompt_embeds=prompt.expand(len(xs), -1, -1))
        assert torch.equal(batched, out)
        later = ys.clone()
        later[:, 4:] += 1.0  # predictions at positions <= 4 see only y_0 .. y_3
        assert torch.equal(net(xs, later, prompt_embeds=prompt)[:, :5], out[:, :5])


def test_encoder_prompt_is_visible_to_every_prefix():
    torch.manual_seed(0)
    net = ICLTransformer(4, 8, width=16, depth=1, heads=2, backbone="encoder", attention="relu").eval()
    xs, ys = prompts()
    prompt = torch.randn(2, 16)
    with torch.no_grad():
        out = net(xs, ys, prompt_embeds=prompt)
        for i in (0, 3, 6):  # prefix i alone: its examples, its query, the prompt
            alone = net(xs[:, : i + 1], ys[:, : i + 1], prompt_embeds=prompt)[:, -1]
            torch.testing.assert_close(out[:, i], alone, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(out, net(xs, ys))


def test_a_prompt_of_the_wrong_width_ends_in_one_line():
    net = ICLTransformer(4, 8, width=16, depth=1, heads=2)
    xs, ys = prompts()
    with pytest.raises(ShapeError, match=r"prompt_embeds must be \[m, 16\] or \[6, m, 16\] \(the model's width 16\), "
                                         r"got \[3, 8\]"):
        net(xs, ys, prompt_embeds=torch.zeros(3, 8))
    with pytest.raises(ShapeError, match=r"got \[2, 3, 16\]"):
        net(xs, ys, prompt_embeds=torch.zeros(2, 3, 16))
