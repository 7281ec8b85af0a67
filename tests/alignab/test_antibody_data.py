"""Antibody sequences: IMGT CDR numbering, the amino-acid tokenizer, CSV/FASTA reading, BERT
masking and the masked-LM DataModule, on hand-checked antibodies and the real OAS file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from data_modules.antibody import (
    AMINO_ACIDS,
    IGNORE_INDEX,
    AminoAcidTokenizer,
    AntibodySequenceDataModule,
    bert_mask,
    read_sequences,
)
from data_modules.numbering import cdr_mask, cdr_spans
from tests.conftest import SHARED_DATA
from zoo.core.errors import ConfigError, MalformedDataError, MissingDataError

pytestmark = pytest.mark.usefixtures("one_thread")

OAS = SHARED_DATA / "antibody" / "oas_human_heavy_2k.csv"
needs_oas = pytest.mark.skipif(not OAS.is_file(), reason=f"real OAS data not found at {OAS}")

# Variable domains with their IMGT CDRs (IMGT/mAb-DB: trastuzumab, adalimumab; the lambda chain is
# the IGLV2-14 germline with an IGLJ2 join, CDRs read off the IMGT unique numbering by hand).
HAND_CHECKED = [
    ("trastuzumab VH", "H",
     "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
     ("GFNIKDTY", "IYPTNGYT", "SRWGGDGFYAMDY")),
    ("trastuzumab VL", "L",
     "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK",
     ("QDVNTA", "SAS", "QQHYTTPPT")),
    ("adalimumab VH", "H",
     "EVQLVESGGGLVQPGRSLRLSCAASGFTFDDYAMHWVRQAPGKGLEWVSAITWNSGHIDYADSVEGRFTISRDNAKNSLYLQMNSLRAEDTAVYYCAKVSYLSTASSLDYWGQGTLVTVSS",
     ("GFTFDDYA", "ITWNSGHI", "AKVSYLSTASSLDY")),
    ("adalimumab VL", "L",
     "DIQMTQSPSSLSASVGDRVTITCRASQGIRNYLAWYQQKPGKAPKLLIYAASTLQSGVPSRFSGSGSGTDFTLTISSLQPEDVATYYCQRYNRAPYTFGQGTKVEIK",
     ("QGIRNY", "AAS", "QRYNRAPYT")),
    ("IGLV2-14 lambda", "L",
     "QSALTQPASVSGSPGQSITISCTGTSSDVGGYNYVSWYQQHPGKAPKLMIYEVSNRPSGVSNRFSGSKSGNTASLTISGLQAEDEADYYCSSYTSSSTLVFGGGTKLTVL",
     ("SSDVGGYNY", "EVS", "SSYTSSSTLV")),
]
TRASTUZUMAB_VH = HAND_CHECKED[0][2]


# -- numbering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, chain, sequence, cdrs", HAND_CHECKED, ids=[h[0] for h in HAND_CHECKED])
def test_imgt_cdrs_of_hand_checked_antibodies(name, chain, sequence, cdrs):
    spans = cdr_spans(sequence, chain)
    assert list(spans) == [f"{chain}1", f"{chain}2", f"{chain}3"]
    assert tuple(sequence[a:b] for a, b in spans.values()) == cdrs


def test_cdr3_survives_mutated_anchors_and_a_leader():
    h3 = "SRWGGDGFYAMDY"
    cys104 = TRASTUZUMAB_VH.index("YYC" + h3) + 2
    mutated = TRASTUZUMAB_VH[:cys104] + "Y" + TRASTUZUMAB_VH[cys104 + 1 :]  # Cys104 -> Tyr
    mutated = mutated.replace(h3 + "WGQG", h3 + "GGQG")  # J-Trp118 -> Gly
    start, end = cdr_spans(mutated)["H3"]
    assert mutated[start:end] == h3
    padded = "MKHLWFFLLLVAAPRWVLS" + TRASTUZUMAB_VH  # a signal peptide in front shifts every span
    assert {k: (a - 19, b - 19) for k, (a, b) in cdr_spans(padded).items()} == cdr_spans(TRASTUZUMAB_VH)


def test_cdr_mask_marks_exactly_the_cdr_residues():
    mask = cdr_mask(TRASTUZUMAB_VH, ("H1", "H3"))
    marked = "".join(a if m else "." for a, m in zip(TRASTUZUMAB_VH, mask))
    assert marked.replace(".", " ").split() == ["GFNIKDTY", "SRWGGDGFYAMDY"]
    with pytest.raises(ConfigError, match=r"unknown CDR names \['L3'\] for chain H"):
        cdr_mask(TRASTUZUMAB_VH, ("L3",))


@pytest.mark.parametrize("sequence, message", [
    ("ACDEFGHIKLMNPQRSTVWYACDEFG", r"sequence 'ACDEFGHIKLMNPQRSTVWY'\.\.\.: no Cys23 \.\.\. Trp41 pair"),
    (TRASTUZUMAB_VH[:60], r"no Cys104"),
    (TRASTUZUMAB_VH[:98], r"no J motif W-G-x-G"),
])
def test_unnumberable_sequences_raise_naming_the_sequence(sequence, message):
    with pytest.raises(MalformedDataError, match=message):
        cdr_spans(sequence)


def test_bad_scheme_or_chain_is_a_config_error():
    with pytest.raises(ConfigError, match="numbering scheme must be one of \\('imgt',\\), got 'kabat'"):
        cdr_spans(TRASTUZUMAB_VH, scheme="kabat")
    with pytest.raises(ConfigError, match="chain must be one of \\('H', 'L'\\)"):
        cdr_spans(TRASTUZUMAB_VH, chain="K")


@needs_oas
def test_imgt_cdr3_agrees_with_the_oas_annotation():
    """OAS's ``cdr3_aa`` is IMGT CDR3 (105-117): it excludes Cys104 and Trp118."""
    rows = list(csv.DictReader(open(OAS)))
    flanked = sum(f"C{r['cdr3_aa']}W" in r["sequence_alignment_aa"] for r in rows)
    assert flanked > 0.9 * len(rows)  # conserved C and W sit just outside the annotated CDR3
    numbered = agree = 0
    for row in rows:
        sequence = row["sequence_alignment_aa"]
        try:
            start, end = cdr_spans(sequence)["H3"]
        except MalformedDataError:
            continue
        numbered += 1
        agree += sequence[start:end] == row["cdr3_aa"]
    assert numbered >= 0.9 * len(rows)
    assert agree >= 0.995 * numbered


