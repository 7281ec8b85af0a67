"""A Llama-style causal language model, with Hugging Face ``LlamaForCausalLM``'s module tree.

The decoder (Touvron et al., 2023, "LLaMA") maps token ids ``x_1 .. x_T`` to next-token logits:

    h_0 = E[x]                                          (embed_tokens)
    h   = h + Attn(RMSNorm(h))                          (input_layernorm, self_attn)
    h   = h + MLP(RMSNorm(h))                           (post_attention_layernorm, mlp)  per layer
    logits = RMSNorm(h) W_out^T                         (norm, lm_head; W_out = E when tied)

- RMSNorm (Zhang & Sennrich, 2019): ``y = w * x / sqrt(mean(x^2) + eps)``, computed in float32.
- Rotary position embeddings (Su et al., 2021, RoFormer) in Hugging Face's "rotate half" layout:
  with ``d`` the head width, ``inv_freq_i = theta^(-2i/d)`` (i < d/2) and angles
  ``a = [p inv_freq, p inv_freq]`` at position ``p``, a query or key ``x`` becomes
  ``x cos(a) + rotate_half(x) sin(a)``, ``rotate_half([x1, x2]) = [-x2, x1]``.
- Grouped-query attention (Ainslie et al., 2023): ``num_attention_heads`` query heads share
  ``num_key_value_heads`` key/value heads; ``softmax(q k^T / sqrt(d) + causal mask) v`` through
  ``F.scaled_dot_product_attention``.
- SwiGLU MLP (Shazeer, 2020): ``down_proj(silu(gate_proj(x)) * up_proj(x))``.

Module and parameter names are Hugging Face's (``model.layers[i].self_attn.q_proj``,
``model.layers[i].mlp.gate_proj``, ``model.embed_tokens``, ``model.norm``, ``lm_head``), so a
``LlamaForCausalLM`` state dict loads with ``load_state_dict`` and LoRA targets are PEFT's names.

Input embeddings: ``forward(inputs_embeds=[B, T, D])`` runs the decoder on given vectors instead of
``E[x]`` (as ``transformers``' ``inputs_embeds``), and ``generate(input_ids, inputs_embeds=P)``
decodes after the prefix ``[P, E[x]]`` (a soft prompt, ``zoo.prompt_tuning``), with the KV cache.

Padding: ``attention_mask [B, past + T]`` (1 = token, 0 = padding) masks padded keys, and
positions count real tokens only (``cumsum(mask) - 1``, as ``transformers``' ``generate`` does), so
a left-padded row gives the logits of the unpadded one. The KV cache is a plain list with one
``(k, v)`` pair ``[B, num_key_value_heads, S, head_dim]`` per layer (keys already rotated).

Sizes: ``CAUSAL_LM_SIZES`` (``LlamaConfig.from_name("lm-small", vocab_size=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.core.errors import CheckpointError, ConfigError, ShapeError

KVCache = list[tuple[Tensor, Tensor]]
INIT_STD = 0.02  # N(0, 0.02) for every Linear and the embedding, as Llama's initializer_range

CAUSAL_LM_SIZES: dict[str, dict[str, int]] = {
    "lm-tiny": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2),
    "lm-tiny-6l": dict(hidden_size=64, intermediate_size=176, num_hidden_layers=6, num_attention_heads=4,
                       num_key_value_heads=2),
    "lm-small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=4),
    "lm-base": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                    num_key_value_heads=4),
}


@dataclass
class LlamaConfig:
    """The shape of a :class:`CausalLM`; field names are ``transformers.LlamaConfig``'s."""

    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attention_bias: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"LlamaConfig.hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"LlamaConfig.num_attention_heads={self.num_attention_heads} is not divisible by "
                              f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"LlamaConfig: head width hidden_size / num_attention_heads = {self.head_dim} "
                              f"must be even for rotary embeddings")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> LlamaConfig:
        """The config of a named size in ``CAUSAL_LM_SIZES``; ``overrides`` replace its fields."""
        if name not in CAUSAL_LM_SIZES:
            raise ConfigError(f"unknown causal LM size {name!r}; available: {', '.join(CAUSAL_LM_SIZES)}")
        return cls(**{**CAUSAL_LM_SIZES[name], **overrides})

    @classmethod
    def from_hf(cls, hf_config) -> LlamaConfig:
        """Read a ``transformers.LlamaConfig``; features this model lacks raise :class:`ConfigError`."""
        # transformers >= 5 keeps theta and the rope type in rope_parameters; 4.x in rope_theta / rope_scaling
        rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"Hugging Face config has rope_type={rope_type!r}; only the default rope is supported")
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ConfigError(f"Hugging Face config has hidden_act={hf_config.hidden_act!r}; expected 'silu'")
        if getattr(hf_config, "mlp_bias", False):
            raise ConfigError("Hugging Face config has mlp_bias=True; expected False (bias-free SwiGLU)")
        head_dim = getattr(hf_config, "head_dim", None)
        if head_dim is not None and head_dim != hf_config.hidden_size // hf_config.num_attention_heads:
            raise ConfigError(f"Hugging Face config has head_dim={head_dim}; expected hidden_size / "
                              f"num_attention_heads = {hf_config.hidden_size // hf_config.num_attention_heads}")
        values = {f.name: getattr(hf_config, f.name) for f in fields(cls) if f.name != "rope_theta"}
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = hf_config.num_attention_heads
        theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", None))
        return cls(**values, rope_theta=10000.0 if theta is None else float(theta))


