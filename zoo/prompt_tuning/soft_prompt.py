"""Soft prompts: ``m`` trainable vectors prepended to the input embeddings of a frozen causal LM.

Prompt tuning (Lester, Al-Rfou, Constant, 2021), the setting of "Fundamental Limits of Prompt
Tuning Transformers" (Hu et al., ICLR 2025): a frozen model ``f`` reads the embedded tokens
``E x_1 .. E x_L``; prompt tuning prepends ``m`` free vectors ``p_1 .. p_m`` (``m =
num_virtual_tokens``, each of the model's width) and trains only them::

    logits = f([p_1, .., p_m, E x_1, .., E x_L])          ([B, m + L, vocab])

Positions count the virtual tokens (``p_i`` sits at position ``i - 1``, the first token at ``m``)
and an ``attention_mask`` gets ``m`` leading ones, as PEFT's ``PromptTuningConfig`` /
``get_peft_model`` does for a ``CAUSAL_LM``: with the same prompt, :class:`PromptTuned` gives the
logits PEFT gives (tested on a tiny Hugging Face Llama).

Initialisation (PEFT's ``prompt_tuning_init``, :data:`INITS`):

- ``"random"``: ``nn.Embedding``'s ``N(0, 1)`` (PEFT's ``RANDOM``);
- ``"text"``: the embeddings ``E t`` of the token ids ``t`` of an init text, repeated to fill ``m``
  rows (PEFT's ``TEXT``; a text of more than ``m`` tokens is refused here, where PEFT truncates it);
- ``"vocab"``: ``m`` rows of ``E`` drawn uniformly with replacement (PEFT's ``SAMPLE_VOCAB``, the
  same draw from the same seed).

A prompt file (:func:`save_prompt`) holds the ``m x d`` prompt, its init and the name and sha256 of
the base model's checkpoint, so that :func:`load_prompt` refuses a prompt tuned on another base.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from zoo.core.base_files import load_base_file, save_base_file
from zoo.core.errors import CheckpointError, ConfigError, ShapeError
from zoo.nn.causal_lm import CausalLM, check_token_ids

INITS = ("random", "text", "vocab")
PROMPT_FORMAT = "zoo-soft-prompt"
PROMPT_VERSION = 1


def check_num_virtual_tokens(num_virtual_tokens: int) -> None:
    if isinstance(num_virtual_tokens, bool) or not isinstance(num_virtual_tokens, int) or num_virtual_tokens <= 0:
        raise ConfigError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens!r}")


class SoftPrompt(nn.Module):
    """The prompt ``P [m, d]`` as PEFT's ``PromptEmbedding`` keeps it (``embedding.weight``).

    Args:
        num_virtual_tokens: ``m``, the number of prompt vectors, ``>= 1``.
        token_dim: ``d``, the width of the model's input embeddings.
        init: ``"random"``, ``"text"`` or ``"vocab"`` (module docstring).
        word_embeddings: the model's input embedding ``E`` (``"text"`` and ``"vocab"`` read it).
        init_token_ids: the init text's token ids, 1 to ``m`` of them (``"text"`` only).
    """

    def __init__(self, num_virtual_tokens: int, token_dim: int, init: str = "random",
                 word_embeddings: nn.Embedding | None = None, init_token_ids: Sequence[int] | None = None) -> None:
        super().__init__()
        check_num_virtual_tokens(num_virtual_tokens)
        if isinstance(token_dim, bool) or not isinstance(token_dim, int) or token_dim <= 0:
            raise ConfigError(f"soft prompt token_dim must be a positive integer, got {token_dim!r}")
        if init not in INITS:
            raise ConfigError(f"soft prompt init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.embedding = nn.Embedding(num_virtual_tokens, token_dim)  # N(0, 1): PEFT's RANDOM
        if init == "random":
            return
        if word_embeddings is None:
            raise ConfigError(f"soft prompt init {init!r} reads the model's word embeddings; none were given")
        vocab_size, width = word_embeddings.weight.shape
        if width != token_dim:
            raise ConfigError(f"soft prompt token_dim={token_dim} does not match the word embeddings' width {width}")
        if init == "vocab":
            ids = torch.randint(0, vocab_size, (num_virtual_tokens,), dtype=torch.long)
        else:
            ids = self._text_ids(init_token_ids, num_virtual_tokens, vocab_size)
        with torch.no_grad():
            self.embedding.weight.copy_(word_embeddings.weight.detach()[ids.to(word_embeddings.weight.device)])

    @staticmethod
    def _text_ids(init_token_ids: Sequence[int] | None, num_virtual_tokens: int, vocab_size: int) -> Tensor:
        """The init text's ids repeated to ``num_virtual_tokens`` (1 to ``m`` ids in range)."""
        ids = [] if init_token_ids is None else [int(i) for i in init_token_ids]
        if not ids:
            raise ConfigError("soft prompt init 'text' needs a non-empty init text, got no tokens")
        if len(ids) > num_virtual_tokens:
            raise ConfigError(f"soft prompt init text has {len(ids)} tokens, more than num_virtual_tokens="
                              f"{num_virtual_tokens}; expected at most that many")
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ConfigError(f"soft prompt init text token id {bad[0]} is out of range 0 .. {vocab_size - 1}")
        repeats = -(-num_virtual_tokens // len(ids))
        return torch.tensor((ids * repeats)[:num_virtual_tokens], dtype=torch.long)

    @property
    def num_virtual_tokens(self) -> int:
        return self.embedding.num_embeddings

    @property
    def token_dim(self) -> int:
        return self.embedding.embedding_dim

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        """``[B, L, d]`` -> ``[P, inputs_embeds]``, ``[B, m + L, d]`` (P in the inputs' dtype)."""
        batch = inputs_embeds.shape[0]
        prompt = self.embedding.weight.to(inputs_embeds.dtype)[None].expand(batch, -1, -1)
        return torch.cat([prompt, inputs_embeds], dim=1)

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, token_dim={self.token_dim}, init={self.init!r}"


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding ``E`` of the zoo's :class:`CausalLM` or a ``transformers`` model."""
    if isinstance(model, CausalLM):
        return model.model.embed_tokens
    getter = getattr(model, "get_input_embeddings", None)
    embedding = getter() if callable(getter) else None
    if not isinstance(embedding, nn.Embedding):
        raise ConfigError(f"{type(model).__name__} has no input embedding to prompt; expected the zoo's CausalLM "
                          f"or a transformers model with get_input_embeddings()")
    return embedding


class PromptTuned(nn.Module):
    """A frozen causal LM (``base_model``: the zoo's :class:`CausalLM` or a ``transformers`` causal
    LM that takes ``inputs_embeds``) reading a trainable :class:`SoftPrompt` (``prompt``) first.

    ``forward`` returns PEFT's logits ``[B, m + L, vocab]``, virtual positions included;
    ``generate`` decodes after the prompt with the base model's KV cache."""

    def __init__(self, base_model: nn.Module, prompt: SoftPrompt) -> None:
        super().__init__()
        width = input_embeddings(base_model).embedding_dim
        if prompt.token_dim != width:
            raise ConfigError(f"soft prompt width {prompt.token_dim} does not match {type(base_model).__name__}'s "
                              f"embedding width {width}")
        self.base_model = base_model.requires_grad_(False)
        self.prompt = prompt

    @property
    def num_virtual_tokens(self) -> int:
        return self.prompt.num_virtual_tokens

    def _mask(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor | None:
        """The mask with ``m`` leading ones; one-line errors for bad ids or masks."""
        check_token_ids(input_ids, input_embeddings(self.base_model).num_embeddings)
        if attention_mask is None:
            return None
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ShapeError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected that of "
                             f"input_ids {tuple(input_ids.shape)} (the prompt's ones are added here)")
        ones = attention_mask.new_ones(input_ids.shape[0], self.num_virtual_tokens)
        return torch.cat([ones, attention_mask], dim=1)

    def _prefix(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``[P, E x]`` and the mask with ``m`` leading ones."""
        mask = self._mask(input_ids, attention_mask)
        return self.prompt(input_embeddings(self.base_model)(input_ids)), mask

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``input_ids [B, L]`` -> logits ``[B, m + L, vocab]``; ``attention_mask [B, L]`` as the base's."""
        embeds, mask = self._prefix(input_ids, attention_mask)
        out = self.base_model(inputs_embeds=embeds, attention_mask=mask)
        return out if isinstance(out, Tensor) else out.logits

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int, attention_mask: Tensor | None = None,
                 **kwargs) -> Tensor:
        """``input_ids [B, L]`` and ``max_new_tokens`` tokens decoded after ``[P, E x]`` with the KV
        cache, ``[B, L + max_new_tokens]``. ``kwargs`` go to the base's ``generate`` (zoo: ``temperature``,
        ``top_k``, ``generator``; ``transformers``: its generation options, greedy by default)."""
        if isinstance(self.base_model, CausalLM):
            mask = self._mask(input_ids, attention_mask)  # CausalLM.generate embeds the ids itself
            dtype = self.base_model.model.embed_tokens.weight.dtype
            prompt = self.prompt.embedding.weight.to(dtype)[None].expand(input_ids.shape[0], -1, -1)
            return self.base_model.generate(input_ids, max_new_tokens, attention_mask=mask, inputs_embeds=prompt,
                                            **kwargs)
        embeds, mask = self._prefix(input_ids, attention_mask)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        new = self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       **{"do_sample": False, **kwargs})
        return torch.cat([input_ids, new[:, -max_new_tokens:]], dim=1)


