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
- The paper's setting, measured (``limits``; ``benchmarks/prompt_tuning/limits.py``,
  ``docs/prompt_tuning.md``): the single-layer, single-head transformer ``limits.OneLayerTransformer``
  (attention + FFN with residuals, frozen random weights, projections named ``q_proj`` .. ``fc2`` so
  LoRA can adapt them; ``limits.reference_forward`` is its slow loop reference) and
  ``limits.PromptedTransformer`` (a ``SoftPrompt`` on it, only the prompt trains).
  Universality (Lipschitz sequence-to-sequence maps): ``data_modules.seq2seq.lipschitz_map``, ``limits.fit``,
  ``limits.relative_error``. Memorization capacity (prompt length needed for N pairs):
  ``limits.worst_pair_error``. Efficiency phase transition (norm of the soft-prompt-induced queries
  and keys): ``limits.prompt_qkv``, ``limits.entry_scale`` and ``attention="fast"`` (the polynomial
  method of ``zoo.nn.fast_attention``). The data (random Lipschitz maps, random pairs) is
  ``data_modules.seq2seq``; ``limits_module.PromptTuneOneLayer`` runs universality and memorization
  as LightningCLI fits (``configs/prompt_tuning/universality.yaml``, ``memorization.yaml``).
- A soft prompt on any frozen zoo transformer, the in-context learner included:
  ``icl_prompt.PromptedRegressor`` prepends the prompt to the ICL transformer's hidden tokens through
  its ``prompt_embeds`` hook (base read through the registry, ``load_prompted_regressor``; this
  package does not import ``zoo.icl``); ``benchmarks/prompt_tuning/icl_shift.py`` tunes
  ``icl-linear-d5`` toward shifted tasks.

The soft prompt is plain torch; only ``lm_module`` and ``limits_module`` import Lightning.
"""

from data_modules.seq2seq import lipschitz_map
from zoo.prompt_tuning.icl_prompt import PromptedRegressor, load_prompted_regressor
from zoo.prompt_tuning.limits import (
    OneLayerTransformer,
    PromptedTransformer,
    entry_scale,
    prompt_qkv,
    reference_forward,
)
from zoo.prompt_tuning.limits_module import PromptTuneOneLayer
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
    "OneLayerTransformer",
    "PromptTuneLM",
    "PromptTuneOneLayer",
    "PromptTuned",
    "PromptedRegressor",
    "PromptedTransformer",
    "SoftPrompt",
    "entry_scale",
    "input_embeddings",
    "lipschitz_map",
    "load_causal_lm",
    "load_prompt",
    "load_prompted_regressor",
    "prompt_qkv",
    "reference_forward",
    "save_prompt",
]
