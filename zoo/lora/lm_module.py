"""Causal LM pre-training and LoRA fine-tuning as LightningModules (``python -m zoo fit``).

:class:`CausalLMModule` trains the zoo's Llama-style :class:`zoo.nn.causal_lm.CausalLM` from
scratch on next-token prediction over byte tokens (``data_modules.text``, vocabulary 259):

    L = -(1/N) sum_t log p_theta(x_{t+1} | x_{<=t})

Validation and test report ``loss`` and ``ppl = exp(loss)`` where ``loss`` is the token mean of the
NLL over the whole split (exact sums over every target, not a mean of batch means or of batch
perplexities). ``predict`` returns each block's mean NLL and writes ``samples.txt``: continuations
of :data:`PROMPTS` (greedy at ``temperature = 0``, else sampled with a fixed seed).

:class:`LoRAFineTune` fine-tunes a trained ``CausalLMModule`` (``base``: a registered name such as
``lm-pydoc`` or a checkpoint path of any module whose ``.model`` is the zoo's ``CausalLM``, read
through ``zoo.core.lm.load_causal_lm``, sha256 checked for registered files) with LoRA adapters ``W = W0 + (alpha / r) B A`` on
``lora_targets`` (``zoo.lora.adapter``; "partial" = q_proj, v_proj, "full" = q_proj, k_proj,
v_proj, or a list of module names); only the adapters are trainable. ``full_finetune=True`` is the
baseline that trains every weight of the base instead (no adapters). The base's LM shape
(``base_config``) and file sha256 (``base_sha256``) are recorded in the hyperparameters when the
base is first read, so a fine-tuned checkpoint, which holds the base weights too, reloads without
the base file.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import Tensor

from data_modules.text import ByteTokenizer
from zoo.core.errors import ConfigError
from zoo.core.lm import PROMPTS, NextTokenLM, TokenNLL, check_sampling, load_causal_lm
from zoo.lora.adapter import (
    apply_lora,
    check_hyperparameters,
    lora_layers,
    lora_parameter_count,
    mark_only_lora_as_trainable,
)
from zoo.nn.causal_lm import CAUSAL_LM_SIZES, CausalLM, LlamaConfig

__all__ = ["PROMPTS", "CausalLMModule", "LoRAFineTune", "TokenNLL", "load_base", "unigram_perplexity"]

class _NextTokenLM(NextTokenLM):
    """The shared steps (``zoo.core.lm.NextTokenLM``) with ``self.model`` a :class:`CausalLM` over byte tokens."""

    model: CausalLM

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer()


class CausalLMModule(_NextTokenLM):
    """A Llama-style causal LM trained from scratch on byte tokens (module docstring).

    Args:
        size: a name of ``zoo.nn.causal_lm.CAUSAL_LM_SIZES`` (``lm-tiny``, ``lm-small``, ``lm-base``).
        vocab_size: token ids the LM reads and predicts (259 = ``data_modules.text.ByteTokenizer``).
        max_position_embeddings: the longest sequence (prompt + generated) the LM takes.
        lr, weight_decay: AdamW under a per-step cosine schedule.
        sample_tokens, temperature: length and temperature of ``predict``'s samples (0 = greedy).
    """

    def __init__(self, size: str = "lm-tiny", vocab_size: int = 259, max_position_embeddings: int = 512,
                 lr: float = 0.003, weight_decay: float = 0.01, sample_tokens: int = 200,
                 temperature: float = 0.0) -> None:
        super().__init__()
        if size not in CAUSAL_LM_SIZES:
            raise ConfigError(f"CausalLMModule size must be one of {', '.join(CAUSAL_LM_SIZES)}, got {size!r}")
        check_sampling(sample_tokens, temperature)
        self.save_hyperparameters()
        self.model = CausalLM(LlamaConfig.from_name(size, vocab_size=vocab_size,
                                                    max_position_embeddings=max_position_embeddings))


def load_base(spec: str) -> tuple[CausalLM, str]:
    """The :class:`CausalLM` of a trained causal-LM module (registered name or checkpoint path) and
    its file's sha256 (``zoo.core.lm.load_causal_lm``)."""
    return load_causal_lm(spec, "LoRA base")


class LoRAFineTune(_NextTokenLM):
    """LoRA fine-tuning of a trained :class:`CausalLMModule` (module docstring).

    Args:
        base: registered name (``zoo.list_pretrained()``) or checkpoint path of a ``CausalLMModule``.
        base_config, base_sha256: the base's ``LlamaConfig`` fields and file sha256, filled in when the
            base file is read and saved with the checkpoint, which then rebuilds the model without
            the base file; not meant to be set by hand.
        lora_rank, lora_alpha, lora_dropout: the adapters' r, alpha (scale alpha / r) and input dropout.
        lora_targets: ``"partial"`` (q_proj, v_proj), ``"full"`` (q_proj, k_proj, v_proj), or module
            names (e.g. ``[q_proj, v_proj, gate_proj]``).
        full_finetune: train every weight of the base instead, without adapters (the baseline).
        lr, weight_decay, sample_tokens, temperature: as :class:`CausalLMModule`.
    """

    def __init__(self, base: str = "lm-pydoc", base_config: dict | None = None, base_sha256: str | None = None,
                 lora_rank: int = 4, lora_alpha: float = 8.0, lora_targets: str | list[str] = "partial",
                 lora_dropout: float = 0.0, full_finetune: bool = False, lr: float = 0.003,
                 weight_decay: float = 0.0, sample_tokens: int = 200, temperature: float = 0.0) -> None:
        super().__init__()
        check_sampling(sample_tokens, temperature)
        if not full_finetune:
            check_hyperparameters(lora_rank, lora_alpha, lora_dropout)
        self.save_hyperparameters()
        h = self.hparams
        if base_config is not None:
            self.model = CausalLM(LlamaConfig(**base_config))
        else:
            self.model, h.base_sha256 = load_base(base)
            h.base_config = asdict(self.model.config)
        if full_finetune:
            self.model.requires_grad_(True)
            return
        apply_lora(self.model, lora_targets if isinstance(lora_targets, str) else list(lora_targets),
                   r=lora_rank, alpha=lora_alpha, dropout=lora_dropout)
        mark_only_lora_as_trainable(self.model)
        trainable = [name for name, p in self.named_parameters() if p.requires_grad]
        assert all(name.endswith(("lora_A", "lora_B")) for name in trainable), trainable
        assert sum(p.numel() for p in self.parameters() if p.requires_grad) == lora_parameter_count(self.model)

    def parameter_counts(self) -> dict[str, int]:
        return {**super().parameter_counts(), "params/lora": lora_parameter_count(self.model),
                "params/lora_layers": len(lora_layers(self.model))}


def unigram_perplexity(train_tokens: Tensor, test_tokens: Tensor, vocab_size: int = 259) -> float:
    """Perplexity on ``test_tokens[1:]`` of add-one-smoothed token frequencies of ``train_tokens``
    (a baseline that ignores context)."""
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[test_tokens[1:]].mean()))