# -- layers ------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """``y = w * x / sqrt(mean(x^2, last dim) + eps)``; the statistic in float32 (or float64)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """``cos(a), sin(a)`` for angles ``a = [p inv_freq, p inv_freq]``, ``inv_freq_i = theta^(-2i/d)``.

    Computed per call in float32 (float64 for a float64 model), as Hugging Face does, so the
    tables never lose precision to a cast of the model; no buffers, nothing in the state dict."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.theta = head_dim, theta

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions [B, T]`` -> ``cos, sin [B, T, head_dim]`` in ``dtype``."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        steps = torch.arange(0, self.head_dim, 2, dtype=work, device=positions.device) / self.head_dim
        inv_freq = 1.0 / (self.theta ** steps)
        angles = positions.to(work)[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dimension's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, H, T, d]`` by position: ``x cos + rotate_half(x) sin`` (cos, sin ``[B, T, d]``)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary queries and keys and an optional KV cache."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        width, kv_width, bias = config.hidden_size, config.num_key_value_heads * config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(width, width, bias=bias)
        self.k_proj = nn.Linear(width, kv_width, bias=bias)
        self.v_proj = nn.Linear(width, kv_width, bias=bias)
        self.o_proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x [B, T, D]`` -> ``[B, T, D]`` and this layer's cache ``(k, v)`` including ``x``'s keys.

        ``mask [B, 1, T, S]`` (True = may attend) or None for plain causal attention over ``x``."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                             enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), (k, v)


class MLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``h + Attn(RMSNorm(h))``, then ``h + MLP(RMSNorm(h))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attended, kv = self.self_attn(self.input_layernorm(h), cos, sin, mask, past)
        h = h + attended
        return h + self.mlp(self.post_attention_layernorm(h)), kv


class Decoder(nn.Module):
    """Embedding, the decoder layers and the final norm (Hugging Face's ``LlamaModel``)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)


def attention_mask_4d(padding: Tensor | None, past: int, length: int, device: torch.device) -> Tensor:
    """``[B or 1, 1, T, past + T]`` booleans: query ``i`` (at ``past + i``) may see key ``j`` iff
    ``j <= past + i`` and key ``j`` is not padding. A query always sees itself, so a padded query
    has one finite (ignored) output instead of a NaN that would leak through later layers' values."""
    query = torch.arange(past, past + length, device=device)[:, None]
    key = torch.arange(past + length, device=device)[None]
    allowed = key <= query
    if padding is not None:
        allowed = allowed & padding[:, None, None, :].bool()
    return allowed | (key == query)


def check_token_ids(input_ids: Tensor, vocab_size: int) -> None:
    """One-line errors for ids that are not integer ``[batch, length >= 1]`` or not in ``0 .. vocab_size - 1``."""
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.is_floating_point():
        raise ShapeError(f"input_ids must be integer token ids [batch, length >= 1], got "
                         f"{input_ids.dtype} {tuple(input_ids.shape)}")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ConfigError(f"token id {low if low < 0 else high} is out of range: expected 0 .. "
                          f"{vocab_size - 1} (vocab_size={vocab_size})")


class CausalLM(nn.Module):
    """Llama decoder with a language-model head; ``model`` and ``lm_head`` as in ``LlamaForCausalLM``."""

    def __init__(self, config: LlamaConfig | None = None) -> None:
        super().__init__()
        self.config = config = LlamaConfig() if config is None else config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> CausalLM:
        """A copy of a ``transformers`` ``LlamaForCausalLM``: its config, weights and dtype."""
        model = cls(LlamaConfig.from_hf(hf_model.config))
        model.to(next(hf_model.parameters()).dtype)
        load_hf_state_dict(model, hf_model.state_dict())
        return model

    def _check_inputs(self, input_ids: Tensor | None, attention_mask: Tensor | None, past: KVCache | None,
                      inputs_embeds: Tensor | None = None) -> int:
        """One-line errors for bad ids or embeddings, masks and caches; returns the cached length."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ConfigError("give exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if (inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0 or not inputs_embeds.is_floating_point()
                    or inputs_embeds.shape[2] != config.hidden_size):
                raise ShapeError(f"inputs_embeds must be float vectors [batch, length >= 1, hidden_size="
                                 f"{config.hidden_size}], got {inputs_embeds.dtype} {tuple(inputs_embeds.shape)}")
            batch, length = inputs_embeds.shape[:2]
        else:
            check_token_ids(input_ids, config.vocab_size)
            batch, length = input_ids.shape
        past_length = 0
        if past is not None:
            if len(past) != config.num_hidden_layers:
                raise ShapeError(f"past_key_values has {len(past)} layers; expected {config.num_hidden_layers}")
            past_length = past[0][0].shape[2]
            expected = (batch, config.num_key_value_heads, past_length, config.head_dim)
            if any(tuple(t.shape) != expected for kv in past for t in kv):
                raise ShapeError(f"past_key_values tensors must all have shape {expected} "
                                 f"[batch, kv heads, cached length, head_dim]")
        total = past_length + length
        if total > config.max_position_embeddings:
            raise ShapeError(f"sequence length {total} (cached {past_length} + new {length}) exceeds "
                             f"max_position_embeddings={config.max_position_embeddings}")
        if attention_mask is not None and tuple(attention_mask.shape) != (batch, total):
            raise ShapeError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected "
                             f"[batch, cached + new length] = {(batch, total)}")
        return past_length

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds: Tensor | None = None) -> Tensor | tuple[Tensor, KVCache]:
        """``input_ids [B, T]`` -> logits ``[B, T, vocab]`` (and the cache extended by ``T`` when
        ``use_cache``). ``attention_mask [B, past + T]`` marks real tokens (1) and padding (0).
        ``inputs_embeds [B, T, D]`` replaces ``input_ids``: the vectors the decoder reads instead of ``E[x]``."""
        past = self._check_inputs(input_ids, attention_mask, past_key_values, inputs_embeds)
        h = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        length = h.shape[1]
        if attention_mask is None:
            positions = torch.arange(past, past + length, device=h.device)[None]  # [1, T]: cos, sin broadcast
            mask = None if past == 0 else attention_mask_4d(None, past, length, h.device)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)[:, past:]
            mask = attention_mask_4d(attention_mask, past, length, h.device)
        cos, sin = self.model.rotary_emb(positions, h.dtype)
        cache: KVCache = []
        for i, layer in enumerate(self.model.layers):
            h, kv = layer(h, cos, sin, mask, None if past_key_values is None else past_key_values[i])
            cache.append(kv)
        logits = self.lm_head(self.model.norm(h))
        return (logits, cache) if use_cache else logits

    @torch.no_grad()
    def generate(self, input_ids: Tensor | None, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 attention_mask: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """Append ``max_new_tokens`` tokens to ``input_ids [B, T]`` with the KV cache: greedy at
        ``temperature = 0``, else sampled from ``softmax(logits / temperature)`` restricted to the
        ``top_k`` largest. A batch of prompts of different lengths is left-padded, with
        ``attention_mask`` marking the real tokens. Returns ``[B, T + max_new_tokens]``.

        ``inputs_embeds [B, P, D]`` is read before the tokens: the prefix is ``[inputs_embeds,
        E[input_ids]]`` (``attention_mask`` then covers ``P + T`` positions), or ``inputs_embeds`` alone
        when ``input_ids`` is None; the result holds ``input_ids`` and the new tokens, no ids for ``P``."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if not temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}")
        if input_ids is None and inputs_embeds is None:
            raise ConfigError("generate needs input_ids, inputs_embeds or both")
        if input_ids is not None and (input_ids.dim() != 2 or input_ids.shape[1] == 0):
            raise ShapeError(f"generate needs a non-empty prompt [batch, length >= 1], got {tuple(input_ids.shape)}")
        if inputs_embeds is not None:
            batch = inputs_embeds.shape[0] if input_ids is None else input_ids.shape[0]
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[0] != batch:
                raise ShapeError(f"inputs_embeds must be [batch={batch}, length, hidden_size], got "
                                 f"{tuple(inputs_embeds.shape)}")
            if input_ids is not None:
                self._check_inputs(input_ids, None, None)
                inputs_embeds = torch.cat([inputs_embeds, self.model.embed_tokens(input_ids)], dim=1)
        prompt = input_ids if inputs_embeds is None else inputs_embeds
        total = prompt.shape[1] + max_new_tokens
        if total > self.config.max_position_embeddings:
            raise ShapeError(f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} = {total} exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        if (attention_mask is not None and tuple(attention_mask.shape) == tuple(prompt.shape[:2])
                and not attention_mask[:, -1].all()):
            raise ConfigError("generate needs left padding: attention_mask[:, -1] must be 1 in every row")
        logits, cache = self(input_ids if inputs_embeds is None else None, attention_mask, use_cache=True,
                             inputs_embeds=inputs_embeds)
        tokens = [] if input_ids is None else [input_ids]
        for step in range(max_new_tokens):
            token = self._next_token(logits[:, -1], temperature, top_k, generator)
            tokens.append(token)
            if step == max_new_tokens - 1:
                break
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
            logits, cache = self(token, attention_mask, past_key_values=cache, use_cache=True)
        return torch.cat(tokens, dim=1)

    @staticmethod
    def _next_token(logits: Tensor, temperature: float, top_k: int | None,
                    generator: torch.Generator | None) -> Tensor:
        """``[B, vocab]`` -> ``[B, 1]``: argmax, or a draw from the tempered top-k distribution."""
        if temperature == 0:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def load_hf_state_dict(model: CausalLM, state_dict: dict[str, Tensor]) -> None:
    """Load a ``LlamaForCausalLM`` state dict into ``model`` (same keys); a missing, unexpected or
    wrongly shaped key raises :class:`CheckpointError` naming it. Old checkpoints' rotary buffers
    (``*.rotary_emb.inv_freq``) are skipped; a tied model may omit ``lm_head.weight``."""
    state = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    tied = model.config.tie_word_embeddings
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"state dict lacks {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if
                              len(missing) > 1 else "") + "; expected a Hugging Face LlamaForCausalLM state dict")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"state dict has unexpected key {unexpected[0]!r}; this model's keys are those "
                              f"of a LlamaForCausalLM with {model.config.num_hidden_layers} layers")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"state dict entry {key!r} has shape {tuple(value.shape)}; expected "
                                  f"{tuple(expected[key].shape)}")
    if tied and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        raise CheckpointError("state dict has 'lm_head.weight' different from 'model.embed_tokens.weight', "
                              "but the config ties them (tie_word_embeddings=True)")
    model.load_state_dict(state)
