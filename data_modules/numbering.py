"""CDR location in antibody variable domains by the IMGT unique numbering, from sequence alone.

IMGT numbering (Lefranc et al. 2003, Dev. Comp. Immunol. 27:55) gives every V domain the same
positions 1-128, anchored by four conserved residues: 1st-CYS 23, CONSERVED-TRP 41, 2nd-CYS 104 and
J-TRP (heavy) / J-PHE (light) 118, which opens the J motif W/F-G-x-G (118-121). The CDRs are

    CDR1-IMGT 27-38,  CDR2-IMGT 56-65,  CDR3-IMGT 105-117

and the frameworks around them have fixed lengths in the residues this rule uses: FR1 24-26 after
Cys23 (3 residues), FR2 39-55 (17, with Trp41 its third), FR3 66-104 (38 residues in human heavy-chain
germlines, 36 in kappa and lambda ones, ending in Cys104).

Why a rule and not a numbering package: ANARCI needs an external ``hmmscan`` binary (the PyPI
``hmmer`` 3.4 build installs, but ANARCI's Biopython parsing of its output fails here) and AntPack
0.4 refuses to run without a licence key. The rule below finds the four anchors by small position
profiles (so a mutated anchor, e.g. Cys104 -> Tyr, is still placed by its neighbours), then reads
the CDRs off the fixed framework lengths. On the OAS heavy chains in ``../shared/data/antibody``
it numbers 1,871 of 1,999 and reproduces the ``cdr3_aa`` column (IMGT CDR3, which excludes Cys104
and Trp118) for 1,869 of them (``benchmarks/alignab/lm.py``); it gives the IMGT CDRs of
trastuzumab, adalimumab and a lambda germline (``tests/alignab/test_antibody_data.py``). Insertions or
deletions inside FR2 or FR3 (rare; e.g. somatic insertions) shift CDR2, and past the 50-65
residue window between Trp41 and Cys104 the sequence is refused; CDR1 and CDR3 are read off
their own anchors.
"""

from __future__ import annotations

from zoo.core.errors import ConfigError, MalformedDataError

SCHEMES = ("imgt",)
CHAINS = ("H", "L")

# (offset from the anchor, allowed residues, weight): the anchor itself weighs most.
_CYS23 = ((-4, "LVI", 1), (-2, "LIVMF", 1), (-1, "ST", 1), (0, "C", 4), (1, "AKRTS", 1), (3, "SGT", 1))
_TRP41 = ((0, "W", 4), (1, "VIFYLA", 1), (2, "RQKL", 1), (3, "QKRHL", 1))
_CYS104 = ((-7, "ED", 1), (-6, "DE", 1), (-5, "TS", 1), (-4, "A", 1), (-3, "VLMIT", 1), (-2, "YF", 1),
           (-1, "YFH", 1), (0, "C", 4))
_J118 = {
    "H": ((0, "W", 2), (1, "G", 2), (2, "QRKSEAPH", 1), (3, "G", 2), (4, "TAS", 1)),
    "L": ((0, "F", 2), (1, "G", 2), (2, "QGSTAPE", 1), (3, "G", 2), (4, "TS", 1)),
}
_FR3_LENGTH = {"H": 38, "L": 36}  # residues 66-104, Cys104 included
_CDR1_LENGTHS = range(4, 13)  # CDR1-IMGT holds 12 positions; observed lengths 5-12
_CDR3_LENGTHS = range(2, 46)
_MIN_FRACTION = 0.6  # an anchor must score at least this share of its profile's maximum


def _score(sequence: str, position: int, profile) -> int:
    score = 0
    for offset, residues, weight in profile:
        k = position + offset
        if 0 <= k < len(sequence) and sequence[k] in residues:
            score += weight
    return score


def _best(sequence: str, positions, profile) -> tuple[int, int]:
    """The position with the highest profile score (the first one on ties) and its score."""
    best, best_score = -1, -1
    for position in positions:
        score = _score(sequence, position, profile)
        if score > best_score:
            best, best_score = position, score
    return best, best_score


def _enough(score: int, profile) -> bool:
    return score >= _MIN_FRACTION * sum(weight for _, _, weight in profile)


