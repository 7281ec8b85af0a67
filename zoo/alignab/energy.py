"""An interaction-energy PROXY for antibody-antigen complexes (AlignAb's Rosetta energies, offline).

This is NOT Rosetta and its numbers are NOT comparable to published Rosetta energies: no hydrogens, no
solvation (fa_sol / Lazaridis-Kraus), no hydrogen-bond or torsion terms, no side-chain repacking. It
keeps the two terms AlignAb / AbDPO build preferences from -- attraction (E_nonRep) and repulsion
(E_Rep) between CDR and antigen -- plus a simple electrostatic term, on heavy atoms only, vectorized in
torch and batched over designs ``[B, N residues, 14 atoms, 3]``. Units: kcal/mol, Angstrom.

Atoms: the atom14 layout (:data:`ATOM14`): per residue type the backbone N, CA, C, O, then the
side-chain heavy atoms in PDB naming order (14 slots: Trp has 14 heavy atoms; OXT is not kept).

Lennard-Jones, split at r_min (Rosetta fa_atr / fa_rep style; Alford et al. 2017, JCTC 13:3031):
  LJ(r) = eps [(r0/r)^12 - 2 (r0/r)^6],  r0 = R_a + R_b,  eps = sqrt(eps_a eps_b)   (minimum -eps at r0)
  E_atr(r) = -eps                 for r < r0,   LJ(r) S(r)  for r >= r0
  E_rep(r) = LJ(r) + eps          for r < r0,   0           for r >= r0
so ``E_atr + E_rep = LJ * S`` everywhere, both continuous at r0. Radii ``R`` and well depths ``eps`` per
heavy-atom type are Rosetta's ``fa_standard/atom_properties.txt`` values (the ref2015 / beta_nov16 fit
of Park et al. 2016, JCTC 12:6201), table :data:`LJ_PARAMS`. Two Rosetta etable conventions are kept
(``etable`` options ``lj_hbond_dis = 3.0`` and ``lj_switch_dis2sigma = 0.6``): a donor-acceptor
heavy-atom pair uses r0 = 3.0 A (an H-bond is not a clash), and below 0.6 sigma (sigma = r0 / 2^(1/6))
LJ continues linearly with the slope it has there, so clashes give large but finite energies.
S(r) is the CHARMM switching function (Brooks et al. 1983) from ``switch_on`` = 5.5 A to ``cutoff`` = 6.0 A
(Rosetta's LJ also ends at 6.0 A): smooth, no jump at the neighbour cutoff.

Electrostatics: Coulomb with the distance-dependent dielectric eps(r) = 4r, shifted to zero at
``elec_cutoff`` = 5.5 A (Rosetta fa_elec's max distance) and with r floored at 1.6 A (its min distance):
  E_elec = 332.0637 q_a q_b [1 / (4 r^2) - 1 / (4 r_c^2)]   for r < r_c.
Charges are formal, on the charged groups only (:data:`CHARGES`): Lys NZ +1; Arg NE, NH1, NH2 +1/3 each;
Asp OD1, OD2 and Glu OE1, OE2 -1/2 each; His neutral; chain termini neutral.

Pairs counted: atoms of different residues only (intra-residue energies are left out), and between
covalently linked residues (peptide bond C(i)-N(i+1) < 2.0 A, disulfide SG-SG < 2.5 A) only atom pairs
at least 4 bonds apart. Neighbours: a residue pair is scored only if some design puts it within
``cutoff`` (bounding spheres around each residue's atoms), then every atom pair of it.

Reported (:func:`score_complex`), for a chosen CDR mask (e.g. CDR-H3) and antigen mask:
- ``cdr_ag_nonrep`` / ``cdr_ag_rep`` / ``cdr_ag_elec``: CDR-antigen attraction, repulsion, electrostatics,
  summed over CDR-antigen atom pairs; per residue (``residue_nonrep``, ``residue_rep``) each pair's energy
  goes to its CDR residue, so the per-residue values sum to the totals (AbDPO's residue decomposition).
- ``cdr_total``: CDR E_total, the weighted energy of every scored pair with at least one CDR residue
  (CDR-CDR, CDR-rest of antibody, CDR-antigen); ``residue_total`` splits each pair half-half.
- ``dg``: the interface dG proxy, the weighted interaction energy of the whole antibody with the antigen,
  E(complex) - E(antibody) - E(antigen) with rigid separation (no repacking, no solvation);
  ``dg_atr`` is its unweighted attraction part.
Weights: Rosetta ref2015 ``fa_atr 1.0, fa_rep 0.55, fa_elec 1.0`` (:data:`REF2015_WEIGHTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from data_modules.residues import AMINO_ACIDS, ATOM14, SIDE_CHAINS  # index 20 = X, unknown (backbone only)
from zoo.core.errors import ConfigError, ShapeError

# Rosetta fa_standard atom_properties.txt (ref2015): LJ_RADIUS (A), LJ_WDEPTH (kcal/mol), donor, acceptor.
# Rosetta's SH1 (Cys SG) has the values of S; NtrR (Arg NE) those of Narg.
LJ_PARAMS: dict[str, tuple[float, float, bool, bool]] = {
    "CNH2": (1.968297, 0.094638, False, False),
    "COO": (1.916661, 0.141799, False, False),
    "CH1": (2.011760, 0.062642, False, False),
    "CH2": (2.011760, 0.062642, False, False),
    "CH3": (2.011760, 0.062642, False, False),
    "aroC": (2.016441, 0.068775, False, False),
    "Ntrp": (1.802452, 0.161725, True, False),
    "Nhis": (1.802452, 0.161725, False, True),
    "NtrR": (1.802452, 0.161725, True, False),
    "NH2O": (1.802452, 0.161725, True, False),
    "Nlys": (1.802452, 0.161725, True, False),
    "Narg": (1.802452, 0.161725, True, False),
    "Npro": (1.802452, 0.161725, False, False),
    "OH": (1.542743, 0.161947, True, True),
    "ONH2": (1.548662, 0.182924, False, True),
    "OOC": (1.492871, 0.099873, False, True),
    "S": (1.975967, 0.455970, False, False),
    "Nbb": (1.802452, 0.161725, True, False),
    "CAbb": (2.011760, 0.062642, False, False),
    "CObb": (1.916661, 0.141799, False, False),
    "OCbb": (1.540580, 0.142417, False, True),
}
CHARGES: dict[tuple[str, str], float] = {
    ("K", "NZ"): 1.0, ("R", "NE"): 1 / 3, ("R", "NH1"): 1 / 3, ("R", "NH2"): 1 / 3,
    ("D", "OD1"): -0.5, ("D", "OD2"): -0.5, ("E", "OE1"): -0.5, ("E", "OE2"): -0.5,
}
REF2015_WEIGHTS = {"atr": 1.0, "rep": 0.55, "elec": 1.0}
COULOMB = 332.0637  # kcal A / (mol e^2)
HBOND_R0 = 3.0  # Rosetta etable lj_hbond_dis
LINEAR_BELOW = 0.6  # Rosetta etable lj_switch_dis2sigma
PEPTIDE_BOND, DISULFIDE = 2.0, 2.5  # A: C(i)-N(i+1) and SG-SG distances that count as covalent links
ELEC_MIN = 1.6


def _tables() -> dict[str, Tensor]:
    """Per (residue type, atom14 slot) lookup tables: LJ radius and depth, donor/acceptor flags, charge,
    and bond counts from the residue's C, N and Cys SG (3 stands for '3 or more')."""
    shape = (len(AMINO_ACIDS) + 1, 14)
    radius, depth, charge = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
    radius += 1.0  # empty slots (never scored): any r0 > 0 keeps the masked-out branches' gradients finite
    donor, acceptor = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    from_c, from_n, from_sg = torch.full(shape, 3), torch.full(shape, 3), torch.full(shape, 3)
    for index, aa in enumerate(AMINO_ACIDS + "X"):
        types = ("Npro" if aa == "P" else "Nbb", "CAbb", "CObb", "OCbb") + tuple(t for _, t in SIDE_CHAINS[aa])
        for slot, (name, kind) in enumerate(zip(ATOM14[aa], types)):
            radius[index, slot], depth[index, slot], donor[index, slot], acceptor[index, slot] = LJ_PARAMS[kind]
            charge[index, slot] = CHARGES.get((aa, name), 0.0)
            from_c[index, slot] = {"C": 0, "O": 1, "CA": 1, "N": 2, "CB": 2}.get(name, 3)
            proline = {"CD": 1, "CG": 2} if aa == "P" else {}  # the Pro ring closes on N
            from_n[index, slot] = {"N": 0, "CA": 1, "C": 2, "CB": 2, **proline}.get(name, 3)
            if aa == "C":
                from_sg[index, slot] = {"SG": 0, "CB": 1, "CA": 2}.get(name, 3)
    return {"radius": radius, "depth": depth, "charge": charge, "donor": donor, "acceptor": acceptor,
            "from_c": from_c, "from_n": from_n, "from_sg": from_sg}


