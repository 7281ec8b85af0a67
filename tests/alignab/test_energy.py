"""The energy PROXY (zoo.alignab.energy) against a slow fp64 double loop over atoms, the split identities,
and physical probes on real complexes (skipped when ../shared/data is absent)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import SHARED_DATA
from zoo.alignab.energy import (
    AMINO_ACIDS,
    ATOM14,
    CHARGES,
    LJ_PARAMS,
    SIDE_CHAINS,
    coulomb,
    lennard_jones,
    lj_split,
    pair_energies,
    score_complex,
    switch,
    translate,
)
from zoo.core.errors import ConfigError, ShapeError

pytestmark = pytest.mark.usefixtures("one_thread")

# atom pairs closer than 4 bonds across a peptide bond (residue i, residue i+1), listed by hand
PEPTIDE_EXCLUDED = {("C", "N"), ("C", "CA"), ("C", "C"), ("C", "CB"), ("O", "N"), ("O", "CA"), ("CA", "N"),
                    ("CA", "CA"), ("N", "N"), ("CB", "N")}
PROLINE_EXCLUDED = {("C", "CD"), ("C", "CG"), ("O", "CD"), ("CA", "CD")}  # extra when residue i+1 is Pro
DISULFIDE_EXCLUDED = {("SG", "SG"), ("SG", "CB"), ("CB", "SG"), ("SG", "CA"), ("CA", "SG"), ("CB", "CB")}
DONORS = {"Ntrp", "NtrR", "NH2O", "Nlys", "Narg", "OH", "Nbb"}
ACCEPTORS = {"Nhis", "OH", "ONH2", "OOC", "OCbb"}


def atom_type(aa: str, name: str) -> str:
    backbone = {"N": "Npro" if aa == "P" else "Nbb", "CA": "CAbb", "C": "CObb", "O": "OCbb"}
    return backbone.get(name) or dict(SIDE_CHAINS[aa])[name]


def slow_pair(aa_i: str, aa_j: str, xi, xj, mi, mj, link: str | None) -> tuple[float, float, float]:
    """Attraction, repulsion, Coulomb between two residues, one atom pair at a time in Python floats."""
    atr = rep = elec = 0.0
    for a, name_a in enumerate(ATOM14[aa_i]):
        for b, name_b in enumerate(ATOM14[aa_j]):
            if not (mi[a] and mj[b]):
                continue
            if link == "peptide" and ((name_a, name_b) in PEPTIDE_EXCLUDED
                                      or (aa_j == "P" and (name_a, name_b) in PROLINE_EXCLUDED)):
                continue
            if link == "disulfide" and (name_a, name_b) in DISULFIDE_EXCLUDED:
                continue
            ta, tb = atom_type(aa_i, name_a), atom_type(aa_j, name_b)
            r = math.dist(xi[a], xj[b])
            polar = (ta in DONORS and tb in ACCEPTORS) or (ta in ACCEPTORS and tb in DONORS)
            r0 = 3.0 if polar else LJ_PARAMS[ta][0] + LJ_PARAMS[tb][0]
            eps = math.sqrt(LJ_PARAMS[ta][1] * LJ_PARAMS[tb][1])
            rl = 0.6 * r0 / 2 ** (1 / 6)
            lj = lambda x: eps * ((r0 / x) ** 12 - 2 * (r0 / x) ** 6)  # noqa: E731
            full = lj(r) if r >= rl else lj(rl) + eps * (-12 * r0**12 / rl**13 + 12 * r0**6 / rl**7) * (r - rl)
            if r < r0:
                atr, rep = atr - eps, rep + full + eps
            elif r < 6.0:
                s = 1.0 if r < 5.5 else (36 - r * r) ** 2 * (36 + 2 * r * r - 3 * 30.25) / (36 - 30.25) ** 3
                atr += full * s
            q = CHARGES.get((aa_i, name_a), 0.0) * CHARGES.get((aa_j, name_b), 0.0)
            rc = max(r, 1.6)
            if rc < 5.5:
                elec += 332.0637 * q * (1 / (4 * rc * rc) - 1 / (4 * 5.5 * 5.5))
    return atr, rep, elec


def slow_link(aa: str, aa_next: str, x, x_next, same_chain: bool, consecutive: bool) -> str | None:
    if same_chain and consecutive and math.dist(x[2], x_next[0]) < 2.0:
        return "peptide"
    if aa == "C" and aa_next == "C" and math.dist(x[5], x_next[5]) < 2.5:
        return "disulfide"
    return None


def random_system(seed: int, batch: int = 2, n: int = 7):
    """Residues with random atoms packed so that distances cover clashes, contacts and beyond-cutoff;
    residue 1 -> 2 peptide-bonded, residues 4 and 5 two cysteines with a disulfide, charged 0, 3, 6."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, n, 14, 3, generator=generator, dtype=torch.float64) * 9
    aa = torch.randint(0, 20, (batch, n), generator=generator)
    aa[:, 2] = AMINO_ACIDS.index("P")
    aa[:, 0], aa[:, 3], aa[:, 6] = AMINO_ACIDS.index("K"), AMINO_ACIDS.index("R"), AMINO_ACIDS.index("E")
    aa[:, 4] = aa[:, 5] = AMINO_ACIDS.index("C")
    coords[:, 2, 0] = coords[:, 1, 2] + torch.tensor([1.33, 0.0, 0.0], dtype=torch.float64)
    coords[:, 5, 5] = coords[:, 4, 5] + torch.tensor([0.0, 2.04, 0.0], dtype=torch.float64)
    mask = torch.zeros(batch, n, 14, dtype=torch.bool)
    for b in range(batch):
        for i in range(n):
            mask[b, i, :len(ATOM14[AMINO_ACIDS[aa[b, i]]])] = True
    mask[0, 3, 1] = False  # a missing atom
    chain = torch.tensor([0, 0, 0, 0, 0, 0, 1])
    return coords, aa, mask, chain


