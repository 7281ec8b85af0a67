"""The denoising network of AlignAb stage 2: a residue/pair encoder with invariant point attention (IPA;
Jumper et al. 2021, AlphaFold2 supplement Algorithm 22), written here from the paper, with the stage-1
antibody LM's per-residue embeddings injected (``lm_dim > 0``; AlignAb's LM guidance).

Inputs per residue i of a patch: its type (20 + unknown), role (heavy, light, antigen), CDR flag, design and
epitope flags, the timestep, the LM embedding and its frame ``T_i = (R_i, x_i)``. Per pair: the relative
sequence position (same chain, clipped to +-32; another chain a bucket of its own) and RBF-expanded distances
between the N, CA, C and (ideal) CB atoms placed on the frames. Everything but the frames is invariant.

IPA (Algorithm 22), per head h over keys j, with ``w_L = sqrt(1/3)``, ``w_C = sqrt(2 / (9 P_qk))``:

    a_ij = softmax_j( w_L [ q_i.k_j / sqrt(c) + b_ij - gamma_h w_C / 2 sum_p |T_i q_ip - T_j k_jp|^2 ] )
    o_i = [ sum_j a_ij v_j,  sum_j a_ij z_ij,  T_i^-1 sum_j a_ij T_j v_jp,  |T_i^-1 sum_j a_ij T_j v_jp| ]

Distances between globally placed points and points pulled back into the query's frame make the output
invariant to a global rotation and translation of all frames. Heads (DiffAb): the position noise is predicted
in the local frame and rotated to the global one, ``eps_i = R_i e_i``; the orientation as a rotation ``U_i``
of the local frame (a quaternion ``(1, u)`` normalised), ``R0^_i = R_i U_i``; the amino-acid logits
directly. So ``eps`` and ``R0^`` rotate with the input and the logits are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.alignab.so3 import C_LOCAL, N_LOCAL, quaternion_to_matrix

NUM_INPUT_TYPES = 21  # 20 amino acids + unknown


def _cb_local() -> tuple[float, float, float]:
    """Ideal C-beta in the local frame (trRosetta's constants on the ideal N, CA, C)."""
    n, c = torch.tensor(N_LOCAL, dtype=torch.float64), torch.tensor(C_LOCAL, dtype=torch.float64)
    b, cc = -n, c  # CA - N, C - CA with CA at the origin
    a = torch.linalg.cross(b, cc)
    return tuple((-0.58273431 * a + 0.56802827 * b - 0.54067466 * cc).tolist())


ATOMS_LOCAL = (N_LOCAL, (0.0, 0.0, 0.0), C_LOCAL, _cb_local())


def timestep_embedding(t: Tensor, num_steps: int, dim: int) -> Tensor:
    """Sinusoidal features ``[B, dim]`` of ``t / T`` (Vaswani et al. 2017, frequencies 1 ... 1000)."""
    half = dim // 2
    freq = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / max(half - 1, 1))
    angle = (t.double() / num_steps)[:, None] * freq[None] * 1000.0
    return torch.cat([angle.sin(), angle.cos()], -1)


