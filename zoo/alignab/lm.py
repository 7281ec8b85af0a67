"""A small BERT-style masked language model over amino-acid tokens (AlignAb stage 1), which reads
the amino-acid tokens of ``data_modules.residues``.

Encoder (Devlin et al. 2019; pre-LN blocks as in Xiong et al. 2020):

    h_0 = E[x] + P[0..L)
    h'  = h + MHA(LN(h), key padding mask)          MHA by scaled dot-product attention
    h   = h' + W_2 GELU(W_1 LN(h'))
    z   = LN_f(h_L)                                  per-residue embeddings (``embed``)
    logits = LN(GELU(W_t z)) E^T + b                 MLM head tied to the token embedding E
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: self-attention over non-padding keys, then a GELU MLP. Dropout
    acts on the residual branches and inside the MLP, not on the attention weights (on a CPU,
    sampling a ``[B, heads, L, L]`` dropout mask costs more than the attention itself)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def attention(self, x: Tensor, keep: Tensor) -> Tensor:
        """softmax(Q K^T / sqrt(d_h) + mask) V per head; ``keep [B, L]`` is False at padding keys."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        x = x + self.drop(self.attention(self.norm1(x), keep))
        return x + self.drop(self.mlp(self.norm2(x)))


class AntibodyEncoder(nn.Module):
    """Token + learned positional embeddings, ``depth`` pre-LN blocks, a final LayerNorm and an
    MLM head whose output matrix is the token embedding (weight tying).

    Args:
        vocab_size: tokens (25: 20 amino acids + pad, cls, eos, mask, unk).
        dim, depth, heads, mlp_ratio: transformer width, blocks, attention heads, MLP expansion.
        max_tokens: longest token sequence (residues + <cls> + <eos>).
        dropout: on the embeddings, the residual branches and inside the MLPs.
        pad_id: the padding token, excluded from attention as a key.
    """

    def __init__(self, vocab_size: int = 25, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, max_tokens: int = 162, dropout: float = 0.1, pad_id: int = 0) -> None:
        super().__init__()
        self.pad_id, self.max_tokens = pad_id, max_tokens
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_tokens, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head_transform = nn.Linear(dim, dim)
        self.head_norm = nn.LayerNorm(dim)
        self.head_bias = nn.Parameter(torch.zeros(vocab_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialization: N(0, 0.02) for embeddings and linear weights, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def embed(self, tokens: Tensor) -> Tensor:
        """Per-residue embeddings ``[B, L, dim]`` of token ids ``[B, L]`` (the final LayerNorm's
        output; rows at padding positions are computed but meaningless)."""
        if tokens.shape[1] > self.max_tokens:
            raise ValueError(f"{tokens.shape[1]} tokens, more than max_tokens={self.max_tokens}")
        keep = tokens != self.pad_id
        x = self.tokens(tokens) + self.positions(torch.arange(tokens.shape[1], device=tokens.device))
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x)

    def head(self, z: Tensor) -> Tensor:
        """Token logits ``[..., vocab]`` from embeddings: LN(GELU(W z)) E^T + b."""
        return self.head_norm(F.gelu(self.head_transform(z))) @ self.tokens.weight.T + self.head_bias

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.embed(tokens))
