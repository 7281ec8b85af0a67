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


RBF_BLOCK = 2048  # pairs per block of the RBF expansion on the CPU (a block's temporary: 2048 x 16 x rbf floats)
RBF_CUTOFF = 60.0  # the blocked RBF expansion is exp(-60) < 1e-26 where ((d - mu) / w)^2 > RBF_CUTOFF


def atom_distances(atoms_a: Tensor, atoms_b: Tensor) -> Tensor:
    """``[B, I, J, 16]``: distances ``sqrt(|a - b|^2 + 1e-8)`` between the 4 atoms ``[B, I, 4, 3]`` of residue i
    and ``[B, J, 4, 3]`` of residue j, atom of i major (by ``cdist``, without the ``[B, I, J, 4, 4, 3]``
    differences; the ``1e-8`` is kept: it moves the RBF of an atom's distance to itself noticeably)."""
    b, i, j = len(atoms_a), atoms_a.shape[1], atoms_b.shape[1]
    dist = torch.cdist(atoms_a.flatten(1, 2), atoms_b.flatten(1, 2), compute_mode="donot_use_mm_for_euclid_dist")
    dist = dist.view(b, i, 4, j, 4).transpose(2, 3).reshape(b, i, j, 16)
    if dist.requires_grad:
        return (dist.square() + 1e-8).sqrt()
    return dist.square_().add_(1e-8).sqrt_()  # a fresh tensor: the reshape of the transpose copied


def pair_bias(z: Tensor, weight: Tensor) -> Tensor:
    """``[H, B, K, K]``: the linear map ``weight [H, pair_dim]`` of ``z [B, K, K, pair_dim]``, head-major (one
    matmul with the transposed pairs; no permute copy)."""
    return torch.mm(weight, z.reshape(-1, z.shape[-1]).t()).view(len(weight), *z.shape[:-1])