TABLES = _tables()


def switch(r: Tensor, on: float, off: float) -> Tensor:
    """CHARMM switching function (Brooks et al. 1983): 1 below ``on``, 0 beyond ``off``, C1-smooth between."""
    r2, on2, off2 = r * r, on * on, off * off
    inside = (off2 - r2) ** 2 * (off2 + 2 * r2 - 3 * on2) / (off2 - on2) ** 3
    return torch.where(r < on, torch.ones_like(r), torch.where(r < off, inside, torch.zeros_like(r)))


def lennard_jones(r: Tensor, r0: Tensor, eps: Tensor) -> Tensor:
    """``eps [(r0/r)^12 - 2 (r0/r)^6]``, continued linearly below ``0.6 sigma`` (Rosetta etable)."""
    r_lin = LINEAR_BELOW * r0 * 2 ** (-1 / 6)
    x = r0 / torch.maximum(r, r_lin)
    value = eps * (x**12 - 2 * x**6)
    x_lin = r0 / r_lin
    slope = eps * (-12 * x_lin**12 + 12 * x_lin**6) / r_lin
    return torch.where(r < r_lin, value + slope * (r - r_lin), value)


def lj_split(r: Tensor, r0: Tensor, eps: Tensor, switch_on: float = 5.5, cutoff: float = 6.0) -> tuple[Tensor, Tensor]:
    """Attractive (fa_atr style) and repulsive (fa_rep style) parts of the switched LJ, split at ``r0``."""
    lj = lennard_jones(r, r0, eps)
    inner = r < r0
    attraction = torch.where(inner, -eps, lj * switch(r, switch_on, cutoff))
    repulsion = torch.where(inner, lj + eps, torch.zeros_like(r))
    return attraction, repulsion


