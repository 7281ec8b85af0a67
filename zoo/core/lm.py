"""What the zoo's next-token language-model modules share (LoRA fine-tuning, pre-training, prompt
tuning): per-token NLL, exact split-level loss and perplexity, ``predict``'s samples.

A subclass sets ``self.model`` (the zoo's ``zoo.nn.CausalLM``, or a wrapper with the same
``__call__`` and ``generate``), ``self.tokenizer`` (``data_modules.text.ByteTokenizer``) and the
``sample_tokens`` / ``temperature`` hyperparameters; it may override ``forward``.

Targets equal to :data:`IGNORE_INDEX` (-100, PyTorch's and Hugging Face's convention) are not
scored: prompt tokens and padding of instruction data (``data_modules.instructions``). Every loss
and metric is a mean over the scored targets only.

:func:`load_causal_lm` reads the ``CausalLM`` of any shipped or saved LM module (a base for LoRA,
prompt tuning, instruction tuning), through the registry, with its file's sha256.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.module import ZooModule
from zoo.core.registry import build_from_checkpoint, checkpoint_path, sha256, verify_checkpoint

#: Label value of targets that are not scored (prompt tokens, padding).
IGNORE_INDEX = -100

#: Fixed prompts whose continuations ``predict`` writes to ``samples.txt``.
PROMPTS = ("The ", "def ", "Return the ", "class ")


class TokenNLL(Metric):
    """Exact sums over next-token targets: NLL and count; ``compute`` gives ``loss`` and ``ppl``."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll_sum: Tensor, count: int) -> None:
        self.nll += nll_sum.double()
        self.count += count

    def compute(self) -> dict[str, Tensor]:
        loss = self.nll / self.count.clamp_min(1)
        return {"loss": loss.float(), "ppl": torch.exp(loss).float()}


def load_causal_lm(spec: str, role: str = "base"):
    """The zoo ``CausalLM`` (``module.model``) of a registered name or checkpoint file, and the
    file's sha256; ``role`` names the argument in errors (``"LoRA base"``)."""
    from zoo.nn.causal_lm import CausalLM  # lazy: zoo.core imports no layers at import time

    path = checkpoint_path(spec)
    if not path.is_file():
        raise CheckpointError(f"{role} {spec!r} is neither a registered name nor a checkpoint file; expected a "
                              f"causal LM such as 'lm-pydoc' (python -m zoo pretrained lists the names)")
    module = build_from_checkpoint(verify_checkpoint(path), source=f"{role} {spec!r} ({path})")
    model = getattr(module, "model", None)
    if not isinstance(model, CausalLM):
        raise CheckpointError(f"{role} {spec!r}: {path} holds a {type(module).__name__}; expected a module whose "
                              f".model is the zoo's CausalLM (e.g. 'lm-pydoc')")
    return model, sha256(path)


def check_sampling(sample_tokens: int, temperature: float) -> None:
    if isinstance(sample_tokens, bool) or not isinstance(sample_tokens, int) or sample_tokens < 1:
        raise ConfigError(f"sample_tokens must be a positive integer, got {sample_tokens!r}")
    if not temperature >= 0:
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")


class NextTokenLM(ZooModule):
    """Training, evaluation and sampling steps of a causal LM over ``{"inputs", "labels"}`` batches."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = torch.nn.ModuleDict({"val": TokenNLL(), "test": TokenNLL()})

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits ``[B, T, vocab]`` of token ids ``[B, T]``."""
        self.check_shape("input_ids", input_ids, [None, None])
        return self.model(input_ids)

    def token_nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-target NLL ``[B, T]`` of a ``{"inputs", "labels"}`` batch (0 where the label is ignored)."""
        logits = self(batch["inputs"]).float()
        self.check_shape("labels", batch["labels"], list(batch["inputs"].shape))
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="none",
                               ignore_index=IGNORE_INDEX).view_as(batch["labels"])

    @staticmethod
    def scored(batch: dict[str, Tensor]) -> Tensor:
        """How many targets of the batch are scored (labels other than :data:`IGNORE_INDEX`)."""
        return (batch["labels"] != IGNORE_INDEX).sum()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.token_nll(batch).sum() / self.scored(batch).clamp_min(1)
        self.log_train(batch_idx, loss=loss)
        return loss

    def _evaluate(self, stage: str, batch: dict[str, Tensor]) -> None:
        self.scores[stage].update(self.token_nll(batch).sum(), int(self.scored(batch)))

    def _log_scores(self, stage: str) -> None:
        for name, value in self.scores[stage].compute().items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "ppl")
        self.scores[stage].reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Mean next-token NLL of each block of the batch ``[B]`` (over its scored targets)."""
        return self.token_nll(batch).sum(1) / (batch["labels"] != IGNORE_INDEX).sum(1).clamp_min(1)

    def on_predict_epoch_end(self) -> None:
        path = self.output_path("samples.txt")
        path.write_text("".join(f"=== {prompt!r}\n{self.sample(prompt)}\n\n" for prompt in PROMPTS))

    @torch.no_grad()
    def sample(self, prompt: str, max_new_tokens: int | None = None, temperature: float | None = None,
               seed: int = 0) -> str:
        """``prompt`` and its continuation, as text (greedy at temperature 0)."""
        h = self.hparams
        ids = torch.tensor([self.tokenizer.encode(prompt, bos=True)], device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = self.model.generate(ids, max_new_tokens or h.sample_tokens,
                                  temperature=h.temperature if temperature is None else temperature,
                                  generator=generator)
        return self.tokenizer.decode(out[0])

    def parameter_groups(self):
        return [p for p in self.parameters() if p.requires_grad]