def slow_all_pairs(coords, aa, mask, chain):
    """Every residue pair i < j of every design: (atr, rep, elec)."""
    out = {}
    for b in range(coords.shape[0]):
        x, m = coords[b].tolist(), mask[b].tolist()
        for i in range(coords.shape[1]):
            for j in range(i + 1, coords.shape[1]):
                ai, aj = AMINO_ACIDS[aa[b, i]], AMINO_ACIDS[aa[b, j]]
                link = slow_link(ai, aj, x[i], x[j], bool(chain[i] == chain[j]), j == i + 1)
                out[b, i, j] = slow_pair(ai, aj, x[i], x[j], m[i], m[j], link)
    return out


def test_pair_energies_match_double_loop():
    coords, aa, mask, chain = random_system(0)
    first, second = torch.triu_indices(7, 7, offset=1)
    ours = pair_energies(coords, aa, mask, chain, first, second, chunk=5)
    slow = slow_all_pairs(coords, aa, mask, chain)
    for b in range(2):
        for p, (i, j) in enumerate(zip(first.tolist(), second.tolist())):
            for k, term in enumerate((ours.atr, ours.rep, ours.elec)):
                assert term[b, p].item() == pytest.approx(slow[b, i, j][k], rel=1e-9, abs=1e-9), (b, i, j, k)
    assert (ours.rep > 0).any() and (ours.atr < 0).any() and (ours.elec != 0).any()  # every regime is exercised