class InvariantPointAttention(nn.Module):
    """Algorithm 22 of the AlphaFold2 supplement (no dropout). Frames: ``rot [B, K, 3, 3]``, ``pos [B, K, 3]``."""

    def __init__(self, dim: int, pair_dim: int, heads: int = 4, head_dim: int = 16, qk_points: int = 4,
                 v_points: int = 8) -> None:
        super().__init__()
        self.heads, self.head_dim, self.qk_points, self.v_points = heads, head_dim, qk_points, v_points
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim, bias=False) for _ in range(3))
        self.q_points = nn.Linear(dim, heads * qk_points * 3)
        self.k_points = nn.Linear(dim, heads * qk_points * 3)
        self.v_points = nn.Linear(dim, heads * v_points * 3)
        self.bias = nn.Linear(pair_dim, heads, bias=False)
        self.gamma = nn.Parameter(torch.full((heads,), math.log(math.e - 1)))  # softplus -> 1
        self.out = nn.Linear(heads * (head_dim + pair_dim + v_points * 4), dim)

    def _global(self, points: Tensor, rot: Tensor, pos: Tensor) -> Tensor:
        """``[B, K, H * P * 3]`` local points -> ``[B, K, H, P, 3]`` global: ``R p + x``."""
        b, k = points.shape[:2]
        points = points.view(b, k, self.heads, -1, 3)
        return torch.einsum("bkij,bkhpj->bkhpi", rot, points) + pos[:, :, None, None]

    def forward(self, s: Tensor, z: Tensor, rot: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        b, k, _ = s.shape
        h, c = self.heads, self.head_dim
        q, key, v = (f(s).view(b, k, h, c) for f in (self.q, self.k, self.v))
        qp, kp = self._global(self.q_points(s), rot, pos), self._global(self.k_points(s), rot, pos)
        vp = self._global(self.v_points(s), rot, pos)
        w_c = math.sqrt(2 / (9 * self.qk_points))
        gamma = F.softplus(self.gamma)
        scalar = torch.einsum("bihc,bjhc->bhij", q, key) / math.sqrt(c)
        dist = ((qp[:, :, None] - kp[:, None]) ** 2).sum((-1, -2))  # [B, i, j, H]
        logits = scalar + self.bias(z).permute(0, 3, 1, 2) - (gamma * w_c / 2)[None, :, None, None] * dist.permute(
            0, 3, 1, 2)
        logits = math.sqrt(1 / 3) * logits
        logits = logits.masked_fill(~mask[:, None, None, :], torch.finfo(logits.dtype).min)
        attn = logits.softmax(-1)  # [B, H, i, j]
        o = torch.einsum("bhij,bjhc->bihc", attn, v).reshape(b, k, -1)
        o_pair = torch.einsum("bhij,bijd->bihd", attn, z).reshape(b, k, -1)
        o_pt = torch.einsum("bhij,bjhpx->bihpx", attn, vp) - pos[:, :, None, None]
        o_pt = torch.einsum("bkji,bkhpj->bkhpi", rot, o_pt)  # R^T (o - x): back into the query's frame
        norms = o_pt.norm(dim=-1)
        return self.out(torch.cat([o, o_pair, o_pt.reshape(b, k, -1), norms.reshape(b, k, -1)], -1))


class IPABlock(nn.Module):
    """Post-LN residual block: IPA, then a two-layer transition MLP (AlphaFold2's structure-module layer
    without the frame update: the frames of the context are data, those of the loop the diffusion's state)."""

    def __init__(self, dim: int, pair_dim: int, heads: int) -> None:
        super().__init__()
        self.attention = InvariantPointAttention(dim, pair_dim, heads, head_dim=max(dim // heads, 8))
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, s: Tensor, z: Tensor, rot: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        s = self.norm1(s + self.attention(s, z, rot, pos, mask))
        return self.norm2(s + self.mlp(s))


class CoDesignNetwork(nn.Module):
    """Residue and pair features -> ``depth`` IPA blocks -> position noise, ``R0^`` and amino-acid logits.

    Args:
        dim, pair_dim, depth, heads: residue width, pair width, IPA blocks, heads.
        num_steps: diffusion steps (scales the timestep features).
        lm_dim: width of the LM embeddings injected per residue (0: no LM guidance).
        max_offset: relative sequence positions are clipped to ``[-max_offset, max_offset]``.
        rbf: Gaussian radial basis functions per atom-pair distance (centres 0 ... 20 A).
    """

    def __init__(self, dim: int = 64, pair_dim: int = 32, depth: int = 3, heads: int = 4, num_steps: int = 100,
                 lm_dim: int = 0, max_offset: int = 32, rbf: int = 8) -> None:
        super().__init__()
        self.num_steps, self.max_offset, self.lm_dim = num_steps, max_offset, lm_dim
        self.aa = nn.Embedding(NUM_INPUT_TYPES, dim)
        self.role = nn.Embedding(3, dim)
        self.cdr = nn.Embedding(7, dim)
        self.flags = nn.Linear(2, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.lm = nn.Linear(lm_dim, dim) if lm_dim else None
        self.residue_norm = nn.LayerNorm(dim)
        self.offset = nn.Embedding(2 * max_offset + 2, pair_dim)
        self.register_buffer("atoms_local", torch.tensor(ATOMS_LOCAL), persistent=False)
        self.register_buffer("centres", torch.linspace(0.0, 20.0, rbf), persistent=False)
        self.distance = nn.Linear(16 * rbf, pair_dim)
        self.pair_norm = nn.LayerNorm(pair_dim)
        self.blocks = nn.ModuleList(IPABlock(dim, pair_dim, heads) for _ in range(depth))
        self.eps_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 3))
        self.rot_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 3))
        self.seq_head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 20))
        for head in (self.eps_head, self.rot_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def pair_features(self, rot: Tensor, pos: Tensor, chain: Tensor, resseq: Tensor) -> Tensor:
        """``[B, K, K, pair_dim]``: relative positions and RBF distances of N, CA, C, CB (in A)."""
        same = chain[:, :, None] == chain[:, None, :]
        offset = (resseq[:, None, :] - resseq[:, :, None]).clamp(-self.max_offset, self.max_offset) + self.max_offset
        offset = torch.where(same, offset, torch.full_like(offset, 2 * self.max_offset + 1))
        atoms = 10 * pos[:, :, None] + torch.einsum("bkij,aj->bkai", rot, self.atoms_local.to(rot))  # [B, K, 4, 3]
        diff = atoms[:, :, None, :, None] - atoms[:, None, :, None, :]  # [B, i, j, 4, 4, 3]
        dist = (diff.pow(2).sum(-1) + 1e-8).sqrt().flatten(-2)  # [B, i, j, 16]
        width = self.centres[1] - self.centres[0]
        rbf = torch.exp(-(((dist[..., None] - self.centres.to(dist)) / width) ** 2)).flatten(-2)
        return self.pair_norm(self.offset(offset) + self.distance(rbf))

    def forward(self, aa: Tensor, rot: Tensor, pos: Tensor, t: Tensor, *, role: Tensor, cdr: Tensor,
                design: Tensor, epitope: Tensor, chain: Tensor, resseq: Tensor, mask: Tensor,
                lm: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``aa [B, K]``, ``rot [B, K, 3, 3]``, ``pos [B, K, 3]`` (A / 10), ``t [B]``, per-residue long/bool
        tensors ``[B, K]``, ``mask [B, K]`` (false at padding), ``lm [B, K, lm_dim]`` (zeros where a residue has
        no LM embedding). Returns ``eps [B, K, 3]`` (global frame), ``R0^ [B, K, 3, 3]``, ``logits [B, K, 20]``."""
        flags = torch.stack([design, epitope], -1).to(pos.dtype)
        time = self.time(timestep_embedding(t, self.num_steps, self.aa.embedding_dim).to(pos.dtype))
        s = self.aa(aa) + self.role(role) + self.cdr(cdr) + self.flags(flags) + time[:, None]
        if self.lm is not None:
            s = s + self.lm(lm.to(pos.dtype))
        s = self.residue_norm(s)
        z = self.pair_features(rot, pos, chain, resseq)
        for block in self.blocks:
            s = block(s, z, rot, pos, mask)
        eps = torch.einsum("bkij,bkj->bki", rot, self.eps_head(s))
        u = self.rot_head(s)
        turn = quaternion_to_matrix(torch.cat([torch.ones_like(u[..., :1]), u], -1))
        return eps, rot @ turn, self.seq_head(s)
