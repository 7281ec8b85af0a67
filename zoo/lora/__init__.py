"""LoRA and its computational limits (Hu, Su, Chen, Liu, 2024, "Computational Limits of Low-Rank
Adaptation (LoRA) for Transformer-Based Models").

Paper -> code:
- Sec. 2, the LoRA update ``W = W* + (alpha / r) B A`` on the attention weights, "partial"
  (W_Q, W_V) and "full" (W_Q, W_K, W_V) adaptation: ``adapter.LoRALinear``, ``adapter.apply_lora``
  and the adapter-only state dict and checkpoint helpers in ``adapter``.
- Secs. 3-5, the exact LoRA gradient of one attention layer, its almost-linear-time approximation
  (low-rank / polynomial approximation of ``exp(Q K^T)`` chained through the gradient terms) and the
  norm threshold above which no sub-quadratic algorithm exists: ``limits.LoRAProblem``,
  ``limits.lora_gradient`` (exact, by hand), ``limits.approx_lora_gradient`` (chained polynomial
  factorizations of ``exp(Q K^T)``, linear in L) and ``benchmarks/lora/limits.py`` (the threshold
  and time vs L).
- Experiments: ``lm_module.CausalLMModule`` pre-trains the zoo's causal LM (``zoo.nn.causal_lm``) on
  byte tokens of an embedded corpus (``data_modules.text``); ``lm_module.LoRAFineTune`` fine-tunes a
  trained one with LoRA ("partial", "full", any module names) or in full (the baseline), reporting
  held-out perplexity and trainable-parameter counts (``configs/lora``, ``docs/lora.md``).
- Any other zoo model through the CLI: ``callback.LoRA``, a Lightning callback (``trainer.callbacks``)
  that loads a registered base, adapts the named linear layers and freezes the rest
  (``configs/lora/icl_*.yaml``, ``configs/lora/dit_*.yaml``).

The adapter code is plain torch; only ``lm_module`` and ``callback`` import Lightning.
"""

from zoo.lora.adapter import (
    PRESETS,
    LoRALinear,
    apply_lora,
    load_adapter,
    load_lora_state_dict,
    lora_parameter_count,
    lora_state_dict,
    mark_only_lora_as_trainable,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from zoo.lora.callback import LoRA
from zoo.lora.limits import (
    ADAPTATIONS,
    LoRAProblem,
    approx_lora_gradient,
    lora_gradient,
    lora_loss,
    random_problem,
    relative_error,
)
from zoo.lora.lm_module import CausalLMModule, LoRAFineTune

__all__ = [
    "ADAPTATIONS",
    "PRESETS",
    "CausalLMModule",
    "LoRA",
    "LoRAFineTune",
    "LoRALinear",
    "LoRAProblem",
    "approx_lora_gradient",
    "apply_lora",
    "load_adapter",
    "load_lora_state_dict",
    "lora_gradient",
    "lora_loss",
    "lora_parameter_count",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "random_problem",
    "relative_error",
    "save_adapter",
    "unmerge_lora",
]