def save_prompt(path: str | Path, prompt: SoftPrompt, base_name: str, base_sha256: str) -> None:
    """Write the prompt ``[m, d]`` with its init and the base's registry name (or path) and sha256."""
    save_base_file(path, "prompt file", PROMPT_FORMAT, PROMPT_VERSION, base_name, base_sha256, init=prompt.init,
                   weight=prompt.embedding.weight.detach().cpu().clone())


def load_prompt(path: str | Path, base_sha256: str) -> tuple[SoftPrompt, dict]:
    """The :class:`SoftPrompt` of a :func:`save_prompt` file, for the base whose file hashes to
    ``base_sha256`` (a prompt tuned on another base is refused), and ``{"base_name", "base_sha256",
    "init"}`` as saved."""
    payload = load_base_file(path, "prompt file", "soft prompt file", PROMPT_FORMAT, PROMPT_VERSION, base_sha256,
                             verb="tuned")
    weight = payload.get("weight")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise CheckpointError(f"prompt file {str(path)!r} has no prompt matrix [num_virtual_tokens, token_dim]")
    prompt = SoftPrompt(weight.shape[0], weight.shape[1], "random")
    with torch.no_grad():
        prompt.embedding.weight.copy_(weight)
    prompt.init = payload["init"]
    return prompt, {key: payload[key] for key in ("base_name", "base_sha256", "init")}


class PromptOnlyCheckpoint:
    """Mixin for a LightningModule whose ``self.model`` is a prompt (``self.model.prompt``, a
    :class:`SoftPrompt`) on a frozen model kept under the state-dict prefix ``frozen_prefix``:
    checkpoints hold everything but the frozen weights (the module's ``__init__`` rebuilds or
    re-reads those), and ``parameter_counts`` reports the prompt's size. List it before the
    LightningModule base: ``class M(PromptOnlyCheckpoint, ZooModule)``."""

    frozen_prefix: str

    def parameter_counts(self) -> dict[str, int]:
        return {**super().parameter_counts(), "params/prompt": self.model.prompt.embedding.weight.numel()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Drop the frozen model's weights."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if not k.startswith(self.frozen_prefix)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Put the frozen weights built in ``__init__`` back beside the saved prompt."""
        frozen = {k: v for k, v in self.state_dict().items() if k.startswith(self.frozen_prefix)}
        checkpoint["state_dict"] = {**frozen, **checkpoint["state_dict"]}
