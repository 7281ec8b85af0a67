"""AlignAb stage 3 / AbDPO (Zhou et al. 2024): energy preferences between designs and the Diffusion-DPO loss.

1. Atoms of a design. The co-design model outputs, per loop residue, an amino acid and a frame (C-alpha and
   orientation). Its energies need heavy atoms: :class:`SideChainLibrary` places every residue's O and side
   chain rigidly in its frame from a small rotamer library built from the crystal conformations of the
   training complexes (in the local frame of ``local_frames``: the medoid and a few farthest-point picks per
   amino acid), choosing per residue the rotamer with the least steric clash with its fixed environment; N,
   CA, C sit at the ideal local coordinates of ``so3.backbone_from_frames``. No packing between loop side
   chains and no minimisation: an approximation stated as such (FASPR packing is available in ``predict``
   and in the benchmark, too slow for every design of every round here).
2. Energies (``energy.score_complex``, the PROXY, not Rosetta) of each design in its patch: CDR-antigen
   repulsion E_Rep and attraction E_nonRep, per residue and in total; CDR E_total and the dG proxy are
   reported, never used for preferences (as in the paper). All are minimised.
3. Pairs (:func:`preference_pairs`), among the designs of one patch, each design used at most once:
   ``single`` / ``weighted``: sort by the objective (or ``w . E``), pair the best with the worst, the second
   best with the second worst, ... (largest margins first; ties skipped); ``pareto``: non-dominated sorting,
   and a pair only where the winner Pareto-dominates the loser (better or equal on every objective, better on
   one), widest rank gaps first -- so no pair trades one energy for another.
4. Per residue (AbDPO's decomposition): within a pair, the preference at loop residue i for objective k is
   ``s_ik = sign(E_k^l[i] - E_k^w[i])`` (+1: the winner's residue has the lower energy, -1: the loser's, 0: tie
   or no contact). ``weighted`` uses the weighted residue energies.
5. The loss (Diffusion-DPO, Wallace et al. 2024, per residue i and component c in {position, rotation, sequence}):

       d_ic = [e_c(theta; x^w)_i - e_c(ref; x^w)_i] - [e_c(theta; x^l)_i - e_c(ref; x^l)_i]
       L_k = mean over pairs, residues with s_ik != 0 and components of  -log sigmoid(-beta s_ik d_ic)         (8)

   where ``e_c`` is component c's per-residue denoising error (``LoopDiffusion.residue_losses``: noise MSE,
   rotation loss, posterior KL) of the network on the pair's designs noised at one shared ``t`` with the same
   noise draws. ``L_k = log 2`` when the model equals the reference, and lowering ``L_k`` lowers the model's
   error on the preferred residues relative to the reference. Diffusion-DPO's ``T omega(lambda_t)`` factor is
   folded into ``beta``. The design-level alternative (Diffusion-DPO on the whole loop, one preference per pair,
   every loop residue signed +1):

       L = mean over pairs and components of  -log sigmoid(-beta sum_i d_ic)                                   (9)

   sums the residues' errors before the sigmoid (less noise per term, no residue decomposition).
6. Several objectives (``pareto``), two rules for residues where they conflict. ``pcgrad``: one loss per
   objective and the gradients combined by PCGrad (Yu et al. 2020; AbDPO's "gradient surgery"): where two
   objectives' gradients conflict (negative inner product), each is projected onto the normal plane of the other
   before they are summed (:func:`pcgrad`). ``dominance``: one loss, a residue preferred only where its energies
   Pareto-dominate the other design's residue (:func:`residue_dominance`), none where they trade off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from data_modules.complexes import ROLES, Complex, local_frames
from data_modules.residues import AMINO_ACIDS, ATOM14
from zoo.alignab.codesign_network import ATOMS_LOCAL
from zoo.alignab.energy import score_complex
from zoo.alignab.metrics import pareto_ranks
from zoo.alignab.so3 import C_LOCAL, N_LOCAL
from zoo.core.errors import ConfigError, ShapeError

OBJECTIVES = ("rep", "nonrep")  # CDR-antigen E_Rep and E_nonRep, the energies preferences are built from
METHODS = ("single", "weighted", "pareto")
LEVELS = ("residue", "design")
CONFLICT_RULES = ("pcgrad", "dominance")
NUM_RESIDUE_TYPES = 21  # 20 amino acids + unknown (backbone only)
CB_LOCAL = ATOMS_LOCAL[3]  # the ideal C-beta in the residue frame


@dataclass
class SideChainLibrary:
    """A few rotamers per amino acid: atom14 coordinates ``local [21, R, 14, 3]`` in the residue frame (A) and
    which atoms exist ``mask [21, 14]``. Rotamer 0 is the medoid of the crystal conformations; the others are
    picked by farthest-point sampling (each the conformation farthest, in RMSD, from those already picked), so
    they cover the common side-chain states."""

    local: Tensor
    mask: Tensor

    @classmethod
    def from_complexes(cls, complexes: Sequence[Complex], rotamers: int = 6, max_examples: int = 300,
                       seed: int = 0) -> "SideChainLibrary":
        """Rotamers of each amino acid from the residues (all atoms present) of ``complexes``, at most
        ``max_examples`` per type (a seeded subsample). A type with no complete residue there (and the unknown
        type) gets the backbone O and, but for glycine, the ideal C-beta only."""
        if rotamers < 1:
            raise ConfigError(f"rotamers must be >= 1, got {rotamers}")
        generator = torch.Generator().manual_seed(seed)
        local = torch.zeros(NUM_RESIDUE_TYPES, rotamers, 14, 3, dtype=torch.float64)
        mask = torch.zeros(NUM_RESIDUE_TYPES, 14, dtype=torch.bool)
        ideal = torch.tensor([N_LOCAL, (0.0, 0.0, 0.0), C_LOCAL], dtype=torch.float64)
        examples: dict[int, list[Tensor]] = {}
        for complex_ in complexes:
            coords = complex_.coords.double()
            frames = local_frames(coords[:, 0], coords[:, 1], coords[:, 2])
            relative = torch.einsum("nji,naj->nai", frames, coords - coords[:, 1:2])  # R^T (x - CA)
            for a, letter in enumerate(AMINO_ACIDS):
                atoms = len(ATOM14[letter])
                present = (complex_.aa == a) & complex_.atom_mask[:, :atoms].all(-1)
                if present.any():
                    examples.setdefault(a, []).append(relative[present][:, 3:atoms])
        for a in range(NUM_RESIDUE_TYPES):
            atoms = len(ATOM14[AMINO_ACIDS[a]]) if a < 20 else 4
            mask[a, :atoms] = True
            local[a, :, :3] = ideal
            if a not in examples:  # the unknown type, or a type the complexes lack: O and the ideal C-beta
                local[a, :, 3] = torch.tensor(_carbonyl_oxygen(), dtype=torch.float64)
                if 0 <= a < 20 and AMINO_ACIDS[a] != "G":
                    local[a, :, 4] = torch.tensor(CB_LOCAL, dtype=torch.float64)
                    mask[a] = torch.arange(14) < 5
                continue
            found = torch.cat(examples[a])  # O and the side chain
            if len(found) > max_examples:
                found = found[torch.randperm(len(found), generator=generator)[:max_examples]]
            rmsd = ((found[:, None] - found[None]) ** 2).sum(-1).mean(-1).sqrt()  # [n, n]
            picked = [int(rmsd.sum(1).argmin())]
            while len(picked) < rotamers:
                nearest = rmsd[:, picked].min(1).values
                picked.append(int(nearest.argmax()) if nearest.max() > 0 else picked[-1])
            local[a, :, 3:atoms] = found[picked]
        return cls(local, mask)

    @property
    def rotamers(self) -> int:
        return self.local.shape[1]

    def place(self, aa: Tensor, rot: Tensor, ca: Tensor, rotamer: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Atoms ``[..., 14, 3]`` (A) and their mask ``[..., 14]`` of residues ``aa [...]`` (0-20) with frames
        ``rot [..., 3, 3]`` and C-alpha ``ca [..., 3]`` (A), in rotamer ``rotamer [...]`` (default 0); with
        ``rotamer`` None and ``aa`` of shape ``[...]`` every rotamer: ``[..., R, 14, 3]``."""
        types = aa.clamp(0, NUM_RESIDUE_TYPES - 1)
        mask = self.mask.to(aa.device)[types]
        if rotamer is None:
            local = self.local.to(ca)[types]  # [..., R, 14, 3]
            return ca[..., None, None, :] + local @ rot[..., None, :, :].transpose(-1, -2), mask
        local = self.local.to(ca)[types, rotamer]
        return ca[..., None, :] + local @ rot.transpose(-1, -2), mask

    def choose(self, aa: Tensor, rot: Tensor, ca: Tensor, design: Tensor, env: Tensor, env_mask: Tensor,
               clash: float = 3.0) -> Tensor:
        """Per design residue the rotamer with the least clash ``sum relu(clash - d)^2`` between its side-chain
        atoms and the environment atoms ``env [n, A, 3]`` (mask ``env_mask [n, A]``: every atom of the patch
        outside the loop, plus the loop's backbone). Residues are chosen independently (no packing between
        loop side chains). ``aa [n, K]``, ``rot [n, K, 3, 3]``, ``ca [n, K, 3]``; returns ``[n, K]`` (0 off the
        loop)."""
        choice = torch.zeros_like(aa)
        if self.rotamers == 1 or not design.any():
            return choice
        index = design.nonzero().flatten()
        atoms, mask = self.place(aa[:, index], rot[:, index], ca[:, index])  # [n, L, R, 14, 3], [n, L, 14]
        side = mask.clone()
        side[..., :4] = False
        d = torch.cdist(atoms.flatten(1, 3), env)  # [n, L * R * 14, A]
        penalty = (torch.relu(clash - d) ** 2 * env_mask[:, None]).sum(-1).view(atoms.shape[:4])
        score = (penalty * side[:, :, None]).sum(-1)  # [n, L, R]
        choice[:, index] = score.argmin(-1)
        return choice

    def to_dict(self) -> dict[str, Tensor]:
        return {"local": self.local, "mask": self.mask}

    @classmethod
    def from_dict(cls, data: dict[str, Tensor]) -> "SideChainLibrary":
        return cls(data["local"].double(), data["mask"].bool())