# -- tokenizer ----------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_special_tokens():
    tokenizer = AminoAcidTokenizer()
    ids = tokenizer.encode("acdy")
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.eos_id and len(ids) == 6
    assert [tokenizer.tokens[i] for i in ids[1:-1]] == ["A", "C", "D", "Y"]
    assert tokenizer.decode(ids) == "ACDY" and tokenizer.decode(torch.tensor(ids)) == "ACDY"
    assert tokenizer.vocab_size == 25 and len(set(tokenizer.encode(AMINO_ACIDS, add_special=False))) == 20
    batch = tokenizer.batch_encode(["AC", "ACDEF"])
    assert batch.shape == (2, 7) and (batch[0, 4:] == tokenizer.pad_id).all()
    with pytest.raises(ConfigError, match="a sequence needs 7 tokens"):
        tokenizer.batch_encode(["ACDEF"], length=6)


def test_unknown_letters_raise_or_map_to_unk():
    with pytest.raises(MalformedDataError, match="rec1: unknown amino-acid letter 'B' at position 3"):
        AminoAcidTokenizer().encode("ACBD", name="rec1")
    lenient = AminoAcidTokenizer(unknown="unk")
    ids = lenient.encode("ACXD")
    assert ids[3] == lenient.unk_id and lenient.decode(ids) == "ACXD"


