"""AlignAb (Wen, Hu et al., "AlignAb: Pareto-Optimal Energy Alignment for Designing Nature-Like
Antibodies"), part 1: the pieces its co-design model stands on.

Paper -> code:
- Stage 1, a masked language model of antibody sequences and its pseudo-log-likelihood
  (nativeness): ``lm`` (the encoder), ``lm_module.AntibodyLM`` (training, scoring).
- The Rosetta energies its preferences come from, as an offline PROXY (LJ attraction/repulsion,
  Coulomb; NOT Rosetta): ``energy``.
- Evaluation (CDR-H3 recovery, framework-aligned RMSD, Pareto fronts, hypervolume): ``metrics``.
- Data: sequences (``data_modules.antibody``), complexes (``data_modules.complexes``), residue
  vocabularies (``data_modules.residues``), IMGT numbering (``data_modules.numbering``).

Configs: ``configs/alignab/``; results: ``docs/alignab.md``.
"""

from zoo.alignab.lm import AntibodyEncoder
from zoo.alignab.lm_module import AntibodyLM

__all__ = ["AntibodyEncoder", "AntibodyLM"]