def test_pair_energies_order_of_a_pair_does_not_matter():
    coords, aa, mask, chain = random_system(1)
    first, second = torch.triu_indices(7, 7, offset=1)
    forward = pair_energies(coords, aa, mask, chain, first, second)
    backward = pair_energies(coords, aa, mask, chain, second, first)
    for a, b in ((forward.atr, backward.atr), (forward.rep, backward.rep), (forward.elec, backward.elec)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_score_complex_matches_double_loop():
    coords, aa, mask, chain = random_system(2)
    antigen = torch.tensor([False, False, False, False, False, True, True])
    cdr = torch.tensor([False, True, True, False, False, False, False])
    ours = score_complex(coords, aa, mask, chain, cdr, antigen)
    slow = slow_all_pairs(coords, aa, mask, chain)
    w = (1.0, 0.55, 1.0)
    for b in range(2):
        terms = {(i, j): v for (bb, i, j), v in slow.items() if bb == b}
        weighted = {k: sum(wi * vi for wi, vi in zip(w, v)) for k, v in terms.items()}
        cdr_ag = [(i, j) for (i, j) in terms if (cdr[i] and antigen[j]) or (cdr[j] and antigen[i])]
        ab_ag = [(i, j) for (i, j) in terms if bool(antigen[i]) != bool(antigen[j])]
        with_cdr = [(i, j) for (i, j) in terms if cdr[i] or cdr[j]]
        assert ours.cdr_ag_nonrep[b].item() == pytest.approx(sum(terms[k][0] for k in cdr_ag), abs=1e-9)
        assert ours.cdr_ag_rep[b].item() == pytest.approx(sum(terms[k][1] for k in cdr_ag), rel=1e-9, abs=1e-9)
        assert ours.cdr_ag_elec[b].item() == pytest.approx(sum(terms[k][2] for k in cdr_ag), abs=1e-9)
        assert ours.dg[b].item() == pytest.approx(sum(weighted[k] for k in ab_ag), rel=1e-9, abs=1e-9)
        assert ours.cdr_total[b].item() == pytest.approx(sum(weighted[k] for k in with_cdr), rel=1e-9, abs=1e-9)
        for r in range(7):
            nonrep = sum(terms[k][0] for k in cdr_ag if r in k and cdr[r])
            share = sum(weighted[k] / 2 for k in with_cdr if r in k)
            assert ours.residue_nonrep[b, r].item() == pytest.approx(nonrep, abs=1e-9)
            assert ours.residue_total[b, r].item() == pytest.approx(share, rel=1e-9, abs=1e-9)
    assert torch.allclose(ours.residue_rep.sum(1), ours.cdr_ag_rep, rtol=1e-12)


def test_batched_designs_score_like_single_ones():
    coords, aa, mask, chain = random_system(3, batch=3)
    antigen = torch.arange(7) >= 5
    cdr = torch.tensor([False, True, True, True, False, False, False])
    together = score_complex(coords, aa, mask, chain, cdr, antigen)
    for b in range(3):
        alone = score_complex(coords[b], aa[b], mask[b], chain, cdr, antigen)
        assert alone.dg.item() == pytest.approx(together.dg[b].item(), rel=1e-12, abs=1e-12)
        assert alone.cdr_total.item() == pytest.approx(together.cdr_total[b].item(), rel=1e-12, abs=1e-12)


def test_split_parts_sum_to_switched_lj_and_meet_at_r_min():
    r = torch.linspace(0.5, 7.0, 2001, dtype=torch.float64)
    r0, eps = torch.full_like(r, 3.8), torch.full_like(r, 0.1)
    attraction, repulsion = lj_split(r, r0, eps)
    assert torch.allclose(attraction + repulsion, lennard_jones(r, r0, eps) * switch(r, 5.5, 6.0), rtol=1e-12, atol=1e-12)
    assert (repulsion >= 0).all() and (attraction <= 0).all()
    near = torch.tensor([3.8 - 1e-7, 3.8 + 1e-7], dtype=torch.float64)
    a, rep = lj_split(near, torch.full_like(near, 3.8), torch.full_like(near, 0.1))
    assert a[0].item() == pytest.approx(a[1].item(), abs=1e-6) and a[0].item() == pytest.approx(-0.1, abs=1e-6)
    assert rep[0].item() == pytest.approx(0.0, abs=1e-6) and rep[1].item() == 0.0


def test_lj_linear_continuation_is_continuous_with_matching_slope():
    r0, eps = 4.0, 0.2
    r_lin = 0.6 * r0 / 2 ** (1 / 6)
    r = torch.tensor([r_lin - 1e-9, r_lin + 1e-9, r_lin - 0.5, r_lin - 0.4], dtype=torch.float64)
    e = lennard_jones(r, torch.full_like(r, r0), torch.full_like(r, eps))
    assert e[0].item() == pytest.approx(e[1].item(), rel=1e-5)
    analytic = eps * (-12 * r0**12 / r_lin**13 + 12 * r0**6 / r_lin**7)
    assert ((e[3] - e[2]) / 0.1).item() == pytest.approx(analytic, rel=1e-9)


def test_cutoffs_are_smooth_and_final():
    r = torch.tensor([5.5, 5.75, 6.0, 6.5], dtype=torch.float64)
    s = switch(r, 5.5, 6.0)
    assert s.tolist()[0] == 1.0 and 0 < s[1].item() < 1 and s[2].item() == 0.0 and s[3].item() == 0.0
    edge = torch.tensor([6.0 - 1e-7], dtype=torch.float64)
    assert switch(edge, 5.5, 6.0).item() == pytest.approx(0.0, abs=1e-10)
    q = torch.ones(4, dtype=torch.float64)
    elec = coulomb(torch.tensor([1.0, 5.5 - 1e-9, 5.5, 9.0], dtype=torch.float64), q)
    assert elec[0].item() == pytest.approx(332.0637 * (1 / (4 * 1.6**2) - 1 / (4 * 5.5**2)))
    assert elec[1].item() == pytest.approx(0.0, abs=1e-6) and elec[2].item() == 0.0 and elec[3].item() == 0.0


def test_hydrogen_bond_pair_is_not_a_clash():
    """Ser OG (donor) 3.0 A from Asp OD1 (acceptor): r0 = 3.0, so no repulsion; with a Gly no H-bond radius."""
    coords = torch.zeros(1, 2, 14, 3, dtype=torch.float64)
    coords[0, 0, :6] = torch.tensor([[20.0, 0, 0], [21, 0, 0], [22, 0, 0], [23, 0, 0], [24, 0, 0], [0, 0, 0]])
    coords[0, 1, :8] = torch.tensor([[-20.0, 0, 0], [-21, 0, 0], [-22, 0, 0], [-23, 0, 0], [-24, 0, 0],
                                     [-25, 0, 0], [3.0, 0, 0], [-26, 0, 0]])
    aa = torch.tensor([AMINO_ACIDS.index("S"), AMINO_ACIDS.index("D")])
    mask = torch.zeros(2, 14, dtype=torch.bool)
    mask[0, :6] = mask[1, :8] = True
    terms = pair_energies(coords, aa, mask, torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1]))
    eps = math.sqrt(LJ_PARAMS["OH"][1] * LJ_PARAMS["OOC"][1])
    assert terms.rep.item() == pytest.approx(0.0, abs=1e-12)
    assert terms.atr.item() == pytest.approx(-eps, rel=1e-12)


