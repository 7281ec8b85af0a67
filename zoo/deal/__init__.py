"""Decoupled alignment (Luo et al., 2024, "Decoupled Alignment for Robust Plug-and-Play
Adaptation", DeAl / DAPA): find where alignment lives in an aligned LM and transplant it into an
unaligned one fine-tuned from the same base.

Paper -> code:
- The family: one base LM (``configs/deal/base.yaml``, shipped as ``deal-base``), an aligned child
  fine-tuned to refuse harmful requests while answering benign ones (``deal-aligned``) and an
  unaligned child fine-tuned on benign requests only (``deal-unaligned``): ``finetune.InstructionTune``
  on ``data_modules.instructions`` (templated requests, written for this project).
- Metrics: ``metrics.is_refusal`` (the refusal detector), DSR, benign exact-match, over-refusal,
  held-out text perplexity.
"""

from zoo.deal.finetune import InstructionTune
from zoo.deal.metrics import answer_requests, behaviour_scores, is_refusal, text_perplexity

__all__ = ["InstructionTune", "answer_requests", "behaviour_scores", "is_refusal", "text_perplexity"]