def _carbonyl_oxygen() -> tuple[float, float, float]:
    """An O for a residue type never seen (unknown): in the N-CA-C plane, 1.231 A from C, trans to N."""
    c = np.array(C_LOCAL)
    return tuple((c + 1.231 * np.array([0.5, -0.866, 0.0])).tolist())


def design_energies(patch: dict[str, Tensor], aa: Tensor, pos: Tensor, rot: Tensor, library: SideChainLibrary
                    ) -> dict[str, Tensor]:
    """Energies of ``n`` designs of one patch: ``patch`` holds one design-mode sample (``coords [K, 14, 3]``
    centred, ``atom_mask``, ``aa``, ``chain``, ``role``, ``design`` ``[K]``); the designs are ``aa [n, K]``,
    ``pos [n, K, 3]`` (A / 10) and ``rot [n, K, 3, 3]`` (only their loop residues are used). Returns totals
    ``rep``, ``nonrep``, ``total``, ``dg`` ``[n]`` and per residue ``residue_rep``, ``residue_nonrep`` ``[n, K]``."""
    design = patch["design"] & patch["residue_mask"]
    if aa.ndim != 2 or aa.shape[1] != len(design):
        raise ShapeError(f"design_energies: designs aa must be [n, {len(design)}], got {list(aa.shape)}")
    n = len(aa)
    ca, frames = pos.double() * 10, rot.double()
    crystal = patch["coords"].double()[None].expand(n, -1, -1, -1)
    crystal_mask = patch["atom_mask"][None].expand(n, -1, -1)
    backbone = library.place(aa, frames, ca, torch.zeros_like(aa))[0][..., :4, :]  # loop N, CA, C and O
    env = torch.where(design[None, :, None, None], torch.cat([backbone, backbone.new_zeros(n, len(design), 10, 3)], 2),
                      crystal)
    env_mask = torch.where(design[None, :, None], torch.arange(14) < 4, crystal_mask)
    rotamer = library.choose(aa, frames, ca, design, env.flatten(1, 2), env_mask.flatten(1, 2))
    atoms, atom_mask = library.place(aa, frames, ca, rotamer)
    coords = torch.where(design[None, :, None, None], atoms, crystal)
    mask = torch.where(design[None, :, None], atom_mask, crystal_mask)
    types = torch.where(design[None], aa, patch["aa"][None].expand(n, -1))
    antigen = patch["role"] == ROLES.index("antigen")
    energy = score_complex(coords, types, mask, patch["chain"], design, antigen & patch["residue_mask"])
    return {"rep": energy.cdr_ag_rep, "nonrep": energy.cdr_ag_nonrep, "total": energy.cdr_total, "dg": energy.dg,
            "residue_rep": energy.residue_rep, "residue_nonrep": energy.residue_nonrep}


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """Pareto dominance under minimisation: ``a`` no worse than ``b`` anywhere and better somewhere."""
    return bool(np.all(a <= b) and np.any(a < b))


