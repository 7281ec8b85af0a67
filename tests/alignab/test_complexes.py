"""Antibody-antigen complexes: parsing errors, frames, CDRs and epitope against brute force, the CDR-H3
patch, PDB round trip and the DataModule. Real-complex tests skip when ../shared/data is absent."""

from __future__ import annotations

import math

import pytest
import torch
from Bio.PDB import PDBParser

from data_modules.complexes import (
    CDR_NAMES,
    ROLES,
    Case,
    ComplexDataModule,
    cdr_h3_patch,
    load_complex,
    local_frames,
    read_affinities,
    read_cases,
    read_pdb_complex,
    write_pdb,
)
from tests.conftest import SHARED_DATA
from zoo.alignab.energy import ATOM14
from zoo.core.errors import MalformedDataError, MissingDataError

pytestmark = pytest.mark.usefixtures("one_thread")
ANTIBODY = SHARED_DATA / "antibody"
needs_data = pytest.mark.skipif(not (ANTIBODY / "cases.tsv").is_file(), reason=f"no shared antibody data at {ANTIBODY}")


@pytest.fixture(scope="module")
def d13():
    """1VFB: antibody D1.3 (cases.tsv lists the light chain A before the heavy chain B) with lysozyme C."""
    if not (ANTIBODY / "cases.tsv").is_file():
        pytest.skip(f"no shared antibody data at {ANTIBODY}")
    return load_complex(ANTIBODY / "complexes", Case("1VFB", ("A", "B"), ("C",)))


def test_read_cases_and_errors(tmp_path):
    good = tmp_path / "cases.tsv"
    good.write_text("Complex PDB\tName\n1ABC_HL:A \tx\n2XYZ_B:CD\ty\n")
    cases = read_cases(good)
    assert [(c.name, c.antibody, c.antigen) for c in cases] == [("1ABC", ("H", "L"), ("A",)), ("2XYZ", ("B",), ("C", "D"))]
    bad = tmp_path / "bad.tsv"
    bad.write_text("Complex PDB\n1ABC-HL-A\n")
    with pytest.raises(MalformedDataError, match="1ABC-HL-A"):
        read_cases(bad)
    with pytest.raises(MissingDataError, match="nope.tsv"):
        read_cases(tmp_path / "nope.tsv")


def test_missing_file_absent_chain_and_garbage(tmp_path):
    with pytest.raises(MissingDataError, match="1ABC_r_b.pdb"):
        load_complex(tmp_path, Case("1ABC", ("H", "L"), ("A",)))
    atom = "ATOM      1  {:<3} GLY H   1    {:8.3f}{:8.3f}{:8.3f}  1.00  0.00           {}\n"
    lines = [atom.format(name, x, 0.0, 0.0, name[0]) for name, x in (("N", 0.0), ("CA", 1.5), ("C", 3.0), ("O", 4.0))]
    (tmp_path / "1ABC_r_b.pdb").write_text("".join(lines) + "END\n")
    (tmp_path / "1ABC_l_b.pdb").write_text("".join(lines).replace(" H   1", " A   1") + "END\n")
    with pytest.raises(MalformedDataError, match=r"1ABC_r_b.pdb: chain 'L' not found"):
        load_complex(tmp_path, Case("1ABC", ("H", "L"), ("A",)))
    with pytest.raises(MalformedDataError, match=r"1ABC_r_b.pdb: chain 'H' \(H\): CDRs not numbered"):
        load_complex(tmp_path, Case("1ABC", ("H",), ("A",)))
    (tmp_path / "2BAD_r_b.pdb").write_text("this is not a PDB file\n")
    (tmp_path / "2BAD_l_b.pdb").write_text("".join(lines))
    with pytest.raises(MalformedDataError, match="2BAD_r_b.pdb"):
        load_complex(tmp_path, Case("2BAD", ("H",), ("A",)))


