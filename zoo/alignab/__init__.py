"""AlignAb (Wen, Hu et al., "AlignAb: Pareto-Optimal Energy Alignment for Designing Nature-Like
Antibodies"): the pieces its co-design model stands on, the co-design diffusion and its energy alignment.

Paper -> code:
- Stage 1, a masked language model of antibody sequences and its pseudo-log-likelihood
  (nativeness): ``lm`` (the encoder), ``lm_module.AntibodyLM`` (training, scoring).
- The Rosetta energies its preferences come from, as an offline PROXY (LJ attraction/repulsion,
  Coulomb; NOT Rosetta): ``energy``.
- Stage 2, LM-guided sequence-structure diffusion that co-designs a CDR loop (DiffAb-style): rotations and
  IGSO3 (``so3``), the three diffusions (``codesign_diffusion``), the IPA network with the LM injected
  (``codesign_network``), training / evaluation / PDB output (``codesign_module.CoDesignDiffusion``).
- Stage 3, online Pareto energy alignment by residue-level Diffusion-DPO (AbDPO) with temperature-scaled
  sampling rounds: side chains, energies, pairs, the DPO loss and PCGrad (``preferences``), the rounds
  (``align_module.CoDesignAlignment``).
- Evaluation (CDR-H3 recovery, framework-aligned RMSD, Pareto fronts, hypervolume): ``metrics``.
- Data: sequences (``data_modules.antibody``), complexes (``data_modules.complexes``), residue
  vocabularies (``data_modules.residues``), IMGT numbering (``data_modules.numbering``).

Configs: ``configs/alignab/``; results: ``docs/alignab.md``.
"""

from zoo.alignab.align_module import CoDesignAlignment
from zoo.alignab.codesign_diffusion import LoopDiffusion
from zoo.alignab.codesign_module import CODESIGN_SIZES, CoDesignDiffusion
from zoo.alignab.codesign_network import CoDesignNetwork
from zoo.alignab.lm import AntibodyEncoder
from zoo.alignab.lm_module import AntibodyLM
from zoo.alignab.so3 import IGSO3

__all__ = ["CODESIGN_SIZES", "AntibodyEncoder", "AntibodyLM", "CoDesignAlignment", "CoDesignDiffusion",
           "CoDesignNetwork", "IGSO3", "LoopDiffusion"]