def coulomb(r: Tensor, q: Tensor, cutoff: float = 5.5) -> Tensor:
    """``332 q_a q_b [1/(4 r^2) - 1/(4 r_c^2)]`` below ``cutoff`` (dielectric 4r, shifted to 0), r >= 1.6 A."""
    r = r.clamp_min(ELEC_MIN)
    value = COULOMB * q * (1 / (4 * r * r) - 1 / (4 * cutoff * cutoff))
    return torch.where(r < cutoff, value, torch.zeros_like(r))


@dataclass
class PairTerms:
    """Energies of residue pairs ``(first[p], second[p])`` per design: attraction, repulsion, Coulomb ``[B, P]``."""

    first: Tensor
    second: Tensor
    atr: Tensor
    rep: Tensor
    elec: Tensor

    def weighted(self, weights: dict[str, float] = REF2015_WEIGHTS) -> Tensor:
        return weights["atr"] * self.atr + weights["rep"] * self.rep + weights["elec"] * self.elec


def _batched(coords: Tensor, aa: Tensor, atom_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if coords.dim() == 3:
        coords = coords[None]
    if coords.dim() != 4 or coords.shape[-2:] != (14, 3):
        raise ShapeError(f"coords must be [B, N, 14, 3] or [N, 14, 3] (atom14), got {tuple(coords.shape)}")
    batch, n = coords.shape[:2]
    if aa.shape[-1] != n or atom_mask.shape[-2:] != (n, 14):
        raise ShapeError(f"aa {tuple(aa.shape)} and atom_mask {tuple(atom_mask.shape)} "
                         f"do not match coords {tuple(coords.shape)}")
    return coords, aa.expand(batch, n), atom_mask.to(torch.bool).expand(batch, n, 14)


def neighbour_pairs(coords: Tensor, atom_mask: Tensor, first: Tensor, second: Tensor,
                    cutoff: float = 6.0) -> tuple[Tensor, Tensor]:
    """Residue pairs ``(i in first, j in second, i != j)``, each unordered pair once, that some design puts
    within ``cutoff``: bounding spheres (centre = mean of present atoms) closer than ``cutoff``."""
    if coords.dim() == 3:
        coords = coords[None]
    atom_mask = atom_mask.to(torch.bool).expand(coords.shape[:-1])
    weight = atom_mask.to(coords.dtype)[..., None]
    centre = (coords * weight).sum(-2) / weight.sum(-2).clamp_min(1)
    reach = (((coords - centre[..., None, :]) ** 2).sum(-1).sqrt() * atom_mask).amax(-1)  # [B, N]
    gap = torch.cdist(centre[:, first], centre[:, second]) - reach[:, first, None] - reach[:, None, second]
    present = atom_mask.any(-1).any(0)  # [N]
    close = (gap < cutoff).any(0) & present[first][:, None] & present[second][None]
    a, b = first[:, None].expand_as(close)[close], second[None, :].expand_as(close)[close]
    low, high = torch.minimum(a, b), torch.maximum(a, b)
    keep = low != high
    key = torch.unique(low[keep] * (coords.shape[1] + 1) + high[keep])
    return key // (coords.shape[1] + 1), key % (coords.shape[1] + 1)


def pair_energies(coords: Tensor, aa: Tensor, atom_mask: Tensor, chain: Tensor, first: Tensor, second: Tensor,
                  switch_on: float = 5.5, cutoff: float = 6.0, elec_cutoff: float = 5.5,
                  chunk: int = 2048) -> PairTerms:
    """Attraction, repulsion and Coulomb energy between the residues of each pair, summed over their atoms.

    ``coords [B, N, 14, 3]``, ``aa [N]`` or ``[B, N]`` (designs may change the sequence), ``atom_mask`` ``[N, 14]``
    or ``[B, N, 14]``, ``chain [N]`` (covalent links only within a chain); ``first``, ``second`` ``[P]`` residue
    indices with ``first != second``. Atom pairs closer than 4 bonds across a peptide or disulfide bond are left out.
    """
    coords, aa, atom_mask = _batched(coords, aa, atom_mask)
    if (first == second).any():
        raise ShapeError("pair_energies: a residue paired with itself (intra-residue energies are not scored)")
    tables = {k: v.to(coords.device) for k, v in TABLES.items()}
    out = {k: [] for k in ("atr", "rep", "elec")}
    for start in range(0, len(first), chunk):
        i, j = first[start:start + chunk], second[start:start + chunk]
        ai, aj = aa[:, i], aa[:, j]  # [B, P]
        xi, xj = coords[:, i], coords[:, j]  # [B, P, 14, 3]
        r = ((xi[..., :, None, :] - xj[..., None, :, :]) ** 2).sum(-1).clamp_min(1e-12).sqrt()  # [B, P, 14, 14]
        take = lambda name, a: tables[name][a]  # noqa: E731  [B, P, 14]
        donor = take("donor", ai)[..., :, None] & take("acceptor", aj)[..., None, :]
        donor |= take("acceptor", ai)[..., :, None] & take("donor", aj)[..., None, :]
        r0 = (take("radius", ai)[..., :, None] + take("radius", aj)[..., None, :]).to(r)
        r0 = torch.where(donor, torch.full_like(r, HBOND_R0), r0)
        eps = (take("depth", ai)[..., :, None] * take("depth", aj)[..., None, :]).sqrt().to(r)
        q = (take("charge", ai)[..., :, None] * take("charge", aj)[..., None, :]).to(r)
        valid = atom_mask[:, i][..., :, None] & atom_mask[:, j][..., None, :]
        same_chain = (chain[i] == chain[j])[None, :, None, None]
        # peptide bond between consecutive residues of a chain: i + 1 == j (or the reverse)
        for lo, hi, sign in ((ai, aj, 1), (aj, ai, -1)):
            linked = same_chain & ((j - i) == sign)[None, :, None, None]
            c_atom, n_atom = (xi, xj) if sign == 1 else (xj, xi)
            c_mask, n_mask = (atom_mask[:, i], atom_mask[:, j]) if sign == 1 else (atom_mask[:, j], atom_mask[:, i])
            bond = ((c_atom[..., 2, :] - n_atom[..., 0, :]) ** 2).sum(-1).sqrt() < PEPTIDE_BOND  # [B, P]
            bond &= c_mask[..., 2] & n_mask[..., 0]
            depth = take("from_c", lo)[..., :, None] + take("from_n", hi)[..., None, :]
            if sign == -1:
                depth = depth.transpose(-1, -2)
            valid &= ~(linked & bond[..., None, None] & (depth <= 2))
        cys = (ai == AMINO_ACIDS.index("C")) & (aj == AMINO_ACIDS.index("C"))
        ss = cys & (((xi[..., 5, :] - xj[..., 5, :]) ** 2).sum(-1).sqrt() < DISULFIDE)
        ss &= atom_mask[:, i][..., 5] & atom_mask[:, j][..., 5]
        depth = take("from_sg", ai)[..., :, None] + take("from_sg", aj)[..., None, :]
        valid &= ~(ss[..., None, None] & (depth <= 2))
        attraction, repulsion = lj_split(r, r0, eps, switch_on, cutoff)
        zero = torch.zeros_like(r)
        out["atr"].append(torch.where(valid, attraction, zero).sum((-1, -2)))
        out["rep"].append(torch.where(valid, repulsion, zero).sum((-1, -2)))
        out["elec"].append(torch.where(valid, coulomb(r, q, elec_cutoff), zero).sum((-1, -2)))
    empty = coords.new_zeros(coords.shape[0], 0)
    return PairTerms(first, second, *(torch.cat(out[k], 1) if out[k] else empty for k in ("atr", "rep", "elec")))


@dataclass
class ComplexEnergy:
    """Energy PROXY terms of a batch of designs (see the module docstring); totals ``[B]``, per residue ``[B, N]``."""

    cdr_ag_nonrep: Tensor
    cdr_ag_rep: Tensor
    cdr_ag_elec: Tensor
    cdr_total: Tensor
    dg: Tensor
    dg_atr: Tensor
    residue_nonrep: Tensor
    residue_rep: Tensor
    residue_total: Tensor


def score_complex(coords: Tensor, aa: Tensor, atom_mask: Tensor, chain: Tensor, cdr_mask: Tensor, antigen_mask: Tensor,
                  weights: dict[str, float] = REF2015_WEIGHTS, switch_on: float = 5.5, cutoff: float = 6.0,
                  elec_cutoff: float = 5.5) -> ComplexEnergy:
    """CDR-antigen attraction / repulsion (total and per CDR residue), CDR E_total and the interface dG proxy.

    ``cdr_mask`` and ``antigen_mask`` are ``[N]`` booleans over the residues of ``coords [B, N, 14, 3]``;
    every residue not in the antigen counts as antibody.
    """
    coords, aa, atom_mask = _batched(coords, aa, atom_mask)
    if cdr_mask.shape != (coords.shape[1],) or antigen_mask.shape != (coords.shape[1],):
        raise ShapeError(f"cdr_mask {tuple(cdr_mask.shape)} and antigen_mask {tuple(antigen_mask.shape)} "
                         f"must be [{coords.shape[1]}]")
    if (cdr_mask & antigen_mask).any():
        raise ShapeError("score_complex: a residue is in both the CDR mask and the antigen mask")
    if not (0 < switch_on < cutoff and 0 < elec_cutoff <= cutoff):
        raise ConfigError(f"need 0 < switch_on < cutoff and 0 < elec_cutoff <= cutoff (the neighbour cutoff), "
                          f"got switch_on={switch_on}, cutoff={cutoff}, elec_cutoff={elec_cutoff}")
    batch, n = coords.shape[:2]
    index = torch.arange(n, device=coords.device)
    cdr, antigen, antibody = index[cdr_mask], index[antigen_mask], index[~antigen_mask]
    kw = dict(switch_on=switch_on, cutoff=cutoff, elec_cutoff=elec_cutoff)

    pairs = neighbour_pairs(coords, atom_mask, antibody, antigen, cutoff)
    interface = pair_energies(coords, aa, atom_mask, chain, *pairs, **kw)
    # ordered (antibody, antigen) so each pair's energy can be given to its antibody residue
    ab_side = torch.where(antigen_mask[interface.first], interface.second, interface.first)
    in_cdr = cdr_mask[ab_side]
    residue_nonrep = coords.new_zeros(batch, n).index_add_(1, ab_side[in_cdr], interface.atr[:, in_cdr])
    residue_rep = coords.new_zeros(batch, n).index_add_(1, ab_side[in_cdr], interface.rep[:, in_cdr])

    inner = pair_energies(coords, aa, atom_mask, chain, *neighbour_pairs(coords, atom_mask, cdr, index, cutoff), **kw)
    half = inner.weighted(weights) / 2
    residue_total = coords.new_zeros(batch, n).index_add_(1, inner.first, half).index_add_(1, inner.second, half)
    return ComplexEnergy(
        cdr_ag_nonrep=interface.atr[:, in_cdr].sum(1),
        cdr_ag_rep=interface.rep[:, in_cdr].sum(1),
        cdr_ag_elec=interface.elec[:, in_cdr].sum(1),
        cdr_total=half.sum(1) * 2,
        dg=interface.weighted(weights).sum(1),
        dg_atr=interface.atr.sum(1),
        residue_nonrep=residue_nonrep,
        residue_rep=residue_rep,
        residue_total=residue_total,
    )


def translate(coords: Tensor, mask: Tensor, shift: Tensor) -> Tensor:
    """Copy of ``coords [..., N, 14, 3]`` with the residues in ``mask [N]`` moved by ``shift [3]`` (for probes)."""
    moved = coords.clone()
    moved[..., mask, :, :] += shift.to(coords)
    return moved

