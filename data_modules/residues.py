"""Residue vocabularies shared by the antibody data and the AlignAb models: the 20 amino acids, the
language model's tokens, and the heavy atoms of each residue type in the atom14 layout (backbone N,
CA, C, O, then the side chain in PDB naming order) with their Rosetta ``fa_standard`` atom types."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zoo.core.errors import ConfigError, MalformedDataError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eos>", "<mask>", "<unk>")
IGNORE_INDEX = -100


class AminoAcidTokenizer:
    """The 20 standard amino acids plus ``<pad>``, ``<cls>`` (begin), ``<eos>``, ``<mask>`` and
    ``<unk>``. ``encode`` adds ``<cls>``/``<eos>``; an unknown letter raises unless
    ``unknown="unk"``, which maps it to ``<unk>``."""

    def __init__(self, unknown: str = "error") -> None:
        if unknown not in ("error", "unk"):
            raise ConfigError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        self.tokens = list(SPECIAL_TOKENS) + list(AMINO_ACIDS)
        self.index = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id, self.cls_id, self.eos_id, self.mask_id, self.unk_id = range(len(SPECIAL_TOKENS))
        self.first_residue_id = len(SPECIAL_TOKENS)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, sequence: str, add_special: bool = True, name: str = "sequence") -> list[int]:
        ids = []
        for position, letter in enumerate(sequence.upper()):
            token = self.index.get(letter) if letter in AMINO_ACIDS else None
            if token is None:
                if self.unknown == "error":
                    raise MalformedDataError(
                        f"{name}: unknown amino-acid letter {letter!r} at position {position + 1}; "
                        f"expected one of {AMINO_ACIDS}"
                    )
                token = self.unk_id
            ids.append(token)
        return [self.cls_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Residue letters of ``ids``; special tokens are dropped, ``<unk>`` reads ``X``."""
        ids = ids.tolist() if isinstance(ids, Tensor) else ids
        letters = []
        for token in ids:
            if token == self.unk_id:
                letters.append("X")
            elif token >= self.first_residue_id:
                letters.append(self.tokens[token])
        return "".join(letters)

    def batch_encode(self, sequences: Sequence[str], length: int | None = None,
                     names: Sequence[str] | None = None) -> Tensor:
        """``[batch, length]`` token ids padded with ``<pad>`` (``length`` defaults to the longest);
        ``names`` label the sequences in the error an unknown letter raises."""
        names = names if names is not None else [f"sequence {i}" for i in range(len(sequences))]
        encoded = [self.encode(s, name=name) for s, name in zip(sequences, names)]
        longest = max((len(e) for e in encoded), default=0)
        length = longest if length is None else length
        if longest > length:
            raise ConfigError(f"a sequence needs {longest} tokens (with <cls>/<eos>), more than length={length}")
        out = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(encoded):
            out[row, : len(ids)] = torch.tensor(ids)
        return out


UNKNOWN = 20
THREE_TO_ONE = {
    "ALA": "A", "CYS": "C", "ASP": "D", "GLU": "E", "PHE": "F", "GLY": "G", "HIS": "H", "ILE": "I",
    "LYS": "K", "LEU": "L", "MET": "M", "ASN": "N", "PRO": "P", "GLN": "Q", "ARG": "R", "SER": "S",
    "THR": "T", "VAL": "V", "TRP": "W", "TYR": "Y",
}
ONE_TO_THREE = {one: three for three, one in THREE_TO_ONE.items()}
BACKBONE = ("N", "CA", "C", "O")

# side-chain heavy atoms per residue type with their Rosetta fa_standard atom types
SIDE_CHAINS: dict[str, tuple[tuple[str, str], ...]] = {
    "A": (("CB", "CH3"),),
    "C": (("CB", "CH2"), ("SG", "S")),
    "D": (("CB", "CH2"), ("CG", "COO"), ("OD1", "OOC"), ("OD2", "OOC")),
    "E": (("CB", "CH2"), ("CG", "CH2"), ("CD", "COO"), ("OE1", "OOC"), ("OE2", "OOC")),
    "F": (("CB", "CH2"), ("CG", "aroC"), ("CD1", "aroC"), ("CD2", "aroC"), ("CE1", "aroC"), ("CE2", "aroC"),
          ("CZ", "aroC")),
    "G": (),
    "H": (("CB", "CH2"), ("CG", "aroC"), ("ND1", "Nhis"), ("CD2", "aroC"), ("CE1", "aroC"), ("NE2", "Ntrp")),
    "I": (("CB", "CH1"), ("CG1", "CH2"), ("CG2", "CH3"), ("CD1", "CH3")),
    "K": (("CB", "CH2"), ("CG", "CH2"), ("CD", "CH2"), ("CE", "CH2"), ("NZ", "Nlys")),
    "L": (("CB", "CH2"), ("CG", "CH1"), ("CD1", "CH3"), ("CD2", "CH3")),
    "M": (("CB", "CH2"), ("CG", "CH2"), ("SD", "S"), ("CE", "CH3")),
    "N": (("CB", "CH2"), ("CG", "CNH2"), ("OD1", "ONH2"), ("ND2", "NH2O")),
    "P": (("CB", "CH2"), ("CG", "CH2"), ("CD", "CH2")),
    "Q": (("CB", "CH2"), ("CG", "CH2"), ("CD", "CNH2"), ("OE1", "ONH2"), ("NE2", "NH2O")),
    "R": (("CB", "CH2"), ("CG", "CH2"), ("CD", "CH2"), ("NE", "NtrR"), ("CZ", "aroC"), ("NH1", "Narg"),
          ("NH2", "Narg")),
    "S": (("CB", "CH2"), ("OG", "OH")),
    "T": (("CB", "CH1"), ("OG1", "OH"), ("CG2", "CH3")),
    "V": (("CB", "CH1"), ("CG1", "CH3"), ("CG2", "CH3")),
    "W": (("CB", "CH2"), ("CG", "aroC"), ("CD1", "aroC"), ("CD2", "aroC"), ("NE1", "Ntrp"), ("CE2", "aroC"),
          ("CE3", "aroC"), ("CZ2", "aroC"), ("CZ3", "aroC"), ("CH2", "aroC")),
    "Y": (("CB", "CH2"), ("CG", "aroC"), ("CD1", "aroC"), ("CD2", "aroC"), ("CE1", "aroC"), ("CE2", "aroC"),
          ("CZ", "aroC"), ("OH", "OH")),
    "X": (),
}
ATOM14: dict[str, tuple[str, ...]] = {
    aa: BACKBONE + tuple(name for name, _ in side) for aa, side in SIDE_CHAINS.items()
}