# -- files --------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[tuple[str, str]], header=("seq_id", "sequence_alignment_aa")) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def antibody_rows(n: int) -> list[tuple[str, str]]:
    """``n`` distinct heavy chains: trastuzumab and adalimumab VH with varied CDR-H3 residues."""
    heavy = [s for _, c, s, _ in HAND_CHECKED if c == "H"]
    rows = []
    for i in range(n):
        sequence = heavy[i % 2]
        start, end = cdr_spans(sequence)["H3"]
        h3 = "".join(AMINO_ACIDS[(i * 7 + k * 3) % 20] for k in range(end - start - 2 + i % 5))
        rows.append((f"ab{i}", sequence[: start + 2] + h3 + sequence[end:]))
    return rows


def test_read_csv_and_fasta(tmp_path):
    rows = antibody_rows(3)
    assert read_sequences(write_csv(tmp_path / "a.csv", rows)) == rows
    fasta = tmp_path / "a.fasta"
    fasta.write_text("".join(f">{name} some description\n{seq[:50]}\n{seq[50:]}\n" for name, seq in rows))
    assert read_sequences(fasta) == rows
    other = write_csv(tmp_path / "b.csv", [(s, n) for n, s in rows], header=("heavy", "name"))
    assert read_sequences(other, sequence_column="heavy", id_column="name") == rows
    assert [n for n, _ in read_sequences(other, sequence_column="heavy", id_column=None)] == ["2", "3", "4"]