def test_bad_shapes_raise():
    coords, aa, mask, chain = random_system(4)
    with pytest.raises(ShapeError, match="atom14"):
        pair_energies(coords[..., :3, :], aa, mask, chain, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ShapeError, match="itself"):
        pair_energies(coords, aa, mask, chain, torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(ShapeError, match="both"):
        score_complex(coords, aa, mask, chain, torch.ones(7, dtype=torch.bool), torch.ones(7, dtype=torch.bool))
    with pytest.raises(ConfigError, match="elec_cutoff=8.0"):
        score_complex(coords, aa, mask, chain, torch.arange(7) < 2, torch.arange(7) > 4, elec_cutoff=8.0)


def test_translate_moves_only_the_mask():
    coords, _, _, _ = random_system(5)
    mask = torch.tensor([True, False, False, False, False, False, True])
    moved = translate(coords, mask, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.allclose(moved[:, mask] - coords[:, mask], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert torch.equal(moved[:, ~mask], coords[:, ~mask])


@pytest.fixture(scope="module")
def d13():
    """1VFB: antibody D1.3 with hen egg-white lysozyme (real, from ../shared/data)."""
    folder = SHARED_DATA / "antibody" / "complexes"
    if not folder.is_dir():
        pytest.skip(f"no shared antibody complexes at {folder}")
    from data_modules.complexes import Case, load_complex

    return load_complex(folder, Case("1VFB", ("A", "B"), ("C",)))


def scored(c, coords):
    return score_complex(coords.double(), c.aa, c.atom_mask, c.chain, c.cdr_h3_mask, c.antigen_mask)


def test_real_interface_attracts_and_vanishes_when_pulled_apart(d13):
    native = scored(d13, d13.coords)
    assert native.dg.item() < 0 and native.cdr_ag_nonrep.item() < 0 and native.cdr_ag_rep.item() >= 0
    apart = scored(d13, translate(d13.coords, d13.antigen_mask, torch.tensor([200.0, 0.0, 0.0])))
    for name in ("dg", "cdr_ag_nonrep", "cdr_ag_rep", "cdr_ag_elec"):
        assert getattr(apart, name).item() == 0.0, name
    assert not apart.residue_nonrep.any() and not apart.residue_rep.any()
    # E_total loses exactly the CDR-antigen part: the rest of the CDR's environment did not move
    lost = native.cdr_ag_nonrep + 0.55 * native.cdr_ag_rep + native.cdr_ag_elec
    assert apart.cdr_total.item() == pytest.approx((native.cdr_total - lost).item(), rel=1e-9, abs=1e-9)


def test_real_repulsion_rises_as_cdr_h3_is_pushed_into_the_antigen(d13):
    ca = d13.coords[:, 1]
    direction = ca[d13.antigen_mask].mean(0) - ca[d13.cdr_h3_mask].mean(0)
    direction = direction / direction.norm()
    moved = torch.stack([translate(d13.coords, d13.cdr_h3_mask, direction * step) for step in (0.0, 0.5, 1.0, 1.5, 2.0)])
    repulsion = scored(d13, moved).cdr_ag_rep
    assert (repulsion[1:] > repulsion[:-1]).all(), repulsion.tolist()
    assert repulsion[-1] > 100 * max(repulsion[0].item(), 1.0)


def test_gradients_are_finite_even_with_clashes_and_missing_atoms():
    coords, aa, mask, chain = random_system(6)
    coords.requires_grad_(True)
    antigen = torch.arange(7) >= 5
    energy = score_complex(coords, aa, mask, chain, torch.arange(7) == 1, antigen)
    (energy.dg + energy.cdr_total).sum().backward()
    assert torch.isfinite(coords.grad).all() and coords.grad.abs().sum() > 0
