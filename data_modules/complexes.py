"""Antibody-antigen complexes from PDB files (Biopython ``Bio.PDB``): per-residue atoms, frames, CDRs,
epitope, a CDR-H3 patch for model input, a DataModule split by complex, and writing designs back to PDB.

Files follow the Antibody Docking and Affinity Benchmark (Guest et al. 2021): ``complexes/<ID>_r_b.pdb``
holds the antibody chains, ``<ID>_l_b.pdb`` the antigen chains, in one frame; ``cases.tsv`` names the
chains (``1S78_DC:A``: antibody chains D and C, antigen chain A); ``affinities.tsv`` gives ΔG (kcal/mol).

Per residue (:class:`Complex`): the amino acid (``data_modules.residues.AMINO_ACIDS`` order, 20 = unknown), heavy
atoms in the **atom14** layout (``data_modules.residues.ATOM14``: N, CA, C, O, then the side chain in PDB naming
order, 14 slots) with a mask of the atoms present, chain and residue ids, the role (heavy, light,
antigen), the CDR (1-6 = H1, H2, H3, L1, L2, L3, IMGT via ``data_modules.numbering.cdr_spans``) and the
epitope flag. Hydrogens, OXT, waters and ligands are dropped; MSE is read as MET and PCA
(pyroglutamate) as GLN; the alternate location Biopython selects (highest occupancy) is kept; residues
without all of N, CA and C are dropped (no frame without them).

Heavy or light: the antibody chain order in ``cases.tsv`` is not always heavy first (``1AHW_AB``: A is the
light chain), so each chain is typed by its IMGT J motif (W-G-x-G at 118 for heavy, F-G-x-G for light);
a single antibody chain is a heavy-chain-only antibody (VHH); when the motif does not decide, the
listed order (heavy first) does.

Epitope: antigen residues with a heavy atom within ``epitope_cutoff`` (default 4.5 A, a usual heavy-atom
contact distance) of a heavy atom of any CDR. Patch (DiffAb's ``patch_around_anchor`` idea, Luo et al.
2022; its default size 128): the ``patch_size`` residues, antibody and antigen together, whose C-alpha is
closest to the C-alpha of any CDR-H3 residue (the CDR-H3 itself included), centred on the CDR-H3 C-alpha
centroid.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import Tensor

from data_modules.base import TensorSet, ZooDataModule, seeded_split
from data_modules.numbering import cdr_spans, imgt_anchors
from data_modules.residues import AMINO_ACIDS, ATOM14, ONE_TO_THREE, THREE_TO_ONE, UNKNOWN, AminoAcidTokenizer
from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError

MODIFIED = {"MSE": ("MET", {"SE": "SD"}), "PCA": ("GLN", {"OE": "OE1"})}
ROLES = ("heavy", "light", "antigen")
CDR_NAMES = ("H1", "H2", "H3", "L1", "L2", "L3")  # cdr flag k + 1
H3 = CDR_NAMES.index("H3") + 1


@dataclass
class Case:
    """One complex of ``cases.tsv``: its id and chain ids (antibody chains as listed, antigen chains)."""

    name: str
    antibody: tuple[str, ...]
    antigen: tuple[str, ...]


@dataclass
class Complex:
    """A parsed complex; every tensor's first dimension is the residue (antibody chains first)."""

    name: str
    aa: Tensor  # [N] long
    coords: Tensor  # [N, 14, 3] float32, atom14
    atom_mask: Tensor  # [N, 14] bool
    chain: Tensor  # [N] long, index into chain_ids
    chain_ids: list[str]
    resseq: Tensor  # [N] long, PDB residue numbers
    icode: list[str]  # PDB insertion codes
    role: Tensor  # [N] long, index into ROLES
    cdr: Tensor  # [N] long, 0 = framework / antigen, k = CDR_NAMES[k - 1]
    epitope: Tensor  # [N] bool

    def __len__(self) -> int:
        return len(self.aa)

    @property
    def antigen_mask(self) -> Tensor:
        return self.role == ROLES.index("antigen")

    @property
    def cdr_h3_mask(self) -> Tensor:
        return self.cdr == H3

    def sequence(self, mask: Tensor | None = None) -> str:
        index = self.aa if mask is None else self.aa[mask]
        return "".join((AMINO_ACIDS + "X")[i] for i in index.tolist())

    def frames(self) -> Tensor:
        """Local frame per residue ``[N, 3, 3]`` (columns e1, e2, e3) from N, CA, C (:func:`local_frames`)."""
        return local_frames(self.coords[:, 0], self.coords[:, 1], self.coords[:, 2])

    def to_dict(self) -> dict:
        """Plain tensors, strings and lists only: loads with ``torch.load(weights_only=True)``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Complex":
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def local_frames(n: Tensor, ca: Tensor, c: Tensor) -> Tensor:
    """Gram-Schmidt frame ``[..., 3, 3]`` per residue: e1 along CA->C, e2 the part of CA->N orthogonal to e1,
    e3 = e1 x e2 (right-handed, as DiffAb's ``construct_3d_basis(CA, C, N)``). Columns are e1, e2, e3."""
    e1 = torch.nn.functional.normalize(c - ca, dim=-1)
    u = n - ca
    e2 = torch.nn.functional.normalize(u - (u * e1).sum(-1, keepdim=True) * e1, dim=-1)
    return torch.stack([e1, e2, torch.linalg.cross(e1, e2)], dim=-1)


def read_cases(path: str | Path) -> list[Case]:
    """``cases.tsv`` rows as :class:`Case` (the first column, e.g. ``1S78_DC:A``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"no cases file {str(path)!r}")
    cases = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t")
            next(reader, None)
            for line, row in enumerate(reader, start=2):
                if not row or not row[0].strip():
                    continue
                field = row[0].strip()
                try:
                    name, chains = field.split("_")
                    antibody, antigen = chains.split(":")
                except ValueError as err:
                    raise MalformedDataError(
                        f"{path}:{line}: {field!r} is not <ID>_<antibody chains>:<antigen chains>") from err
                if not (name and antibody and antigen):
                    raise MalformedDataError(f"{path}:{line}: {field!r} lacks an id, antibody chains or antigen chains")
                cases.append(Case(name, tuple(antibody), tuple(antigen)))
    except (UnicodeDecodeError, csv.Error) as err:
        raise MalformedDataError(f"{path}: not a tab-separated text file ({err})") from err
    return cases


def read_affinities(path: str | Path) -> dict[str, float]:
    """``affinities.tsv``: complex id -> experimental ΔG (kcal/mol)."""
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(f"no affinities file {str(path)!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as err:
        raise MalformedDataError(f"{path}: not a tab-separated text file ({err})") from err
    column = next((k for k in (rows[0] if rows else {}) if k and k.startswith("ΔG")), None)
    if column is None:
        raise MalformedDataError(f"{path}: no 'ΔG (kcal/mol)' column")
    affinities = {}
    for line, row in enumerate(rows, start=2):
        try:
            affinities[row["Case"].strip()] = value = float(row[column])
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise MalformedDataError(f"{path}:{line}: bad row, expected a 'Case' and a number under {column!r}") from err
        if not math.isfinite(value):
            raise MalformedDataError(f"{path}:{line}: non-finite {column} {row[column]!r}")
    return affinities


Residue = tuple[str, int, str, dict[str, list[float]]]  # one-letter aa, number, insertion code, atoms


def _read_chains(path: Path, chain_ids: tuple[str, ...]) -> dict[str, list[Residue]]:
    """Per requested chain: (one-letter aa, residue number, insertion code, {atom14 name: xyz}) per residue."""
    from Bio.PDB import PDBParser  # here, not at import: every `python -m zoo` imports data_modules

    if not path.is_file():
        raise MissingDataError(f"no PDB file {str(path)!r}")
    try:
        structure = PDBParser(QUIET=True).get_structure(path.stem, str(path))
    except Exception as err:  # Biopython raises several types on garbage
        raise MalformedDataError(f"{path}: not a readable PDB file ({err})") from err
    models = list(structure)
    if not models:
        raise MalformedDataError(f"{path}: no model (no ATOM records)")
    present = [c.id for c in models[0]]
    chains = {}
    for chain_id in chain_ids:
        if chain_id not in present:
            raise MalformedDataError(f"{path}: chain {chain_id!r} not found; chains present: {present}")
        residues = []
        for residue in models[0][chain_id]:
            name = residue.get_resname()
            renames = {}
            if name in MODIFIED:
                name, renames = MODIFIED[name]
            elif residue.id[0] != " ":
                continue
            one = THREE_TO_ONE.get(name, "X")
            atoms = {}
            for atom in residue:
                atom_name = renames.get(atom.get_id(), atom.get_id())
                if atom_name in ATOM14[one]:
                    xyz = atom.get_coord().tolist()
                    if not all(map(math.isfinite, xyz)):
                        raise MalformedDataError(
                            f"{path}: chain {chain_id!r} residue {residue.id[1]}{residue.id[2].strip()} atom "
                            f"{atom.get_id()}: non-finite coordinates ({', '.join(f'{v:g}' for v in xyz)}), "
                            "expected three finite numbers")
                    atoms[atom_name] = xyz
            if all(a in atoms for a in ("N", "CA", "C")):
                residues.append((one, residue.id[1], residue.id[2], atoms))
        if not residues:
            raise MalformedDataError(f"{path}: chain {chain_id!r} has no amino-acid residue with N, CA and C")
        chains[chain_id] = residues
    return chains


def _heavy_or_light(sequence: str) -> str | None:
    """``H`` or ``L`` from the IMGT J motif residue 118 (W heavy, F light); None if it does not decide."""
    votes = set()
    for kind, motif in (("H", "W"), ("L", "F")):
        try:
            if sequence[imgt_anchors(sequence, kind)[118]] == motif:
                votes.add(kind)
        except MalformedDataError:
            continue
    return votes.pop() if len(votes) == 1 else None


def load_complex(complexes_dir: str | Path, case: Case, epitope_cutoff: float = 4.5,
                 require_cdrs: bool = True) -> Complex:
    """Parse ``<ID>_r_b.pdb`` and ``<ID>_l_b.pdb`` of one case; number the CDRs; mark the epitope.

    Raises ``MissingDataError`` for a missing file and ``MalformedDataError`` naming the file and chain for an
    unreadable file, an absent chain or (with ``require_cdrs``) an antibody chain whose CDRs cannot be
    numbered; without ``require_cdrs`` such a chain simply has no CDR flags (enough for whole-interface energies).
    """
    folder = Path(complexes_dir)
    antibody_path, antigen_path = folder / f"{case.name}_r_b.pdb", folder / f"{case.name}_l_b.pdb"
    if len(case.antibody) > 2 or len(set(case.antibody + case.antigen)) != len(case.antibody + case.antigen):
        raise MalformedDataError(f"case {case.name}: expected 1-2 antibody chains and distinct chain ids, "
                                 f"got antibody {case.antibody}, antigen {case.antigen}")
    antibody = _read_chains(antibody_path, case.antibody)
    antigen = _read_chains(antigen_path, case.antigen)
    sequences = {cid: "".join(r[0] for r in residues) for cid, residues in antibody.items()}
    if len(case.antibody) == 1:
        kinds = {case.antibody[0]: "H"}
    else:
        kinds = {cid: _heavy_or_light(seq) for cid, seq in sequences.items()}
        if set(kinds.values()) != {"H", "L"}:
            kinds = dict(zip(case.antibody, "HL"))
    order = sorted(case.antibody, key=lambda cid: kinds[cid])  # heavy first
    aa, coords, mask, chain, resseq, icode, role, cdr = [], [], [], [], [], [], [], []
    chain_ids = [*order, *case.antigen]
    for index, cid in enumerate(chain_ids):
        residues = antibody.get(cid) or antigen[cid]
        kind = kinds.get(cid)
        flags = [0] * len(residues)
        if kind is not None:
            try:
                spans = cdr_spans(sequences[cid], kind)
            except MalformedDataError as err:
                if require_cdrs:
                    raise MalformedDataError(
                        f"{antibody_path}: chain {cid!r} ({kind}): CDRs not numbered: {err}") from err
                spans = {}
            for name, (start, end) in spans.items():
                flags[start:end] = [CDR_NAMES.index(name) + 1] * (end - start)
        for store, part in zip((aa, coords, mask), _atom14(residues)):
            store.append(part)
        for (_, number, code, _), flag in zip(residues, flags):
            chain.append(index)
            resseq.append(number)
            icode.append(code)
            role.append(ROLES.index("antigen") if kind is None else ROLES.index("heavy" if kind == "H" else "light"))
            cdr.append(flag)
    aa = torch.cat(aa)
    complex_ = Complex(case.name, aa, torch.cat(coords), torch.cat(mask), torch.tensor(chain),
                       chain_ids, torch.tensor(resseq), icode, torch.tensor(role), torch.tensor(cdr),
                       torch.zeros(len(aa), dtype=torch.bool))
    complex_.epitope = epitope_mask(complex_, epitope_cutoff)
    return complex_


def epitope_mask(complex_: Complex, cutoff: float = 4.5) -> Tensor:
    """Antigen residues with any heavy atom within ``cutoff`` A of any heavy atom of any CDR residue."""
    cdr_atoms = complex_.coords[complex_.cdr > 0][complex_.atom_mask[complex_.cdr > 0]]
    antigen = complex_.antigen_mask
    if len(cdr_atoms) == 0:
        return torch.zeros(len(complex_), dtype=torch.bool)
    distance = torch.cdist(complex_.coords[antigen].reshape(-1, 3), cdr_atoms).amin(-1).reshape(-1, 14)
    near = ((distance < cutoff) & complex_.atom_mask[antigen]).any(-1)
    out = torch.zeros(len(complex_), dtype=torch.bool)
    out[antigen] = near
    return out


def cdr_patch(complex_: Complex, cdr: int = H3, size: int = 128) -> Tensor:
    """Indices (ascending) of the ``size`` residues whose C-alpha is nearest to any C-alpha of CDR ``cdr``
    (``CDR_NAMES[cdr - 1]``; the CDR itself included)."""
    loop = complex_.cdr == cdr
    if not loop.any():
        raise MalformedDataError(f"complex {complex_.name}: no CDR-{CDR_NAMES[cdr - 1]} residue to build a patch around")
    distance = torch.cdist(complex_.coords[:, 1], complex_.coords[loop, 1]).amin(-1)
    return torch.sort(torch.topk(distance, min(size, len(complex_)), largest=False).indices).values


def cdr_h3_patch(complex_: Complex, size: int = 128) -> Tensor:
    """Indices (ascending) of the ``size`` residues whose C-alpha is nearest to any CDR-H3 C-alpha."""
    return cdr_patch(complex_, H3, size)


def loop_anchors(complex_: Complex, loop: Tensor) -> Tensor:
    """Indices of the residues just before and just after a loop (``loop [N]`` bool) in its chain (DiffAb's
    anchors): the design patch is centred on their C-alpha, which does not reveal where the loop lies."""
    index = torch.nonzero(loop).flatten()
    first, last = int(index[0]), int(index[-1])
    anchors = [i for i in (first - 1, last + 1) if 0 <= i < len(complex_) and complex_.chain[i] == complex_.chain[first]]
    return torch.tensor(anchors if anchors else [first, last])


def _mask_of(index: Tensor, n: int) -> Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[index] = True
    return mask


def lm_tokens(complex_: Complex, design: Tensor, length: int = 162) -> tuple[Tensor, Tensor]:
    """The antibody LM's input for a design: per antibody chain (heavy, light) the token ids of its variable
    domain (``<cls>``, residues up to the end of FR4 = IMGT 128, 11 residues after CDR3, ``<eos>``) with the
    residues in ``design`` replaced by ``<mask>``, shaped ``[2, length]`` (a missing light chain is
    ``<cls><eos>``); and for every residue of the complex its index into the flattened ``[2 * length]`` tokens
    (-1 for antigen residues and residues outside the variable domains)."""
    tokenizer = AminoAcidTokenizer(unknown="unk")
    tokens = torch.full((2, length), tokenizer.pad_id, dtype=torch.long)
    tokens[:, 0], tokens[:, 1] = tokenizer.cls_id, tokenizer.eos_id
    position = torch.full((len(complex_),), -1, dtype=torch.long)
    for row, kind in enumerate(("heavy", "light")):
        chain = torch.nonzero(complex_.role == ROLES.index(kind)).flatten()
        if len(chain) == 0:
            continue
        cdr3 = torch.nonzero(complex_.cdr[chain] == (H3 if kind == "heavy" else CDR_NAMES.index("L3") + 1)).flatten()
        end = min(len(chain), int(cdr3[-1]) + 12) if len(cdr3) else len(chain)
        domain = chain[max(0, end - (length - 2)):end]
        ids = torch.tensor(tokenizer.encode(complex_.sequence(_mask_of(domain, len(complex_))), add_special=False))
        ids[design[domain]] = tokenizer.mask_id
        tokens[row, 1:len(domain) + 1] = ids
        tokens[row, len(domain) + 1] = tokenizer.eos_id
        position[domain] = row * length + 1 + torch.arange(len(domain))
    return tokens, position


def write_pdb(complex_: Complex, path: str | Path, sequence: str | None = None, coords: Tensor | None = None,
              atom_mask: Tensor | None = None) -> Path:
    """Write a complex, or a design of it, to PDB with ``Bio.PDB.PDBIO``.

    ``sequence`` (one letter per residue, all chains) replaces residue types; ``coords [N, 14, 3]`` replaces
    coordinates; ``atom_mask [N, 14]`` says which atoms to write. Without ``atom_mask``, a residue whose type
    changed is written with its backbone only (its side chain was not designed).
    """
    n = len(complex_)
    sequence = complex_.sequence() if sequence is None else sequence
    coords = complex_.coords if coords is None else coords
    if len(sequence) != n or coords.shape != (n, 14, 3):
        raise ConfigError(f"write_pdb: sequence of {len(sequence)} and coords {tuple(coords.shape)} "
                          f"must match {n} residues [N, 14, 3]")
    if atom_mask is None:
        changed = torch.tensor([a != b for a, b in zip(sequence, complex_.sequence())], dtype=torch.bool)
        atom_mask = complex_.atom_mask.clone()
        atom_mask[changed, 4:] = False
        atom_mask[changed, :4] = True
    from Bio.PDB import PDBIO
    from Bio.PDB.StructureBuilder import StructureBuilder

    builder = StructureBuilder()
    builder.init_structure(complex_.name)
    builder.init_model(0)
    serial = 1
    for index, cid in enumerate(complex_.chain_ids):
        builder.init_chain(cid)
        builder.init_seg("    ")
        for i in torch.nonzero(complex_.chain == index).flatten().tolist():
            one = sequence[i]
            if one not in ONE_TO_THREE and one != "X":
                raise ConfigError(f"write_pdb: residue {i} has amino acid {one!r}, expected one of {AMINO_ACIDS}X")
            builder.init_residue(ONE_TO_THREE.get(one, "UNK"), " ", int(complex_.resseq[i]), complex_.icode[i])
            for slot, name in enumerate(ATOM14[one]):
                if atom_mask[i, slot]:
                    builder.init_atom(name, coords[i, slot].detach().double().numpy(), 0.0, 1.0, " ",
                                      f" {name:<3}", serial, element=name[0])
                    serial += 1
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    io = PDBIO()
    io.set_structure(builder.get_structure())
    io.save(str(path))
    return path


def _atom14(residues: list) -> tuple[Tensor, Tensor, Tensor]:
    """``aa [N]``, ``coords [N, 14, 3]`` and ``atom_mask [N, 14]`` of parsed residues
    ``(one-letter code, number, insertion code, {atom name: xyz})`` in the atom14 layout."""
    coords, mask = torch.zeros(len(residues), 14, 3), torch.zeros(len(residues), 14, dtype=torch.bool)
    for i, (one, _, _, atoms) in enumerate(residues):
        for slot, name in enumerate(ATOM14[one]):
            if name in atoms:
                coords[i, slot], mask[i, slot] = torch.tensor(atoms[name]), True
    aa = torch.tensor([AMINO_ACIDS.index(r[0]) if r[0] != "X" else UNKNOWN for r in residues], dtype=torch.long)
    return aa, coords, mask


def read_pdb_complex(path: str | Path, like: Complex) -> Complex:
    """Read back a file written by :func:`write_pdb` with the chain layout, roles and CDR flags of ``like``."""
    chains = _read_chains(Path(path), tuple(like.chain_ids))
    residues = [r for cid in like.chain_ids for r in chains[cid]]
    if len(residues) != len(like):
        raise MalformedDataError(f"{path}: {len(residues)} residues, expected {len(like)} as in {like.name}")
    aa, coords, mask = _atom14(residues)
    return Complex(like.name, aa, coords, mask, like.chain.clone(), list(like.chain_ids),
                   torch.tensor([r[1] for r in residues]), [r[2] for r in residues], like.role.clone(),
                   like.cdr.clone(), like.epitope.clone())


class NamedTensorSet(TensorSet):
    """A :class:`TensorSet` whose samples and batches are dicts ``{name: tensor}`` (design mode)."""

    def __init__(self, names: list[str], *tensors: Tensor) -> None:
        super().__init__(*tensors)
        self.names = list(names)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return dict(zip(self.names, super().__getitem__(index)))

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        return dict(zip(self.names, super().__getitems__(indices)))


class ComplexDataModule(ZooDataModule):
    """CDR-H3 patches of antibody-antigen complexes, split by complex (seeded).

    Each sample is one complex's patch of ``patch_size`` residues (padded with ``residue_mask`` false when the
    complex is smaller), coordinates centred on the CDR-H3 C-alpha centroid: ``aa [K]``, ``coords [K, 14, 3]``,
    ``atom_mask [K, 14]``, ``residue_mask [K]``, ``role [K]``, ``cdr [K]``, ``epitope [K]``, ``chain [K]``,
    ``resseq [K]``, ``index [K]`` (residue index in the complex, -1 for padding) and ``complex [1]`` (the index
    into ``self.complexes``).

    Args:
        data_dir: folder with ``cases.tsv`` and ``complexes/`` (e.g. ``../shared/data/antibody``).
        patch_size: residues per patch (DiffAb uses 128).
        epitope_cutoff: heavy-atom distance (A) from a CDR atom that makes an antigen residue epitope.
        val_fraction, test_fraction: shares of the complexes held out.
        cache_dir: if set, parsed complexes are saved there (``torch.save``) and reused.
        skip_unnumbered: drop (with a warning) complexes whose CDRs the IMGT rule cannot number, instead of failing.
        design_cdrs: design mode (AlignAb stage 2) when set: the training set holds one patch per (complex, CDR
            in ``design_cdrs``), validation and test one per complex around ``eval_cdr``; each patch is centred
            on the C-alpha of the loop's anchors (:func:`loop_anchors`, not the loop itself) and adds
            ``design [K]`` (the loop), ``loop [1]`` (its CDR flag), ``origin [3]`` (the centre in the complex's
            frame), ``lm_tokens [2, 162]`` and ``lm_index [K]`` (:func:`lm_tokens`). A complex that cannot be
            read or numbered, lacks a chain or has an empty epitope, and a loop longer than ``max_loop_length``,
            is skipped with a one-line warning naming it and the reason (kept in ``self.skipped``). Batches are
            dicts (``NamedTensorSet``) in design mode, tuples in the order of ``self.fields`` otherwise.
        eval_cdr, max_loop_length: the design target of validation and test; the longest loop kept.
    """

    def __init__(self, data_dir: str | None = None, cases_file: str = "cases.tsv", complexes_dir: str = "complexes",
                 patch_size: int = 128, epitope_cutoff: float = 4.5, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, cache_dir: str | None = None, skip_unnumbered: bool = True,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0, design_cdrs: list[str] | None = None,
                 eval_cdr: str = "H3", max_loop_length: int = 30) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed)
        for name in [*(design_cdrs or []), eval_cdr]:
            if name not in CDR_NAMES:
                raise ConfigError(f"CDR {name!r} is not one of {list(CDR_NAMES)}")
        if design_cdrs is not None and not design_cdrs:
            raise ConfigError("design_cdrs must name at least one CDR (or be null for CDR-H3 patches)")
        if max_loop_length < 1:
            raise ConfigError(f"max_loop_length must be >= 1, got {max_loop_length}")
        self.design_cdrs, self.eval_cdr, self.max_loop_length = design_cdrs, eval_cdr, max_loop_length
        if patch_size < 1:
            raise ConfigError(f"patch_size must be >= 1, got {patch_size}")
        if epitope_cutoff <= 0:
            raise ConfigError(f"epitope_cutoff must be > 0 A, got {epitope_cutoff}")
        self.cases_file, self.complexes_dir = cases_file, complexes_dir
        self.patch_size, self.epitope_cutoff = patch_size, epitope_cutoff
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.skip_unnumbered = skip_unnumbered
        self.complexes: list[Complex] = []
        self.skipped: dict[str, str] = {}
        self.splits: dict[str, list[str]] = {}

    def load(self, case: Case) -> Complex:
        """One complex, from the cache when it holds it for the same source files and cutoff."""
        folder = self.data_dir / self.complexes_dir
        sources = [folder / f"{case.name}_{side}_b.pdb" for side in ("r", "l")]
        stamp = [p.stat().st_mtime_ns if p.is_file() else 0 for p in sources]
        key = f"{case.name}_{''.join(case.antibody)}_{''.join(case.antigen)}_{self.epitope_cutoff:g}.pt"
        cache = self.cache_dir / key if self.cache_dir else None
        if cache is not None and cache.is_file():
            try:
                data = torch.load(cache, weights_only=True)
                if data.get("stamp") == stamp:
                    return Complex.from_dict(data["complex"])
            except Exception:  # a damaged or foreign cache file is stale: parse the PDB files again
                pass
        complex_ = load_complex(folder, case, self.epitope_cutoff)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"stamp": stamp, "complex": complex_.to_dict()}, cache)
        return complex_

    def patch(self, complex_: Complex, index: Tensor | None = None, origin: Tensor | None = None) -> dict[str, Tensor]:
        """The model input of one complex: its CDR-H3 patch (or the residues ``index``), padded to ``patch_size``,
        centred on the CDR-H3 C-alpha centroid (or ``origin``)."""
        index = cdr_h3_patch(complex_, self.patch_size) if index is None else index
        k, pad = len(index), self.patch_size - len(index)
        origin = complex_.coords[complex_.cdr_h3_mask, 1].mean(0) if origin is None else origin
        coords = (complex_.coords[index] - origin) * complex_.atom_mask[index][..., None]
        grow = lambda t, fill=0: torch.cat([t, t.new_full((pad, *t.shape[1:]), fill)])  # noqa: E731
        return {"aa": grow(complex_.aa[index], UNKNOWN), "coords": grow(coords),
                "atom_mask": grow(complex_.atom_mask[index]), "residue_mask": grow(torch.ones(k, dtype=torch.bool)),
                "role": grow(complex_.role[index]), "cdr": grow(complex_.cdr[index]),
                "epitope": grow(complex_.epitope[index]), "chain": grow(complex_.chain[index]),
                "resseq": grow(complex_.resseq[index]), "index": grow(index, -1)}

    def design_patch(self, complex_: Complex, cdr: int) -> dict[str, Tensor]:
        """The design-mode input of one complex and CDR flag ``cdr``: the patch around the loop, centred on its
        anchors, with the design mask, the origin and the LM's tokens (class docstring)."""
        loop = complex_.cdr == cdr
        index = cdr_patch(complex_, cdr, self.patch_size)
        origin = complex_.coords[loop_anchors(complex_, loop), 1].mean(0)
        patch = self.patch(complex_, index, origin)
        tokens, position = lm_tokens(complex_, loop)
        keep = patch["residue_mask"]
        patch["design"] = torch.zeros_like(keep)
        patch["design"][keep] = loop[index]
        patch["lm_index"] = torch.full_like(patch["index"], -1)
        patch["lm_index"][keep] = position[index]
        return {**patch, "loop": torch.tensor([cdr]), "origin": origin, "lm_tokens": tokens}

    def _design_patches(self, complex_: Complex, cdrs: list[str]) -> list[dict[str, Tensor]]:
        """Design patches of one complex for ``cdrs``, warning (one line) about each loop it skips."""
        patches = []
        for name in cdrs:
            cdr = CDR_NAMES.index(name) + 1
            length = int((complex_.cdr == cdr).sum())
            if length == 0:
                if name[0] == "L" and not (complex_.role == ROLES.index("light")).any():
                    continue  # a heavy-chain-only antibody has no light-chain loops: nothing wrong
                reason = f"no CDR-{name} residue"
            elif length > self.max_loop_length:
                reason = f"CDR-{name} has {length} residues, more than max_loop_length={self.max_loop_length}"
            else:
                patches.append(self.design_patch(complex_, cdr))
                continue
            self._skip(f"{complex_.name}:{name}", reason)
        return patches

    def _skip(self, key: str, reason: str) -> None:
        self.skipped[key] = reason
        if self.design_cdrs is not None:
            warnings.warn(f"ComplexDataModule: skipped {key}: {reason}", stacklevel=3)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        cases = read_cases(self.find_file(self.cases_file))
        design = self.design_cdrs is not None
        for case in cases:
            try:
                self.complexes.append(self.load(case))
            except (MalformedDataError, MissingDataError) as err:
                numbered = "CDRs not numbered" in str(err)
                if not (design or (self.skip_unnumbered and numbered)):
                    raise
                self._skip(case.name, str(err))
        if self.skipped and not design:
            warnings.warn(f"ComplexDataModule: skipped {len(self.skipped)} complexes whose CDRs could not be numbered: "
                          f"{sorted(self.skipped)}", stacklevel=2)
        if not self.complexes:
            raise MalformedDataError(f"{self.data_dir}: no usable complex in {self.cases_file}")
        parts = seeded_split(len(self.complexes), [self.val_fraction, self.test_fraction], self.seed)
        if design:
            usable = []
            for i, complex_ in enumerate(self.complexes):
                if complex_.epitope.any():
                    usable.append(i)
                else:
                    self._skip(complex_.name, f"empty epitope (no antigen residue within {self.epitope_cutoff:g} A "
                                              "of a CDR heavy atom)")
            parts = [part[torch.isin(part, torch.tensor(usable, dtype=torch.long))] for part in parts]
        for split, part in zip(("train", "val", "test"), parts):
            if design:
                cdrs = self.design_cdrs if split == "train" else [self.eval_cdr]
                patches = [p | {"complex": torch.tensor([i])} for i in part.tolist()
                           for p in self._design_patches(self.complexes[i], cdrs)]
            else:
                patches = [self.patch(self.complexes[i]) | {"complex": torch.tensor([i])} for i in part.tolist()]
            if not patches:
                raise ConfigError(f"the {split} split of {len(self.complexes)} complexes is empty; "
                                  "change val/test fractions")
            self.fields = list(patches[0])
            tensors = [torch.stack([p[k] for p in patches]) for k in self.fields]
            setattr(self, f"{split}_set", NamedTensorSet(self.fields, *tensors) if design else TensorSet(*tensors))
            self.splits[split] = [self.complexes[i].name for i in part.tolist()]
