"""Layers that several papers share, in plain torch (no Lightning): the sparse probability maps
(sparsemax, 1.5-entmax, alpha-entmax) that sparse Hopfield retrieval and sparse attention use,
and the Llama-style causal LM (Hugging Face module names) that LoRA, prompt tuning and alignment use,
and polynomial-method fast attention with an exact fallback (``fast_attention``).
A paper's own layers live in its package (``zoo.<paper>``)."""

from zoo.nn.causal_lm import CAUSAL_LM_SIZES, CausalLM, KVCache, LlamaConfig, load_hf_state_dict
from zoo.nn.entmax import entmax15, entmax_bisect, sparsemax
from zoo.nn.fast_attention import (
    entry_bound,
    exact_attention,
    fast_attention,
    feature_dim,
    taylor_error_bound,
    taylor_features,
)

__all__ = [
    "CAUSAL_LM_SIZES",
    "CausalLM",
    "KVCache",
    "LlamaConfig",
    "entmax15",
    "entmax_bisect",
    "entry_bound",
    "exact_attention",
    "fast_attention",
    "feature_dim",
    "load_hf_state_dict",
    "sparsemax",
    "taylor_error_bound",
    "taylor_features",
]
