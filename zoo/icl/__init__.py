"""Transformers as in-context deep optimizers (Wu, Su, Hu, Song, Liu, "Transformers are Deep
Optimizers: Provable In-Context Learning for Deep Model Training", ICML 2025; the setting of Garg
et al. 2022).

Paper -> code:
- The function classes of the prompts (linear, sparse, noisy, N-layer ReLU networks):
  ``data_modules.icl_tasks``.
- The transformers (GPT-2 interleaved backbone; the paper's ReLU-attention encoder; one-layer
  linear attention = one gradient step, von Oswald et al. 2023): ``model``.
- The comparisons (least squares, k-NN, averaging, direct training of the ReLU net): ``baselines``.
- Training on prompts with a curriculum: ``module.InContextRegression``, ``module.Curriculum``.

Configs: ``configs/icl/``; results: ``docs/icl.md``.
"""

from zoo.icl.construction import GDTransformer, build_gd_transformer, reference_gd
from zoo.icl.model import ICLTransformer, LinearSelfAttention
from zoo.icl.module import Curriculum, InContextRegression

__all__ = ["Curriculum", "GDTransformer", "ICLTransformer", "InContextRegression", "LinearSelfAttention",
           "build_gd_transformer", "reference_gd"]
