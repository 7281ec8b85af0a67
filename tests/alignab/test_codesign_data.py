"""The design mode of ComplexDataModule (AlignAb stage 2): patches around every CDR centred on the loop's
anchors, the LM's masked chain tokens, split by complex, and one-line reasons for each complex or loop it
skips. A writer of small synthetic complexes (real antibody sequences on a made-up helical backbone) serves
these tests, the model tests and the contract test."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from data_modules.complexes import CDR_NAMES, ComplexDataModule, lm_tokens, load_complex, loop_anchors, read_cases
from data_modules.residues import AMINO_ACIDS, AminoAcidTokenizer
from tests.alignab.test_antibody_data import HAND_CHECKED
from tests.conftest import SHARED_DATA
from zoo.alignab.so3 import backbone_from_frames, place_oxygen

pytestmark = pytest.mark.usefixtures("one_thread")
ANTIBODY = SHARED_DATA / "antibody"
needs_data = pytest.mark.skipif(not (ANTIBODY / "cases.tsv").is_file(), reason=f"no shared antibody data at {ANTIBODY}")
HEAVY, LIGHT = HAND_CHECKED[0][2], HAND_CHECKED[1][2]
ATOM = "ATOM  {:5d}  {:<3} {} {}{:4d}    {:8.3f}{:8.3f}{:8.3f}  1.00  0.00           {}\n"
THREE = {"A": "ALA", "C": "CYS", "D": "ASP", "E": "GLU", "F": "PHE", "G": "GLY", "H": "HIS", "I": "ILE",
         "K": "LYS", "L": "LEU", "M": "MET", "N": "ASN", "P": "PRO", "Q": "GLN", "R": "ARG", "S": "SER",
         "T": "THR", "V": "VAL", "W": "TRP", "Y": "TYR"}


def helix(n: int, shift: tuple[float, float, float], phase: float = 0.0) -> torch.Tensor:
    """C-alpha trace of an ideal alpha helix (2.3 A radius, 1.5 A rise, 100 deg per residue)."""
    i = torch.arange(n, dtype=torch.float64)
    angle = torch.deg2rad(100 * i) + phase
    return torch.stack([2.3 * angle.cos(), 2.3 * angle.sin(), 1.5 * i], -1) + torch.tensor(shift, dtype=torch.float64)


def backbone(ca: torch.Tensor) -> torch.Tensor:
    """N, CA, C, O ``[n, 4, 3]`` on a C-alpha trace: frames from the neighbours, ideal local geometry."""
    ahead = torch.cat([ca[1:] - ca[:-1], (ca[-1] - ca[-2])[None]])
    behind = torch.cat([(ca[0] - ca[1])[None], ca[:-1] - ca[1:]])
    e1 = torch.nn.functional.normalize(ahead, dim=-1)
    e2 = torch.nn.functional.normalize(behind - (behind * e1).sum(-1, keepdim=True) * e1, dim=-1)
    rot = torch.stack([e1, e2, torch.linalg.cross(e1, e2)], -1)
    atoms = backbone_from_frames(rot, ca)
    n_next = torch.cat([atoms[1:, 0], atoms[-1:, 2] + 1.0])
    return torch.cat([atoms, place_oxygen(atoms[:, 1], atoms[:, 2], n_next)[:, None]], 1)


def pdb_lines(chains: dict[str, tuple[str, torch.Tensor]]) -> str:
    lines, serial = [], 1
    for chain_id, (sequence, atoms) in chains.items():
        for number, (aa, residue) in enumerate(zip(sequence, atoms), start=1):
            for name, xyz in zip(("N", "CA", "C", "O"), residue.tolist()):
                lines.append(ATOM.format(serial, name, THREE[aa], chain_id, number, *xyz, name[0]))
                serial += 1
    return "".join(lines) + "END\n"


def write_complexes(folder: Path, n: int = 5, extra_cases: str = "") -> dict:
    """``n`` synthetic complexes ``SYN<i>`` (trastuzumab VH + VL with varied CDR-H3 residues, an antigen
    strand 4 A beside the CDR-H3) under ``folder``: ``cases.tsv`` and ``complexes/``. Returns the
    DataModule arguments."""
    (folder / "complexes").mkdir(parents=True, exist_ok=True)
    cases = ["Complex PDB"]
    h3 = HEAVY.index("SRWGGDGFYAMDY")
    for i in range(n):
        heavy = HEAVY[:h3 + 2] + "".join(AMINO_ACIDS[(i * 7 + k * 3) % 20] for k in range(9)) + HEAVY[h3 + 11:]
        h_ca, l_ca = helix(len(heavy), (0.0, 0.0, 0.0), 0.3 * i), helix(len(LIGHT), (14.0, 0.0, 10.0))
        loop = h_ca[h3:h3 + 13]
        radial = torch.nn.functional.normalize(loop * torch.tensor([1.0, 1.0, 0.0]), dim=-1)
        antigen_ca = loop + 4.0 * radial + torch.tensor([0.0, 0.0, 0.5])
        antibody = {"H": (heavy, backbone(h_ca)), "L": (LIGHT, backbone(l_ca))}
        name = f"SYN{i}"
        (folder / "complexes" / f"{name}_r_b.pdb").write_text(pdb_lines(antibody))
        (folder / "complexes" / f"{name}_l_b.pdb").write_text(pdb_lines({"A": ("G" * len(loop), backbone(antigen_ca))}))
        cases.append(f"{name}_HL:A")
    (folder / "cases.tsv").write_text("\n".join(cases) + "\n" + extra_cases)
    return {"data_dir": str(folder)}


DESIGN = dict(patch_size=32, design_cdrs=list(CDR_NAMES), val_fraction=0.2, test_fraction=0.2, batch_size=2)


def test_design_patches_are_centred_on_the_anchors_and_carry_the_lm_tokens(tmp_path):
    dm = ComplexDataModule(**write_complexes(tmp_path, 5), **DESIGN)
    dm.setup()
    assert len(dm.train_set) == 3 * 6 and len(dm.val_set) == 1 and len(dm.test_set) == 1
    assert sorted(sum(dm.splits.values(), [])) == [f"SYN{i}" for i in range(5)]
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, dict) and batch["coords"].shape == (1, 32, 14, 3)
    complex_ = dm.complexes[int(batch["complex"][0, 0])]
    loop = complex_.cdr == int(batch["loop"][0, 0])
    assert CDR_NAMES[int(batch["loop"][0, 0]) - 1] == "H3"
    design = batch["design"][0]
    assert torch.equal(batch["index"][0][design].sort().values, torch.nonzero(loop).flatten())
    anchors = complex_.coords[loop_anchors(complex_, loop), 1]
    assert torch.allclose(batch["origin"][0], anchors.mean(0))
    keep = batch["residue_mask"][0]
    moved = batch["coords"][0][keep][:, 1] + batch["origin"][0]
    assert torch.allclose(moved, complex_.coords[batch["index"][0][keep], 1], atol=1e-5)
    # the LM sees the heavy chain with the loop masked, each patch residue at its own token
    tokenizer = AminoAcidTokenizer()
    tokens = batch["lm_tokens"][0].flatten()
    heavy = tokens[: tokens.shape[0] // 2]
    assert tokenizer.decode(heavy.tolist()) == "".join(c for c, m in zip(complex_.sequence(complex_.chain == 0),
                                                                           loop[complex_.chain == 0]) if not m)
    assert (tokens[batch["lm_index"][0][design]] == tokenizer.mask_id).all()
    context = keep & ~design & (batch["lm_index"][0] >= 0)
    letters = [tokenizer.tokens[t] for t in tokens[batch["lm_index"][0][context]].tolist()]
    assert "".join(letters) == "".join((AMINO_ACIDS + "X")[a] for a in batch["aa"][0][context].tolist())


def test_lm_tokens_of_a_heavy_chain_only_antibody(tmp_path):
    write_complexes(tmp_path, 1)
    complex_ = load_complex(tmp_path / "complexes", read_cases(tmp_path / "cases.tsv")[0])
    vhh = type(complex_)(**{**complex_.to_dict(), "role": torch.where(complex_.role == 1, 2, complex_.role)})
    tokens, position = lm_tokens(vhh, vhh.cdr == 3)
    tokenizer = AminoAcidTokenizer()
    assert tokens[1, :2].tolist() == [tokenizer.cls_id, tokenizer.eos_id] and (tokens[1, 2:] == tokenizer.pad_id).all()
    assert (position[vhh.role == 2] == -1).all() and (position[vhh.role == 0] >= 0).all()


def test_bad_complexes_and_loops_are_skipped_with_one_line_each(tmp_path):
    args = write_complexes(tmp_path, 5, extra_cases="NOCHN_HX:A\nNONUM_HL:A\nNOEPI_HL:A\n")
    folder = tmp_path / "complexes"
    (folder / "NOCHN_r_b.pdb").write_text((folder / "SYN0_r_b.pdb").read_text())
    (folder / "NOCHN_l_b.pdb").write_text((folder / "SYN0_l_b.pdb").read_text())
    unnumbered = (folder / "SYN0_r_b.pdb").read_text().replace(" CYS H  22", " ALA H  22")
    (folder / "NONUM_r_b.pdb").write_text(unnumbered)
    (folder / "NONUM_l_b.pdb").write_text((folder / "SYN0_l_b.pdb").read_text())
    (folder / "NOEPI_r_b.pdb").write_text((folder / "SYN0_r_b.pdb").read_text())
    far = "".join(line[:30] + "".join(f"{float(line[30 + 8 * k:38 + 8 * k]) + 500:8.3f}" for k in range(3)) + line[54:]
                  if line.startswith("ATOM") else line for line in (folder / "SYN0_l_b.pdb").read_text().splitlines(True))
    (folder / "NOEPI_l_b.pdb").write_text(far)
    dm = ComplexDataModule(**args, **{**DESIGN, "max_loop_length": 12, "eval_cdr": "H1"})
    with pytest.warns(UserWarning) as record:
        dm.setup()
    messages = [str(w.message) for w in record]
    assert all("\n" not in m for m in messages)
    assert any("NOCHN" in m and "chain 'X' not found" in m for m in messages)
    assert any("NONUM" in m and "CDRs not numbered" in m for m in messages)
    assert any("NOEPI" in m and "empty epitope" in m for m in messages)
    assert any("SYN" in m and "CDR-H3 has 13 residues, more than max_loop_length=12" in m for m in messages)
    assert {"NOCHN", "NONUM", "NOEPI"} <= set(dm.skipped)
    assert len(dm.train_set) > 0  # nothing else in the batch is lost


def test_part_one_mode_is_unchanged(tmp_path):
    dm = ComplexDataModule(**write_complexes(tmp_path, 5), patch_size=32, val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, (tuple, list)) and dm.fields[-1] == "complex" and "design" not in dm.fields
    fields = dict(zip(dm.fields, batch))
    h3 = fields["cdr"][0] == CDR_NAMES.index("H3") + 1
    assert fields["coords"][0][h3][:, 1].mean(0).abs().max() < 1e-4


@pytest.mark.slow
@needs_data
def test_real_complexes_in_design_mode(tmp_path):
    dm = ComplexDataModule(data_dir=str(ANTIBODY), patch_size=64, design_cdrs=list(CDR_NAMES),
                           cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning):
        dm.setup()
    part_one = ComplexDataModule(data_dir=str(ANTIBODY), cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning):
        part_one.setup()
    assert dm.splits == part_one.splits  # split by complex as part 1 does
    assert len(dm.test_set) == len(dm.splits["test"]) and len(dm.train_set) > 5 * len(dm.splits["train"])
    batch = dm.test_set[list(range(len(dm.test_set)))]
    assert (batch["loop"] == 3).all()
    lengths = batch["design"].sum(-1)
    assert lengths.min() >= 5 and lengths.max() <= 30
    # the centre (anchor C-alpha mean) lies within a loop's span of the loop's residues, but not on its centroid
    centroid = torch.stack([batch["coords"][i][batch["design"][i]][:, 1].mean(0) for i in range(len(lengths))])
    assert (centroid.norm(dim=-1) > 1.0).all() and (centroid.norm(dim=-1) < 4 * lengths).all()
    assert math.isfinite(float(batch["coords"].sum()))