def rbf_expansion(dist: Tensor, centres: Tensor) -> Tensor:
    """``[..., D * R]``: Gaussians ``exp(-((d - mu_r) / w)^2)`` of ``dist [..., D]`` at ``centres [R]`` (spacing
    ``w``), the plain autograd formula."""
    width = centres[1] - centres[0]
    return torch.exp(-(((dist[..., None] - centres) / width) ** 2)).flatten(-2)


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

    def forward(self, s: Tensor, z: Tensor, rot: Tensor, pos: Tensor, mask: Tensor, bias: Tensor | None = None
                ) -> Tensor:
        """``bias [H, B, K, K]``: ``self.bias(z)`` head-major (``pair_bias``), when the caller has it already."""
        b, k, _ = s.shape
        h, c = self.heads, self.head_dim
        q, key, v = F.linear(s, torch.cat([self.q.weight, self.k.weight, self.v.weight])).view(b, k, 3, h, c).unbind(2)
        # the query, key and value points in one linear map and one rotation to the global frame, R p + x; every
        # term is invariant to a global translation: centre x so that the expanded square below does not lose
        # digits to large |x|
        local = pos - pos.mean(1, keepdim=True)
        layers = (self.q_points, self.k_points, self.v_points)
        points = F.linear(s, torch.cat([f.weight for f in layers]), torch.cat([f.bias for f in layers]))
        points = torch.einsum("bkij,bknj->bkni", rot, points.view(b, k, -1, 3)) + local[:, :, None]
        qp, kp, vp = (x.reshape(b, k, h, -1, 3) for x in points.split([f.out_features // 3 for f in layers], 2))
        w_l, w_c = math.sqrt(1 / 3), math.sqrt(2 / (9 * self.qk_points))
        coef = F.softplus(self.gamma) * (w_c / 2)  # [H]
        # w_L [q_i.k_j / sqrt(c) - coef (|qp_i|^2 + |kp_j|^2 - 2 qp_i.kp_j)] as one batched matmul of
        # [q, qp, 1] and [k, kp, |kp|^2] (scaled); |qp_i|^2 is constant over j and cancels in the softmax
        qp, kp = qp.flatten(-2), kp.flatten(-2)  # [B, K, H, 3 P]
        ones = torch.ones_like(q[..., :1])
        queries = torch.cat([q * (w_l / math.sqrt(c)), (2 * w_l) * coef[:, None] * qp, (-w_l) * coef[:, None] * ones],
                            -1)
        keys = torch.cat([key, kp, kp.square().sum(-1, keepdim=True)], -1)
        queries, keys = (x.permute(2, 0, 1, 3).reshape(h * b, k, -1) for x in (queries, keys))  # head-major
        bias = pair_bias(z, self.bias.weight) if bias is None else bias
        logits = torch.baddbmm(bias.view(h * b, k, k), queries, keys.transpose(1, 2), beta=w_l)
        logits = logits.view(h, b, k, k).masked_fill(~mask[None, :, None, :], torch.finfo(logits.dtype).min)
        attn = logits.softmax(-1)  # [H, B, i, j]
        # the scalar and the point values in one batched matmul
        values = torch.cat([v, vp.flatten(-2)], -1).permute(2, 0, 1, 3).reshape(h * b, k, -1)
        o, o_pt = torch.bmm(attn.view(h * b, k, k), values).view(h, b, k, -1).permute(1, 2, 0, 3).split(
            [c, vp.shape[-2] * 3], -1)  # [B, K, H, c], [B, K, H, 3 P]
        o = o.reshape(b, k, -1)
        o_pair = torch.einsum("hbij,bijd->bihd", attn, z).reshape(b, k, -1)
        o_pt = o_pt.unflatten(-1, (-1, 3)) - local[:, :, None, None]
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

    def forward(self, s: Tensor, z: Tensor, rot: Tensor, pos: Tensor, mask: Tensor, bias: Tensor | None = None
                ) -> Tensor:
        s = self.norm1(s + self.attention(s, z, rot, pos, mask, bias))
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
        atoms = self.atom_positions(rot, pos)
        z = self.offset(self.offsets(chain, resseq, chain, resseq))
        return self.pair_norm(self.distance_features(atom_distances(atoms, atoms), add_to=z))

    def atom_positions(self, rot: Tensor, pos: Tensor) -> Tensor:
        """``[B, K, 4, 3]``: N, CA, C and CB of each residue placed on its frame, in A."""
        return 10 * pos[:, :, None] + torch.einsum("bkij,aj->bkai", rot, self.atoms_local.to(rot))

    def offsets(self, chain_a: Tensor, resseq_a: Tensor, chain_b: Tensor, resseq_b: Tensor) -> Tensor:
        """``[B, I, J]`` indices of the relative position of residue j of b to residue i of a."""
        same = chain_a[:, :, None] == chain_b[:, None, :]
        offset = (resseq_b[:, None, :] - resseq_a[:, :, None]).clamp(-self.max_offset, self.max_offset) + self.max_offset
        return torch.where(same, offset, torch.full_like(offset, 2 * self.max_offset + 1))

    def distance_features(self, dist: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
                          add_to: Tensor | None = None) -> Tensor:
        """``self.distance`` (or the linear map ``weight``, ``bias``) of the RBF expansion of ``dist [..., 16]``,
        ``exp(-((d - mu_r) / w)^2)`` flattened atom pair-major (at least ``exp(-RBF_CUTOFF)``, under 1e-26: far
        below the rounding of the features), plus ``add_to [..., out]`` if given.

        Unless ``dist`` needs a gradient the expansion is built without autograd (it is data for the linear map)
        in blocks of ``RBF_BLOCK`` pairs, in place and centre-major (``[block, rbf, 16]``, the weight's columns
        permuted to match): the ``[..., 16, rbf]`` temporaries of the plain formula dominated the network's time.
        When nothing needs a gradient the linear map is applied block by block too (the expansion is never stored
        whole) and accumulated into ``add_to`` IN PLACE (a fresh contiguous tensor of the caller's)."""

        weight = self.distance.weight if weight is None else weight
        bias = self.distance.bias if bias is None else bias
        centres = self.centres.to(dist)
        grad = torch.is_grad_enabled()
        if dist.requires_grad and grad:
            out = F.linear(rbf_expansion(dist, centres), weight, bias)
            return out if add_to is None else add_to + out
        flat = dist.detach().reshape(-1, dist.shape[-1])
        (n, d), r, p = flat.shape, len(centres), len(weight)
        width, column = centres[1] - centres[0], centres[:, None]
        weight = weight.view(p, d, r).transpose(1, 2).reshape(p, r * d)  # columns (centre, atom pair)
        keep = grad and (weight.requires_grad or bias.requires_grad or (add_to is not None and add_to.requires_grad))
        block = RBF_BLOCK if flat.device.type == "cpu" else max(n, 1)  # blocks are for the CPU's caches
        with torch.no_grad():
            if keep:  # the expansion is saved for the weights' gradient anyway
                rbf = flat.new_empty(n, r, d)
            else:
                buffer = flat.new_empty(min(n, block), r, d)
                out = flat.new_empty(n, p).copy_(bias) if add_to is None else add_to.view(n, p).add_(bias)
                transposed = weight.t()
            for start in range(0, n, block):
                part = flat[start:start + block]
                u = rbf[start:start + len(part)] if keep else buffer[:len(part)]
                torch.sub(part[:, None], column, out=u)
                # Gaussians under exp(-RBF_CUTOFF) are raised to it: below exp(-87) fp32 is subnormal, and on x86
                # subnormal results and inputs (and even exp(-inf)) slow exp and the matmul by 10-100x
                u.div_(width).square_().neg_().clamp_(min=-RBF_CUTOFF).exp_()
                if not keep:
                    out[start:start + len(part)].addmm_(u.view(len(part), -1), transposed)
        if not keep:
            return out.view(*dist.shape[:-1], p)
        out = F.linear(rbf.view(n, -1), weight, bias).view(*dist.shape[:-1], p)
        return out if add_to is None else add_to + out

    def bias_weight(self) -> Tensor:
        """``[depth * H, pair_dim]``: the pair-bias weights of all blocks' attention, stacked."""
        return torch.cat([block.attention.bias.weight for block in self.blocks])

    def forward(self, aa: Tensor, rot: Tensor, pos: Tensor, t: Tensor, *, role: Tensor, cdr: Tensor,
                design: Tensor, epitope: Tensor, chain: Tensor, resseq: Tensor, mask: Tensor,
                lm: Tensor | None = None, pair_cache: PairCache | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``aa [B, K]``, ``rot [B, K, 3, 3]``, ``pos [B, K, 3]`` (A / 10), ``t [B]``, per-residue long/bool
        tensors ``[B, K]``, ``mask [B, K]`` (false at padding), ``lm [B, K, lm_dim]`` (zeros where a residue has
        no LM embedding). Returns ``eps [B, K, 3]`` (global frame), ``R0^ [B, K, 3, 3]``, ``logits [B, K, 20]``.
        ``pair_cache``: reuse the pair features of unmoved residues from the previous call (``PairCache``;
        sampling, where only the loop moves; ignored while autograd records)."""
        flags = torch.stack([design, epitope], -1).to(pos.dtype)
        time = self.time(timestep_embedding(t, self.num_steps, self.aa.embedding_dim).to(pos.dtype))
        s = self.aa(aa) + self.role(role) + self.cdr(cdr) + self.flags(flags) + time[:, None]
        if self.lm is not None:
            s = s + self.lm(lm.to(pos.dtype))
        s = self.residue_norm(s)
        if pair_cache is None:
            z = self.pair_features(rot, pos, chain, resseq)
            biases = pair_bias(z, self.bias_weight())  # the attention biases of all blocks in one pass over z
        else:
            z, biases = pair_cache(self, rot, pos, chain, resseq)
        for block, bias in zip(self.blocks, biases.split([block.attention.heads for block in self.blocks])):
            s = block(s, z, rot, pos, mask, bias)
        eps = torch.einsum("bkij,bkj->bki", rot, self.eps_head(s))
        u = self.rot_head(s)
        turn = quaternion_to_matrix(torch.cat([torch.ones_like(u[..., :1]), u], -1))
        return eps, rot @ turn, self.seq_head(s)


class PairCache:
    """The pair features of the previous call of a ``CoDesignNetwork`` and the attention biases computed from them,
    for sampling: between reverse steps only the designed residues move, so the features of a pair of two
    residues that did not move are kept and only the rows and columns of the moved residues (frame or position
    not bitwise equal to the previous call's) are recomputed, the RBF expansion once for both (a column is a row
    with the atom pair transposed). Every call computes all features while autograd records, at a change of
    shape, dtype, device, ``chain``, ``resseq`` or of the pair weights, and when more than ``max_fraction`` of
    all residues moved. The work of a call is proportional to the number of moved residues (no padding to the
    longest loop of the batch)."""

    def __init__(self, max_fraction: float = 0.5) -> None:
        self.max_fraction = max_fraction
        self.key: tuple | None = None
        self.rot = self.pos = self.chain = self.resseq = self.z = self.biases = None

    def __call__(self, network: CoDesignNetwork, rot: Tensor, pos: Tensor, chain: Tensor, resseq: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """``z [B, K, K, pair_dim]`` and the attention biases of all blocks ``[depth * H, B, K, K]``."""
        bias_weight = network.bias_weight()
        if torch.is_grad_enabled():
            z = network.pair_features(rot, pos, chain, resseq)
            return z, pair_bias(z, bias_weight)
        key = (id(network), rot.shape, rot.dtype, rot.device, tuple(
            p._version for p in (network.offset.weight, network.distance.weight, network.distance.bias,
                                 network.pair_norm.weight, network.pair_norm.bias,
                                 *(block.attention.bias.weight for block in network.blocks))))
        if key != self.key or not (torch.equal(chain, self.chain) and torch.equal(resseq, self.resseq)):
            return self._full(key, network, bias_weight, rot, pos, chain, resseq)
        moved = (rot != self.rot).flatten(-2).any(-1) | (pos != self.pos).any(-1)  # [B, K]
        b, k = moved.shape
        patch, residue = moved.nonzero(as_tuple=True)  # the M moved residues
        m = len(patch)
        if m > self.max_fraction * b * k:
            return self._full(key, network, bias_weight, rot, pos, chain, resseq)
        self.rot, self.pos = rot.clone(), pos.clone()
        if m == 0:
            return self.z, self.biases
        atoms = network.atom_positions(rot, pos)
        chain_k, resseq_k = chain[patch], resseq[patch]  # [M, K]: the patch of each moved residue
        chain_m, resseq_m = chain[patch, residue][:, None], resseq[patch, residue][:, None]  # [M, 1]
        # row (m, j) and column (j, m) side by side, [M, 1, K, 2, P]; a column is a row with the atom pair
        # transposed: one RBF expansion, the weight's columns permuted for the second half
        offsets = torch.stack([network.offsets(chain_m, resseq_m, chain_k, resseq_k),
                               network.offsets(chain_k, resseq_k, chain_m, resseq_m).view(m, 1, k)], -1)
        weight, bias = network.distance.weight, network.distance.bias
        p = len(weight)
        transposed = weight.view(p, 4, 4, -1).transpose(1, 2).reshape(p, -1)
        z = network.distance_features(atom_distances(atoms[patch, residue][:, None], atoms[patch]),
                                      torch.cat([weight, transposed]), torch.cat([bias, bias]),
                                      add_to=network.offset(offsets).view(m, 1, k, 2 * p))
        z = network.pair_norm(z.view(m, k, 2, p))
        rows, cols = z.unbind(-2)  # [M, K, P] each
        row_index = patch * k + residue  # row (b, m) of [B * K]
        col_index = ((patch[:, None] * k + torch.arange(k, device=patch.device)) * k + residue[:, None]).flatten()
        self.z.view(b * k, k, p).index_copy_(0, row_index, rows)
        self.z.view(b * k * k, p).index_copy_(0, col_index, cols.reshape(m * k, p))
        heads = len(bias_weight)
        self.biases.view(heads, b * k, k).index_copy_(1, row_index, pair_bias(rows, bias_weight))
        self.biases.view(heads, b * k * k).index_copy_(1, col_index, pair_bias(cols, bias_weight).view(heads, m * k))
        return self.z, self.biases

    def _full(self, key: tuple, network: CoDesignNetwork, bias_weight: Tensor, rot: Tensor, pos: Tensor,
              chain: Tensor, resseq: Tensor) -> tuple[Tensor, Tensor]:
        z = network.pair_features(rot, pos, chain, resseq)
        self.key, self.rot, self.pos, self.chain, self.resseq = key, rot.clone(), pos.clone(), chain.clone(), resseq.clone()
        self.z, self.biases = z, pair_bias(z, bias_weight)
        return self.z, self.biases
