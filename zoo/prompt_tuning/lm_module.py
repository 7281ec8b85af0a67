"""Prompt tuning of a shipped causal LM as a LightningModule (``python -m zoo fit``).

:class:`PromptTuneLM` reads a trained zoo causal LM (``base``: a registered name such as
``lm-pydoc`` or a checkpoint path, sha256 checked for registered files, built through the registry)
and trains only a soft prompt ``P [m, d]`` (``zoo.prompt_tuning.soft_prompt``) on next-token
prediction of byte tokens (``data_modules.text``):

    L = -(1/N) sum_t log p(x_{t+1} | P, x_{<=t})

The logits of the ``m`` virtual positions are dropped: the loss and the metrics are those of the
real tokens, so they compare with the base's and with LoRA's (``docs/lora.md``). Validation and
test report ``loss`` (token mean of the NLL over the whole split) and ``ppl = exp(loss)``.

Checkpoints hold the prompt only: ``on_save_checkpoint`` drops the base's weights, and the
hyperparameters name the base (``base``) and its file's sha256 (``base_sha256``, filled in when
the base is first read). Loading reads the base again and refuses a base whose sha256 differs from
the recorded one, so a checkpoint of a few hundred numbers never runs on the wrong model.
"""

from __future__ import annotations

from torch import Tensor

from data_modules.text import ByteTokenizer
from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.lm import PROMPTS, NextTokenLM, check_sampling, load_causal_lm
from zoo.prompt_tuning.soft_prompt import (
    INITS,
    PromptOnlyCheckpoint,
    PromptTuned,
    SoftPrompt,
    check_num_virtual_tokens,
)

__all__ = ["PROMPTS", "PromptTuneLM", "load_causal_lm"]

#: State-dict prefix of the frozen base's weights, left out of checkpoints.
BASE_PREFIX = "model.base_model."


class PromptTuneLM(PromptOnlyCheckpoint, NextTokenLM):
    """A soft prompt on a frozen, trained causal LM (module docstring).

    Args:
        base: registered name (``zoo.list_pretrained()``) or checkpoint path whose module's ``.model``
            is the zoo's ``CausalLM`` (``lm-pydoc``).
        base_sha256: the base file's sha256, filled in when the base is read and saved with the
            checkpoint; a base whose file hashes otherwise is refused. Not meant to be set by hand.
        num_virtual_tokens: ``m``, the prompt's length.
        prompt_init: ``"random"`` (N(0, 1)), ``"text"`` (the embeddings of ``prompt_init_text``'s
            bytes, repeated to ``m``) or ``"vocab"`` (``m`` random rows of the embedding).
        prompt_init_text: the init text for ``"text"``: 1 to ``m`` bytes of UTF-8.
        lr, weight_decay: AdamW on the prompt under a per-step cosine schedule.
        sample_tokens, temperature: length and temperature of ``predict``'s samples (0 = greedy).
    """

    frozen_prefix = BASE_PREFIX

    def __init__(self, base: str = "lm-pydoc", base_sha256: str | None = None, num_virtual_tokens: int = 16,
                 prompt_init: str = "vocab", prompt_init_text: str | None = None, lr: float = 0.03,
                 weight_decay: float = 0.0, sample_tokens: int = 200, temperature: float = 0.0) -> None:
        super().__init__()
        check_num_virtual_tokens(num_virtual_tokens)
        if prompt_init not in INITS:
            raise ConfigError(f"PromptTuneLM prompt_init must be one of {', '.join(INITS)}, got {prompt_init!r}")
        if prompt_init == "text" and (not isinstance(prompt_init_text, str) or not prompt_init_text):
            raise ConfigError(f"PromptTuneLM prompt_init 'text' needs a non-empty prompt_init_text, "
                              f"got {prompt_init_text!r}")
        check_sampling(sample_tokens, temperature)
        self.save_hyperparameters()
        lm, digest = load_causal_lm(base, "prompt-tuning base")
        if base_sha256 is not None and base_sha256 != digest:
            raise CheckpointError(f"this prompt was tuned on base {base!r} with sha256 {base_sha256[:16]}..., but "
                                  f"{base!r} now has sha256 {digest[:16]}...; expected the same base file")
        self.hparams.base_sha256 = digest
        self.tokenizer = ByteTokenizer()
        ids = self.tokenizer.encode(prompt_init_text) if prompt_init == "text" else None
        embeddings = lm.model.embed_tokens
        prompt = SoftPrompt(num_virtual_tokens, embeddings.embedding_dim, prompt_init, embeddings, ids)
        self.model = PromptTuned(lm, prompt)
        assert [n for n, p in self.named_parameters() if p.requires_grad] == ["model.prompt.embedding.weight"]

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits ``[B, T, vocab]`` of token ids ``[B, T]`` read after the prompt."""
        self.check_shape("input_ids", input_ids, [None, None])
        return self.model(input_ids)[:, self.model.num_virtual_tokens:]