def imgt_anchors(sequence: str, chain: str = "H") -> dict[int, int]:
    """0-based sequence indices of the IMGT anchors 23, 41, 104 and 118 of a V domain.

    Cys23 and Trp41 are chosen together (CDR1 of 4-12 residues between them), Cys104 in the
    window where FR2 + CDR2 + FR3 put it (50-65 residues after Trp41), and the J motif 3-45
    residues after Cys104. Raises ``MalformedDataError`` when an anchor cannot be found.
    """
    if chain not in CHAINS:
        raise ConfigError(f"chain must be one of {CHAINS} (L covers kappa and lambda), got {chain!r}")
    seq = sequence.upper()
    name = f"sequence {sequence[:20]!r}{'...' if len(sequence) > 20 else ''}"
    # both profiles score below their threshold without the anchor residue itself (Cys, Trp)
    s23 = {i: _score(seq, i, _CYS23) for i, letter in enumerate(seq) if letter == "C"}
    best23, best41, best = -1, -1, -1
    for j in (j for j, letter in enumerate(seq) if letter == "W"):
        s41 = _score(seq, j, _TRP41)
        if not _enough(s41, _TRP41):
            continue
        for cdr1 in _CDR1_LENGTHS:
            i = j - cdr1 - 6
            if i in s23 and _enough(s23[i], _CYS23) and s23[i] + s41 > best:
                best23, best41, best = i, j, s23[i] + s41
    if best < 0:
        raise MalformedDataError(f"{name}: no Cys23 ... Trp41 pair (IMGT FR1/FR2 anchors) found; not a V domain?")
    c104, s104 = _best(seq, range(best41 + 50, min(best41 + 66, len(seq))), _CYS104)
    if c104 < 0 or not _enough(s104, _CYS104):
        raise MalformedDataError(f"{name}: no Cys104 (IMGT FR3 end) 50-65 residues after Trp41")
    j118, s118 = _best(seq, range(c104 + 1 + _CDR3_LENGTHS.start, min(c104 + 1 + _CDR3_LENGTHS.stop, len(seq))),
                       _J118[chain])
    if j118 < 0 or not _enough(s118, _J118[chain]):
        motif = "W-G-x-G" if chain == "H" else "F-G-x-G"
        raise MalformedDataError(f"{name}: no J motif {motif} (IMGT 118-121) after Cys104 for chain {chain}")
    return {23: best23, 41: best41, 104: c104, 118: j118}


def cdr_spans(sequence: str, chain: str = "H", scheme: str = "imgt") -> dict[str, tuple[int, int]]:
    """CDR1-3 of a heavy (``H``) or light (``L``: kappa or lambda) V domain as 0-based,
    end-exclusive ``(start, end)`` sequence spans keyed ``H1, H2, H3`` or ``L1, L2, L3``.

    IMGT: CDR1 = 27-38 (after Cys23 + FR1 24-26, up to two residues before Trp41), CDR2 = 56-65
    (after FR2 39-55, up to FR3's fixed length before Cys104), CDR3 = 105-117 (strictly between
    Cys104 and the J-motif residue 118).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"numbering scheme must be one of {SCHEMES}, got {scheme!r}")
    anchors = imgt_anchors(sequence, chain)
    cdr2 = (anchors[41] + 15, anchors[104] + 1 - _FR3_LENGTH[chain])
    if not 1 <= cdr2[1] - cdr2[0] <= 12:
        raise MalformedDataError(
            f"sequence {sequence[:20]!r}: CDR2 would have {cdr2[1] - cdr2[0]} residues between Trp41 and Cys104 "
            f"(expected 1-12 for a {chain} chain with a {_FR3_LENGTH[chain]}-residue FR3)"
        )
    return {
        f"{chain}1": (anchors[23] + 4, anchors[41] - 2),
        f"{chain}2": cdr2,
        f"{chain}3": (anchors[104] + 1, anchors[118]),
    }


def cdr_mask(sequence: str, cdrs: tuple[str, ...] = ("H3",), chain: str = "H") -> list[bool]:
    """Per-residue flags: ``True`` where the residue lies in one of ``cdrs``."""
    spans = cdr_spans(sequence, chain)
    unknown = [c for c in cdrs if c not in spans]
    if unknown:
        raise ConfigError(f"unknown CDR names {unknown} for chain {chain}; expected some of {sorted(spans)}")
    mask = [False] * len(sequence)
    for name in cdrs:
        start, end = spans[name]
        mask[start:end] = [True] * (end - start)
    return mask