def test_local_frames_orthonormal_right_handed():
    generator = torch.Generator().manual_seed(0)
    n, ca, c = (torch.randn(50, 3, generator=generator, dtype=torch.float64) for _ in range(3))
    frames = local_frames(n, ca, c)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    assert torch.allclose(frames.transpose(-1, -2) @ frames, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(frames), torch.ones(50, dtype=torch.float64), atol=1e-12)
    e1 = (c - ca) / (c - ca).norm(dim=-1, keepdim=True)
    assert torch.allclose(frames[..., 0], e1, atol=1e-12)
    assert ((frames[..., 1] * (n - ca)).sum(-1) > 0).all()  # N lies on the +e2 side
    assert torch.allclose((frames[..., 2] * (n - ca)).sum(-1), torch.zeros(50, dtype=torch.float64), atol=1e-10)


@needs_data
def test_real_complex_roles_cdrs_and_atoms(d13):
    # heavy chain first whatever the listed order; D1.3's CDR-H3 (IMGT) is ARERDYRLDY
    assert d13.chain_ids == ["B", "A", "C"]
    assert [ROLES[d13.role[d13.chain == i][0]] for i in range(3)] == ["heavy", "light", "antigen"]
    assert d13.sequence(d13.cdr_h3_mask) == "ARERDYRLDY"
    assert set(d13.cdr[d13.role == 0].unique().tolist()) == {0, 1, 2, 3}
    assert set(d13.cdr[d13.role == 1].unique().tolist()) == {0, 4, 5, 6}
    assert not d13.cdr[d13.antigen_mask].any()
    structure = PDBParser(QUIET=True).get_structure("r", str(ANTIBODY / "complexes" / "1VFB_r_b.pdb"))
    chain = list(structure[0]["B"])
    first_h3 = int(torch.nonzero(d13.cdr_h3_mask)[0])
    residue = next(r for r in chain if r.id[1] == int(d13.resseq[first_h3]) and r.id[2] == d13.icode[first_h3])
    names = ATOM14["ACDEFGHIKLMNPQRSTVWY"[d13.aa[first_h3]]]
    for slot, name in enumerate(names):
        assert d13.atom_mask[first_h3, slot]
        assert torch.allclose(d13.coords[first_h3, slot], torch.tensor(residue[name].get_coord()), atol=1e-4)
    assert not d13.atom_mask[first_h3, len(names):].any()
    assert torch.allclose(torch.linalg.det(d13.frames()), torch.ones(len(d13)), atol=1e-4)


@needs_data
def test_epitope_matches_atom_double_loop(d13):
    cutoff = 4.5
    cdr_atoms = [d13.coords[i, a].tolist() for i in range(len(d13)) if d13.cdr[i] > 0
                 for a in range(14) if d13.atom_mask[i, a]]
    expected = []
    for i in torch.nonzero(d13.antigen_mask).flatten().tolist():
        atoms = [d13.coords[i, a].tolist() for a in range(14) if d13.atom_mask[i, a]]
        if any(math.dist(x, y) < cutoff for x in atoms for y in cdr_atoms):
            expected.append(i)
    assert torch.nonzero(d13.epitope).flatten().tolist() == expected
    assert 5 < len(expected) < 40  # a real interface, not all or nothing


@needs_data
def test_cdr_h3_patch_is_the_nearest_residues(d13):
    index = cdr_h3_patch(d13, 64)
    h3 = d13.coords[d13.cdr_h3_mask, 1].tolist()
    distance = [min(math.dist(d13.coords[i, 1].tolist(), y) for y in h3) for i in range(len(d13))]
    ranked = sorted(range(len(d13)), key=lambda i: distance[i])
    assert set(index.tolist()) == set(ranked[:64])
    assert set(torch.nonzero(d13.cdr_h3_mask).flatten().tolist()) <= set(index.tolist())
    assert d13.antigen_mask[index].any() and not d13.antigen_mask[index].all()


