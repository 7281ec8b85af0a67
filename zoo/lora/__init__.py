"""LoRA and its computational limits (Hu, Su, Chen, Liu, 2024, "Computational Limits of Low-Rank
Adaptation (LoRA) for Transformer-Based Models").

Paper -> code:
- Sec. 2, the LoRA update ``W = W* + (alpha / r) B A`` on the attention weights, "partial"
  (W_Q, W_V) and "full" (W_Q, W_K, W_V) adaptation: ``adapter.LoRALinear``, ``adapter.apply_lora``
  and the adapter-only state dict and checkpoint helpers in ``adapter``.
- Secs. 3-5, the exact LoRA gradient of one attention layer, its almost-linear-time approximation
  (low-rank / polynomial approximation of ``exp(Q K^T)`` chained through the gradient terms) and the
  norm threshold above which no sub-quadratic algorithm exists: to come.

Plain torch; no Lightning import.
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

__all__ = [
    "PRESETS",
    "LoRALinear",
    "apply_lora",
    "load_adapter",
    "load_lora_state_dict",
    "lora_parameter_count",
    "lora_state_dict",
    "mark_only_lora_as_trainable",
    "merge_lora",
    "save_adapter",
    "unmerge_lora",
]