def preference_pairs(objectives: Tensor | np.ndarray, method: str, weights: Sequence[float] | None = None
                     ) -> list[tuple[int, int]]:
    """Disjoint ``(winner, loser)`` index pairs among ``n`` designs with energies ``objectives [n, m]``
    (minimised) by ``method`` (module docstring, point 3); ``weights [m]`` for ``weighted`` (``single`` takes
    the one column given)."""
    f = np.asarray(objectives.detach().cpu().double() if isinstance(objectives, Tensor) else objectives, dtype=float)
    if f.ndim != 2:
        raise ShapeError(f"preference_pairs: objectives must be [n, m], got shape {f.shape}")
    if method not in METHODS:
        raise ConfigError(f"preference method must be one of {METHODS}, got {method!r}")
    n, m = f.shape
    if method in ("single", "weighted"):
        if method == "single" and m != 1:
            raise ConfigError(f"method 'single' takes one objective, got {m}")
        w = np.ones(m) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (m,):
            raise ConfigError(f"weights must have one entry per objective ({m}), got {list(w)}")
        score = f @ w
        order = np.argsort(score, kind="stable")
        return [(int(order[i]), int(order[n - 1 - i])) for i in range(n // 2)
                if score[order[i]] < score[order[n - 1 - i]]]
    ranks = pareto_ranks(f)
    candidates = [(ranks[j] - ranks[i], i, j) for i in range(n) for j in range(n)
                  if ranks[i] < ranks[j] and dominates(f[i], f[j])]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    used: set[int] = set()
    pairs = []
    for _, i, j in candidates:
        if i not in used and j not in used:
            pairs.append((i, j))
            used.update((i, j))
    return pairs


def residue_signs(winner: Tensor, loser: Tensor) -> Tensor:
    """``sign(E^l - E^w)`` per residue (``[..., K]``, +1 where the winner's residue has the lower energy)."""
    return torch.sign(loser - winner)


def residue_dominance(winner: Tensor, loser: Tensor) -> Tensor:
    """One preference per residue from several energies ``[m, K]`` each: +1 where the winner's residue Pareto-
    dominates the loser's (no worse in every energy, better in one), -1 where the loser's dominates, 0 where they
    trade off or tie (the ``dominance`` rule for conflicting objectives: no gradient where the energies disagree)."""
    better = (winner <= loser).all(0) & (winner < loser).any(0)
    worse = (loser <= winner).all(0) & (loser < winner).any(0)
    return better.to(winner.dtype) - worse.to(winner.dtype)


def dpo_loss(policy_w: Tensor, reference_w: Tensor, policy_l: Tensor, reference_l: Tensor, signs: Tensor,
             beta: float, level: str = "residue") -> tuple[Tensor, Tensor]:
    """Eq. (8): errors ``[C, P, K]`` (components, pairs, residues), ``signs [P, K]``. ``level="residue"``: the mean
    over residues with a preference (``signs != 0``) and components of ``-log sigmoid(-beta s (d_w - d_l))``;
    ``level="design"`` (Diffusion-DPO on the whole loop, Eq. (9)): the mean over pairs and components of
    ``-log sigmoid(-beta sum_i s_i (d_w - d_l)_i)``, one margin per pair. Returns the loss and the fraction of
    terms the policy orders correctly (margin < 0, the implicit-reward accuracy)."""
    if not (policy_w.shape == reference_w.shape == policy_l.shape == reference_l.shape):
        raise ShapeError("dpo_loss: the four error tensors must have one shape [components, pairs, residues]")
    if signs.shape != policy_w.shape[1:]:
        raise ShapeError(f"dpo_loss: signs {list(signs.shape)} must be [pairs, residues] = {list(policy_w.shape[1:])}")
    if level not in LEVELS:
        raise ConfigError(f"DPO level must be one of {LEVELS}, got {level!r}")
    margin = signs * ((policy_w - reference_w) - (policy_l - reference_l))  # [C, P, K]
    active = (signs != 0).expand_as(margin)
    if level == "design":
        margin = margin.sum(-1)  # [C, P]
        active = active.any(-1)
    count = active.sum().clamp_min(1)
    loss = (-F.logsigmoid(-beta * margin) * active).sum() / count
    accuracy = ((margin < 0) & active).sum() / count
    return loss, accuracy


def pcgrad(gradients: list[list[Tensor]]) -> list[Tensor]:
    """PCGrad (Yu et al. 2020) for a few objectives, in a fixed order: each objective's gradient (one tensor per
    parameter) is projected, for every other objective whose original gradient it conflicts with (negative inner
    product), onto that gradient's normal plane; the projected gradients are summed, per parameter."""
    if len({len(g) for g in gradients}) != 1:
        raise ShapeError("pcgrad: every objective needs one gradient per parameter")
    flat = [torch.cat([g.reshape(-1) for g in grads]) for grads in gradients]
    total = torch.zeros_like(flat[0])
    for i, g in enumerate(flat):
        for j, other in enumerate(flat):
            if i != j:
                dot = torch.dot(g, other)
                if dot < 0:
                    g = g - dot / other.pow(2).sum() * other
        total = total + g
    out, offset = [], 0
    for g in gradients[0]:
        out.append(total[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return out
