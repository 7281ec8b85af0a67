"""Decoupled alignment (Luo et al., 2024, "Decoupled Alignment for Robust Plug-and-Play
Adaptation", DeAl / DAPA): find where alignment lives in an aligned LM and transplant it into an
unaligned one fine-tuned from the same base.

Paper -> code:
- The family: one base LM (``configs/deal/base.yaml``, shipped as ``deal-base``), an aligned child
  fine-tuned to refuse harmful requests while answering benign ones (``deal-aligned``) and an
  unaligned child fine-tuned on benign requests only (``deal-unaligned``): ``finetune.InstructionTune``
  on ``data_modules.instructions`` (templated requests, written for this project).
- Where alignment lives: corrupt-and-restore causal tracing (``tracing.causal_trace``, ROME's
  method) of attention, MLP and the MLP's gate / up / down projections, per layer and position.
- Which modules to move: delta debugging (``ddmin.ddmin``) over layers, then projections.
- The transplant ``student.model.layers[i].mlp <- teacher's`` (``transplant.transplant``), for the
  zoo's LM and Hugging Face Llama-style models alike.
- Metrics: ``metrics.is_refusal`` (the refusal detector), DSR, benign exact match, over-refusal,
  held-out text perplexity; the experiment end to end: ``experiment.run_deal`` (``python -m zoo deal``).
"""

from zoo.deal.ddmin import DDMinResult, ddmin
from zoo.deal.finetune import InstructionTune
from zoo.deal.metrics import answer_requests, behaviour_scores, is_refusal, text_perplexity
from zoo.deal.tracing import TraceResult, causal_trace, plot_trace, token_probability
from zoo.deal.transplant import (
    changed_parameter_share,
    decoder_layers,
    format_site,
    parse_site,
    parse_sites,
    site_parameter_names,
    transplant,
)

__all__ = ["DDMinResult", "InstructionTune", "TraceResult", "answer_requests", "behaviour_scores",
           "causal_trace", "changed_parameter_share", "ddmin", "decoder_layers", "format_site", "is_refusal",
           "parse_site", "parse_sites", "plot_trace", "site_parameter_names", "text_perplexity",
           "token_probability", "transplant"]