@pytest.mark.parametrize("content, kwargs, message", [
    ("", {}, "empty file, expected CSV antibody sequences"),
    ("seq_id,sequence\n", {"sequence_column": "sequence"}, "no data rows under the header"),
    ("seq_id,seq\nx,ACD\n", {}, "no column 'sequence_alignment_aa'; columns are \\['seq_id', 'seq'\\]"),
    ("seq_id,sequence_alignment_aa\nx,\n", {}, "record 'x' has an empty sequence"),
    ("just text\n", {"format": "fasta"}, "not a FASTA file"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(MalformedDataError, match=message) as info:
        read_sequences(path, **kwargs)
    assert str(path) in str(info.value)


# -- masking ------------------------------------------------------------------------------------
def test_bert_masking_follows_the_80_10_10_rule():
    tokenizer = AminoAcidTokenizer()
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 120, (400,), generator=generator)
    sequences = ["".join(AMINO_ACIDS[i] for i in torch.randint(0, 20, (int(n),), generator=generator)) for n in lengths]
    tokens = tokenizer.batch_encode(sequences)
    inputs, labels = bert_mask(tokens, torch.Generator().manual_seed(1), 0.15)
    residue = tokens >= tokenizer.first_residue_id
    targets = labels != IGNORE_INDEX
    assert not (targets & ~residue).any()  # never <cls>, <eos> or padding
    assert torch.equal(labels[targets], tokens[targets]) and torch.equal(inputs[~targets], tokens[~targets])
    assert abs(targets.sum() / residue.sum() - 0.15) < 0.01
    masked = (inputs[targets] == tokenizer.mask_id).float().mean()
    kept = (inputs[targets] == tokens[targets]).float().mean()
    assert abs(masked - 0.8) < 0.015
    assert abs(kept - (0.1 + 0.1 / 20)) < 0.01  # kept, plus random draws of the same residue
    replaced = inputs[targets & (inputs != tokenizer.mask_id)]
    assert (replaced >= tokenizer.first_residue_id).all()  # random replacements are amino acids
    again = bert_mask(tokens, torch.Generator().manual_seed(1), 0.15)
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_every_sequence_gets_a_target():
    tokens = AminoAcidTokenizer().batch_encode(["ACDEFG"] * 50)
    _, labels = bert_mask(tokens, torch.Generator().manual_seed(0), mask_prob=1e-6)
    assert ((labels != IGNORE_INDEX).sum(1) == 1).all()


# -- the DataModule -----------------------------------------------------------------------------
def test_datamodule_batches_splits_and_cdr_h3(tmp_path):
    rows = antibody_rows(40)
    write_csv(tmp_path / "seqs.csv", rows)
    data = AntibodySequenceDataModule(data_dir=str(tmp_path), file="seqs.csv", batch_size=8, seed=3)
    data.setup()
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (32, 4, 4) and data.unnumbered == 0
    parts = [set(data.split_indices[s].tolist()) for s in ("train", "val", "test")]
    assert set.union(*parts) == set(range(40)) and sum(map(len, parts)) == 40
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"tokens", "inputs", "labels", "cdr_h3"} and batch["tokens"].shape[0] == 8
    assert batch["tokens"].shape[1] == max(len(data.tokenizer.decode(t)) for t in batch["tokens"]) + 2
    for tokens, h3 in zip(batch["tokens"], batch["cdr_h3"]):
        sequence = data.tokenizer.decode(tokens)
        start, end = cdr_spans(sequence)["H3"]
        assert data.tokenizer.decode(tokens[h3]) == sequence[start:end]
    test_a = data.test_set.__getitems__([0, 1, 2])
    test_b = data.test_set.__getitems__([0, 1, 2])
    assert torch.equal(test_a["inputs"], test_b["inputs"])  # evaluation masks are fixed ...
    train_a = data.train_set.__getitems__([0, 1, 2, 3])
    train_b = data.train_set.__getitems__([0, 1, 2, 3])
    assert not torch.equal(train_a["labels"], train_b["labels"])  # ... training masks are redrawn
    same = AntibodySequenceDataModule(data_dir=str(tmp_path), file="seqs.csv", seed=3)
    same.setup()
    assert same.split_sequences("test") == data.split_sequences("test")
    assert torch.equal(same.test_set.__getitems__([0, 1, 2])["labels"], test_a["labels"])


def test_datamodule_reads_fasta_and_keeps_unnumbered_sequences(tmp_path):
    rows = antibody_rows(18) + [("odd1", "ACDEFGHIKLMNPQ"), ("odd2", "GGGGSGGGGSGGGGS")]
    (tmp_path / "seqs.fa").write_text("".join(f">{n}\n{s}\n" for n, s in rows))
    data = AntibodySequenceDataModule(data_dir=str(tmp_path), file="seqs.fa", batch_size=4)
    data.setup()
    assert data.unnumbered == 2 and len(data.sequences) == 20
    odd = data.sequences.index("ACDEFGHIKLMNPQ")
    split = next(s for s in ("train", "val", "test") if odd in data.split_indices[s].tolist())
    row = data.split_indices[split].tolist().index(odd)
    assert not getattr(data, f"{split}_set").cdr_h3[row].any()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"data_dir": "/nonexistent/antibody"}, ConfigError,
     "data_dir='/nonexistent/antibody' is not a folder; it must hold oas_human_heavy_2k.csv"),
    ({"file": "missing.csv"}, MissingDataError, "no missing.csv under data_dir="),
    ({"sequence_column": "heavy"}, MalformedDataError, "no column 'heavy'"),
    ({"max_length": 50}, MalformedDataError, "record 'ab0' has 120 residues, more than max_length=50"),
])
def test_datamodule_errors_are_one_line(tmp_path, kwargs, error, message):
    write_csv(tmp_path / "oas_human_heavy_2k.csv", antibody_rows(10))
    data = AntibodySequenceDataModule(**{"data_dir": str(tmp_path), **kwargs})
    with pytest.raises(error, match=message.replace("(", "\\(").replace("[", "\\[")) as info:
        data.setup()
    assert "\n" not in str(info.value)


def test_unknown_letter_in_a_file_names_file_record_and_letter(tmp_path):
    write_csv(tmp_path / "oas_human_heavy_2k.csv", [("good", "ACDEF"), ("bad", "ACDZEF")])
    data = AntibodySequenceDataModule(data_dir=str(tmp_path), val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(MalformedDataError, match=r"oas_human_heavy_2k.csv: record 'bad': unknown amino-acid letter 'Z' at position 4"):
        data.setup()


@needs_oas
def test_datamodule_on_the_real_oas_file():
    data = AntibodySequenceDataModule(data_dir=str(OAS.parent))
    data.setup()
    assert len(data.sequences) == sum(1 for _ in open(OAS)) - 1
    assert data.unnumbered < 0.1 * len(data.sequences)
    batch = data.val_set.__getitems__(list(range(16)))
    assert batch["cdr_h3"].any(1).float().mean() > 0.8
