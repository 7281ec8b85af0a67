"""Instruction tuning of a trained causal LM: the aligned and unaligned children of one base.

:class:`InstructionTune` fine-tunes every weight of a shipped or saved causal LM (``base``: e.g.
``deal-base``, read through ``zoo.core.lm.load_causal_lm``, sha256 recorded) on request -> response
pairs (``data_modules.instructions``), scoring only the response tokens:

    L = -(1/N) sum over response targets of log p(y_t | request, y_<t)

The data decide which child it becomes: with ``InstructionDataModule(refusals=True)`` harmful
requests are answered by a refusal (the aligned teacher of DeAl), with ``refusals=False`` only
benign requests are seen (the unaligned student). Both start from the same base, as the paper's
transplant needs (module shapes and most weights shared).

Validation and test report the response NLL (``loss``, ``ppl``) and, from greedy answers to the
split's requests, ``dsr`` (share of harmful requests refused, :func:`zoo.deal.metrics.is_refusal`),
``benign_acc`` (exact-match answers to benign requests) and ``over_refusal`` (benign requests
refused). The checkpoint holds every weight plus the base's shape (``base_config``) and sha256, so
it reloads without the base file. ``predict`` writes each held-out request with the answer.
"""

from __future__ import annotations

from dataclasses import asdict

from data_modules.text import ByteTokenizer
from zoo.core.errors import ConfigError
from zoo.core.lm import NextTokenLM, check_sampling, load_causal_lm
from zoo.deal.metrics import answer_requests, behaviour_scores
from zoo.nn.causal_lm import CausalLM, LlamaConfig

__all__ = ["InstructionTune"]


class InstructionTune(NextTokenLM):
    """Full fine-tuning of a causal LM on instruction data (module docstring).

    Args:
        base: registered name (``zoo.list_pretrained()``) or checkpoint path of a causal-LM module.
        base_config, base_sha256: the base's ``LlamaConfig`` fields and file sha256, filled in when the
            base is read and saved with the checkpoint; not meant to be set by hand.
        lr, weight_decay: AdamW under a per-step cosine schedule.
        max_new_tokens: answer length for the behaviour metrics and ``predict``.
        sample_tokens, temperature: as ``CausalLMModule`` (free-text samples of ``predict``).
    """

    def __init__(self, base: str = "deal-base", base_config: dict | None = None, base_sha256: str | None = None,
                 lr: float = 0.001, weight_decay: float = 0.0, max_new_tokens: int = 48,
                 sample_tokens: int = 64, temperature: float = 0.0) -> None:
        super().__init__()
        check_sampling(sample_tokens, temperature)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigError(f"InstructionTune max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.save_hyperparameters()
        h = self.hparams
        if base_config is not None:
            self.model = CausalLM(LlamaConfig(**base_config))
        else:
            self.model, h.base_sha256 = load_causal_lm(base, "instruction-tuning base")
            h.base_config = asdict(self.model.config)
        self.model.requires_grad_(True)
        self.tokenizer = ByteTokenizer()

    def _behaviour(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        examples = getattr(datamodule, "examples", None)
        if not examples:
            return
        split = [*examples["val"]] if stage == "val" else [*examples["test"], *examples["test_templates"]]
        answers = answer_requests(self.model, [e.request for e in split], self.hparams.max_new_tokens)
        for name, value in behaviour_scores(split, answers).items():
            self.log(f"{stage}/{name}", value)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking:
            self._behaviour("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._behaviour("test")

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        examples = getattr(getattr(self.trainer, "datamodule", None), "examples", None)
        if not examples:
            return
        split = [*examples["test"], *examples["test_templates"]]
        answers = answer_requests(self.model, [e.request for e in split], self.hparams.max_new_tokens)
        lines = [f"[{e.kind}/{e.category}] {e.request}\n  -> {a!r}  (expected {e.response!r})"
                 for e, a in zip(split, answers)]
        self.output_path("answers.txt").write_text("\n".join(lines) + "\n")
