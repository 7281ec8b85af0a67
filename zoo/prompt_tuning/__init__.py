"""Prompt tuning and its fundamental limits (Hu et al., ICLR 2025, "Fundamental Limits of Prompt
Tuning Transformers: Universality, Capacity and Efficiency").

Paper -> code:
- The setting, prompt tuning of a frozen transformer: ``m`` trainable soft-prompt vectors
  prepended to the input embeddings, only they are trained (PEFT's ``PromptTuningConfig``:
  ``num_virtual_tokens``, init random / from text / from the vocabulary): ``soft_prompt.SoftPrompt``,
  ``soft_prompt.PromptTuned`` (on the zoo's causal LM ``zoo.nn.causal_lm.CausalLM`` or a Hugging
  Face causal LM, through ``inputs_embeds``; generation with the KV cache) and prompt files that
  name their base by sha256 (``soft_prompt.save_prompt`` / ``load_prompt``).
- Real use, as the paper's motivation: ``lm_module.PromptTuneLM`` prompt-tunes the shipped byte-level
  LM ``lm-pydoc`` on held-out text (``configs/prompt_tuning``, ``docs/prompt_tuning.md``, beside
  LoRA and full fine-tuning from ``docs/lora.md``); its checkpoints hold the prompt only.
- Not built yet (the next part of issue 18): universality of prompt tuning on a one-layer,
  one-head transformer (Lipschitz sequence-to-sequence maps), the memorization-capacity lower
  bound (prompt length exponential in dL and 1/epsilon), and the efficiency phase transition in the
  norm of the soft-prompt-induced queries and keys.

The soft prompt is plain torch; only ``lm_module`` imports Lightning.
"""

from zoo.prompt_tuning.lm_module import PromptTuneLM, load_causal_lm
from zoo.prompt_tuning.soft_prompt import (
    INITS,
    PromptTuned,
    SoftPrompt,
    input_embeddings,
    load_prompt,
    save_prompt,
)

__all__ = [
    "INITS",
    "PromptTuneLM",
    "PromptTuned",
    "SoftPrompt",
    "input_embeddings",
    "load_causal_lm",
    "load_prompt",
    "save_prompt",
]