@needs_data
def test_pdb_round_trip_and_designed_sequence(d13, tmp_path):
    back = read_pdb_complex(write_pdb(d13, tmp_path / "native.pdb"), d13)
    assert torch.equal(back.aa, d13.aa) and torch.equal(back.atom_mask, d13.atom_mask)
    assert torch.equal(back.resseq, d13.resseq) and back.icode == d13.icode
    assert torch.allclose(back.coords, d13.coords, atol=1e-3)  # PDB keeps 3 decimals
    design = list(d13.sequence())
    h3 = torch.nonzero(d13.cdr_h3_mask).flatten().tolist()
    for i in h3:
        design[i] = "G"
    shifted = d13.coords + 0.5
    back = read_pdb_complex(write_pdb(d13, tmp_path / "design.pdb", sequence="".join(design), coords=shifted), d13)
    assert back.sequence() == "".join(design)
    assert torch.allclose(back.coords[back.atom_mask], shifted[back.atom_mask], atol=1e-3)
    changed = [i for i in h3 if d13.sequence()[i] != "G"]
    assert back.atom_mask[changed].sum(-1).tolist() == [4] * len(changed)  # a new residue: backbone only


@needs_data
def test_datamodule_splits_patches_cache_and_skips(tmp_path):
    data = tmp_path / "data"
    (data / "complexes").mkdir(parents=True)
    names = {"1VFB": "AB:C", "5E5M": "B:A", "4M3K": "B:A", "2I25": "N:L"}  # 2I25 (shark VNAR) is not numbered
    for name in names:
        for side in ("r", "l"):
            (data / "complexes" / f"{name}_{side}_b.pdb").symlink_to(ANTIBODY / "complexes" / f"{name}_{side}_b.pdb")
    (data / "cases.tsv").write_text("Complex PDB\n" + "".join(f"{n}_{c}\n" for n, c in names.items()))
    kwargs = dict(data_dir=str(data), patch_size=96, val_fraction=0.34, test_fraction=0.34, cache_dir=str(tmp_path / "cache"))
    dm = ComplexDataModule(**kwargs)
    with pytest.warns(UserWarning, match="2I25"):
        dm.setup()
    assert set(dm.skipped) == {"2I25"}
    assert sorted(sum(dm.splits.values(), [])) == ["1VFB", "4M3K", "5E5M"]
    assert all(len(v) == 1 for v in dm.splits.values())
    batch = next(iter(dm.train_dataloader()))
    fields = dict(zip(dm.fields, batch))
    assert fields["coords"].shape == (1, 96, 14, 3) and fields["aa"].shape == (1, 96)
    complex_ = dm.complexes[int(fields["complex"][0, 0])]
    keep = fields["residue_mask"][0]
    assert torch.equal(fields["aa"][0][keep], complex_.aa[fields["index"][0][keep]])
    h3 = fields["cdr"][0] == CDR_NAMES.index("H3") + 1
    assert fields["coords"][0][h3][:, 1].mean(0).abs().max() < 1e-4  # centred on the CDR-H3 C-alpha centroid
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3
    again = ComplexDataModule(**kwargs)
    with pytest.warns(UserWarning):
        again.setup()
    assert again.splits == dm.splits
    assert all(torch.equal(a.coords, b.coords) for a, b in zip(again.complexes, dm.complexes))


@needs_data
def test_patch_pads_a_small_complex(d13):
    patch = ComplexDataModule(patch_size=400).patch(d13)
    keep = patch["residue_mask"]
    assert patch["coords"].shape == (400, 14, 3) and int(keep.sum()) == len(d13)
    assert (patch["index"][~keep] == -1).all() and (patch["index"][keep] == torch.arange(len(d13))).all()
    assert not patch["atom_mask"][~keep].any() and (patch["aa"][~keep] == 20).all()


@needs_data
def test_read_affinities():
    affinities = read_affinities(ANTIBODY / "affinities.tsv")
    assert len(affinities) == 34 and affinities["1S78"] == pytest.approx(-8.45)
    assert all(-20 < v < -4 for v in affinities.values())


def test_datamodule_missing_cases(tmp_path):
    with pytest.raises(MissingDataError, match="cases.tsv"):
        ComplexDataModule(data_dir=str(tmp_path)).setup()
