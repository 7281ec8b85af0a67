"""Antibody sequences for masked language modelling: CSV or FASTA files, an amino-acid tokenizer,
seeded splits and BERT-style masked batches with per-residue CDR-H3 flags.

Masking follows BERT (Devlin et al. 2019, Sec. 3.1): 15 % of the residues of each sequence are
chosen as targets; a target is replaced by ``<mask>`` with probability 0.8, by a uniformly random
amino acid with probability 0.1 and kept with probability 0.1. Special tokens and padding are never
targets, and every sequence gets at least one target. Validation and test masks are drawn once
from the seed, so every evaluation scores the same positions; training masks are drawn afresh for
each batch from a generator seeded by ``seed``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info

from data_modules.base import ZooDataModule, seeded_split
from data_modules.numbering import cdr_mask
from data_modules.residues import AMINO_ACIDS, IGNORE_INDEX, SPECIAL_TOKENS, AminoAcidTokenizer
from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError

__all__ = [
    "AMINO_ACIDS", "IGNORE_INDEX", "SPECIAL_TOKENS", "AminoAcidTokenizer", "AntibodySequenceDataModule",
    "MaskedSequenceSet", "bert_mask", "read_sequences",
]

FORMATS = ("auto", "csv", "fasta")


def read_sequences(path: str | Path, format: str = "auto", sequence_column: str = "sequence_alignment_aa",
                   id_column: str | None = "seq_id") -> list[tuple[str, str]]:
    """``(id, sequence)`` pairs from a CSV with a header row or a FASTA file (``Bio.SeqIO``).

    ``format="auto"`` picks FASTA for ``.fa/.fasta/.faa`` names, CSV otherwise. For CSV,
    ``sequence_column`` holds the sequences and ``id_column`` the names (row numbers if ``None``).
    """
    path = Path(path)
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "auto":
        format = "fasta" if path.suffix.lower() in (".fa", ".fasta", ".faa") else "csv"
    if not path.is_file():
        raise MissingDataError(f"{path}: no such file (expected {format.upper()} antibody sequences)")
    if path.stat().st_size == 0:
        raise MalformedDataError(f"{path}: empty file, expected {format.upper()} antibody sequences")
    if format == "fasta":
        from Bio import SeqIO

        try:
            records = [(record.id, str(record.seq)) for record in SeqIO.parse(str(path), "fasta")]
        except UnicodeDecodeError as err:
            raise MalformedDataError(f"{path}: not a FASTA text file ({err.reason} at byte {err.start} of a block)") from err
        except ValueError as err:  # Bio.SeqIO's complaints about the format
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MalformedDataError(f"{path}: not a FASTA file ({reason})") from err
        if not records:
            raise MalformedDataError(f"{path}: no FASTA records (lines starting with '>')")
    else:
        records = _read_csv(path, sequence_column, id_column)
    for name, sequence in records:
        if not sequence:
            raise MalformedDataError(f"{path}: record {name!r} has an empty sequence")
    return records


def _read_csv(path: Path, sequence_column: str, id_column: str | None) -> list[tuple[str, str]]:
    """``(id, sequence)`` pairs of a UTF-8 CSV with a header row (:func:`read_sequences`)."""
    reader = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            for column in (sequence_column, id_column):
                if column is not None and column not in columns:
                    raise MalformedDataError(f"{path}: no column {column!r}; columns are {columns}")
            records = []
            for row_number, row in enumerate(reader, start=2):
                sequence = row[sequence_column]
                name = row[id_column] if id_column else str(row_number)
                if sequence is None or name is None:  # DictReader fills the fields a short row lacks with None
                    raise MalformedDataError(
                        f"{path}:{reader.line_num}: {sum(v is not None for v in row.values())} fields, "
                        f"the header has {len(columns)}")
                records.append((name, sequence.strip()))
    except UnicodeDecodeError as err:
        raise MalformedDataError(f"{path}: not a UTF-8 text CSV ({err.reason} at byte {err.start} of a block)") from err
    except csv.Error as err:
        where = f":{reader.line_num}" if reader is not None else ""
        raise MalformedDataError(f"{path}{where}: not a valid CSV line ({err})") from err
    if not records:
        raise MalformedDataError(f"{path}: no data rows under the header")
    return records


def bert_mask(tokens: Tensor, generator: torch.Generator, mask_prob: float = 0.15, mask_id: int = 3,
              first_residue_id: int = 5, vocab_size: int = 25) -> tuple[Tensor, Tensor]:
    """BERT's corruption of ``tokens [batch, length]``: returns ``(inputs, labels)`` where
    ``labels`` holds the original token at target positions and ``IGNORE_INDEX`` elsewhere.

    Targets are drawn among residue tokens only (ids >= ``first_residue_id``), each with
    probability ``mask_prob``; a sequence without any gets one uniformly random residue target.
    Targets become ``mask_id`` (80 %), a random amino acid (10 %) or stay (10 %).
    """
    residue = tokens >= first_residue_id
    targets = (torch.rand(tokens.shape, generator=generator) < mask_prob) & residue
    empty = ~targets.any(1) & residue.any(1)
    if empty.any():
        scores = torch.rand(tokens.shape, generator=generator).masked_fill(~residue, -1.0)
        pick = scores[empty].argmax(1)
        targets[empty.nonzero().squeeze(1), pick] = True
    labels = tokens.masked_fill(~targets, IGNORE_INDEX)
    action = torch.rand(tokens.shape, generator=generator)
    random_ids = torch.randint(first_residue_id, vocab_size, tokens.shape, generator=generator)
    inputs = torch.where(targets & (action < 0.8), torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(targets & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


class MaskedSequenceSet(Dataset):
    """Tokenized sequences served a batch at a time as masked-LM dicts, trimmed to the batch's
    longest sequence: ``tokens`` (originals), ``inputs`` (corrupted), ``labels`` (targets or
    ``IGNORE_INDEX``) and ``cdr_h3`` (bool, residue tokens in CDR-H3).

    ``fixed=True`` draws the masks once (evaluation); otherwise every call draws new ones, from a
    generator seeded by ``seed`` (in a DataLoader worker, by ``seed`` and the worker's id, so that
    workers do not repeat each other's masks)."""

    def __init__(self, tokens: Tensor, cdr_h3: Tensor, tokenizer: AminoAcidTokenizer, mask_prob: float,
                 seed: int, fixed: bool) -> None:
        self.tokens, self.cdr_h3, self.tokenizer, self.mask_prob = tokens, cdr_h3, tokenizer, mask_prob
        self.lengths = (tokens != tokenizer.pad_id).sum(1)
        self.seed, self.worker = seed, None
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed = self._mask(tokens) if fixed else None

    def _mask(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        worker = get_worker_info()
        if worker is not None and worker.id != self.worker:
            self.worker = worker.id
            self.generator = torch.Generator().manual_seed(self.seed + 1_000_003 * (worker.id + 1))
        t = self.tokenizer
        return bert_mask(tokens, self.generator, self.mask_prob, t.mask_id, t.first_residue_id, t.vocab_size)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        width = int(self.lengths[index].max())
        tokens = self.tokens[index, :width]
        inputs, labels = (self.fixed[0][index, :width], self.fixed[1][index, :width]) if self.fixed else self._mask(tokens)
        return {"tokens": tokens, "inputs": inputs, "labels": labels, "cdr_h3": self.cdr_h3[index, :width]}


class AntibodySequenceDataModule(ZooDataModule):
    """Masked-LM batches of antibody sequences from a CSV or FASTA file under ``data_dir``.

    CDR-H3 is located by the IMGT rule of ``data_modules.numbering``; sequences it cannot number
    (``self.unnumbered`` counts them) stay in the data with an empty CDR-H3 mask.

    Args:
        data_dir: folder with ``file`` (the OAS subset lies in ``../shared/data/antibody``).
        file: CSV or FASTA file name under ``data_dir``.
        format: ``auto`` (by suffix), ``csv`` or ``fasta``.
        sequence_column, id_column: CSV columns with the sequences and their names.
        chain: ``H`` (heavy) or ``L`` (light) for the CDR numbering; CDR-H3 means CDR3 of that chain.
        max_length: residues per sequence at most (longer ones raise ``MalformedDataError``).
        mask_prob: share of residues chosen as masked-LM targets.
        val_fraction, test_fraction: held-out shares of the sequences (seeded split).
        limit: keep only the first ``limit`` sequences of the file (small runs).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        file: str = "oas_human_heavy_2k.csv",
        format: str = "auto",
        sequence_column: str = "sequence_alignment_aa",
        id_column: str | None = "seq_id",
        chain: str = "H",
        max_length: int = 160,
        mask_prob: float = 0.15,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        limit: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, seed)
        if format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {format!r}")
        if chain not in ("H", "L"):
            raise ConfigError(f"chain must be 'H' or 'L', got {chain!r}")
        if not 0 < mask_prob < 1:
            raise ConfigError(f"mask_prob must be in (0, 1), got {mask_prob}")
        if max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {max_length}")
        self.file, self.format, self.chain = file, format, chain
        self.sequence_column, self.id_column = sequence_column, id_column
        self.max_length, self.mask_prob = max_length, mask_prob
        self.val_fraction, self.test_fraction, self.limit = val_fraction, test_fraction, limit
        self.tokenizer = AminoAcidTokenizer()
        self.names: list[str] = []
        self.sequences: list[str] = []
        self.unnumbered = 0
        self.split_indices: dict[str, Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise ConfigError(
                f"{type(self).__name__}: data_dir={str(self.data_dir)!r} is not a folder; it must hold {self.file} "
                "(the OAS subset is in ../shared/data/antibody)"
            )
        path = self.find_file(self.file)
        records = read_sequences(path, self.format, self.sequence_column, self.id_column)[: self.limit]
        for name, sequence in records:
            if len(sequence) > self.max_length:
                raise MalformedDataError(
                    f"{path}: record {name!r} has {len(sequence)} residues, more than max_length={self.max_length}"
                )
        self.names = [name for name, _ in records]
        self.sequences = [sequence.upper() for _, sequence in records]
        tokens = self.tokenizer.batch_encode(self.sequences, self.max_length + 2,
                                             names=[f"{path}: record {name!r}" for name in self.names])
        cdr_h3 = torch.zeros_like(tokens, dtype=torch.bool)
        self.unnumbered = 0
        for row, sequence in enumerate(self.sequences):
            try:
                mask = cdr_mask(sequence, (f"{self.chain}3",), self.chain)
            except MalformedDataError:
                self.unnumbered += 1
                continue
            cdr_h3[row, 1 : 1 + len(sequence)] = torch.tensor(mask)
        train, val, test = seeded_split(len(tokens), [self.val_fraction, self.test_fraction], self.seed)
        if min(len(train), len(val), len(test)) == 0:
            raise ConfigError(
                f"{path}: {len(tokens)} sequences leave an empty split with val_fraction={self.val_fraction}, "
                f"test_fraction={self.test_fraction}"
            )
        self.split_indices = {"train": train, "val": val, "test": test}
        for offset, (split, index) in enumerate(self.split_indices.items()):
            dataset = MaskedSequenceSet(tokens[index], cdr_h3[index], self.tokenizer, self.mask_prob,
                                        self.seed + offset, fixed=split != "train")
            setattr(self, f"{split}_set", dataset)

    def split_sequences(self, split: str) -> list[str]:
        """The raw sequences of one split (``train``, ``val`` or ``test``), in dataset order."""
        return [self.sequences[i] for i in self.split_indices[split].tolist()]
