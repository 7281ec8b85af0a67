"""AlignAb stage 1: a masked antibody language model (Wen, Hu et al., "AlignAb: Pareto-Optimal
Energy Alignment for Designing Nature-Like Antibodies"; the paper pre-trains on millions of OAS
sequences, here a small BERT on the 2,000-sequence OAS subset).

Training minimizes the masked-token cross-entropy over BERT targets (``data_modules.antibody``):

    L = -(1/|M|) sum_{i in M} log p_theta(x_i | x~)

Validation and test report, on the fixed masks of held-out sequences, overall and on CDR-H3:

- ``acc``: share of targets whose argmax prediction is the true residue;
- ``ppl``: exp of the mean target NLL;

next to two baselines fit on the training split (stored in the checkpoint): ``unigram`` predicts
the training residue frequencies everywhere, ``position`` the frequencies at the same token index.
Both use add-one smoothing over the 20 amino acids.

Nativeness (``pseudo_log_likelihood``): PLL(x) = sum_i log p_theta(x_i | x with position i masked)
(Salazar et al. 2020), each position masked in turn; the per-residue mean makes lengths comparable.
Per-residue embeddings for the diffusion model: ``embed(tokens)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from data_modules.residues import IGNORE_INDEX, AminoAcidTokenizer
from zoo.alignab.lm import AntibodyEncoder
from zoo.core.errors import ConfigError
from zoo.core.module import ZooModule

LM_SIZES = {
    "tiny": {"dim": 64, "depth": 2, "heads": 4},
    "small": {"dim": 128, "depth": 4, "heads": 4},
    "base": {"dim": 256, "depth": 6, "heads": 8},
}
SCORERS = ("lm", "unigram", "position")
REGIONS = ("all", "h3")


class MaskedLMScores(Metric):
    """Exact sums over targets: NLL, correct argmax and count; ``compute`` gives acc and ppl."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("nll", "correct", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, log_probs: Tensor, targets: Tensor) -> None:
        """``log_probs [N, vocab]`` of ``N`` targets with true ids ``targets [N]``."""
        self.nll += -log_probs.gather(1, targets[:, None]).double().sum()
        self.correct += (log_probs.argmax(1) == targets).double().sum()
        self.count += targets.numel()

    def compute(self) -> dict[str, Tensor]:
        count = self.count.clamp_min(1)
        return {"acc": (self.correct / count).float(), "ppl": torch.exp(self.nll / count).float()}


class AntibodyLM(ZooModule):
    """BERT-style masked LM over antibody sequences with held-out accuracy / perplexity,
    baselines, pseudo-log-likelihood scoring and per-residue embeddings.

    Args:
        size: ``tiny``, ``small`` or ``base`` (``LM_SIZES``), or ``custom`` to use ``dim``,
            ``depth`` and ``heads``.
        dim, depth, heads: transformer width, blocks and heads when ``size="custom"``.
        mlp_ratio: MLP expansion.
        max_length: most residues per sequence (the positional table holds ``max_length + 2``).
        dropout: dropout in the encoder.
        lr, weight_decay: AdamW under a per-step cosine schedule.
        pll_batch_size: masked copies scored at once by ``pseudo_log_likelihood``.
    """

    def __init__(
        self,
        size: str = "small",
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        max_length: int = 160,
        dropout: float = 0.1,
        lr: float = 0.001,
        weight_decay: float = 0.01,
        pll_batch_size: int = 256,
    ) -> None:
        super().__init__()
        if size not in (*LM_SIZES, "custom"):
            raise ConfigError(f"AntibodyLM size must be one of {(*LM_SIZES, 'custom')}, got {size!r}")
        self.save_hyperparameters()
        shape = LM_SIZES.get(size, {"dim": dim, "depth": depth, "heads": heads})
        if shape["dim"] % shape["heads"]:
            raise ConfigError(f"AntibodyLM dim={shape['dim']} must be divisible by heads={shape['heads']}")
        self.tokenizer = AminoAcidTokenizer()
        vocab = self.tokenizer.vocab_size
        self.encoder = AntibodyEncoder(vocab, shape["dim"], shape["depth"], shape["heads"], mlp_ratio,
                                       max_length + 2, dropout, self.tokenizer.pad_id)
        residue_counts = torch.zeros(vocab)
        residue_counts[self.tokenizer.first_residue_id :] = 1.0
        self.register_buffer("unigram_counts", residue_counts.clone())
        self.register_buffer("position_counts", residue_counts.repeat(max_length + 2, 1))
        self.register_buffer("baselines_fitted", torch.tensor(False))
        self.scores = torch.nn.ModuleDict({
            f"{stage}_{scorer}_{region}": MaskedLMScores()
            for stage in ("val", "test") for scorer in SCORERS for region in REGIONS
        })

    # -- the network ---------------------------------------------------------------------------
    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, L, vocab]`` of token ids ``[B, L]``."""
        self.check_shape("tokens", tokens, [None, None])
        return self.encoder(tokens)

    def embed(self, tokens: Tensor) -> Tensor:
        """Per-residue embeddings ``[B, L, dim]`` (position 0 is ``<cls>``, then the residues)."""
        self.check_shape("tokens", tokens, [None, None])
        return self.encoder.embed(tokens)

    # -- baselines -----------------------------------------------------------------------------
    def fit_baselines(self, tokens: Tensor) -> None:
        """Residue counts (add-one smoothed) of the training tokens, overall and per token index."""
        first = self.tokenizer.first_residue_id
        residue = tokens >= first
        unigram = torch.ones_like(self.unigram_counts)
        unigram[:first] = 0
        unigram += torch.bincount(tokens[residue], minlength=len(unigram)).to(unigram)
        position = unigram.new_zeros(self.position_counts.shape)
        position[:, first:] = 1.0
        rows = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)[residue]
        position.index_put_((rows, tokens[residue]), torch.ones(len(rows), device=position.device), accumulate=True)
        self.unigram_counts.copy_(unigram)
        self.position_counts.copy_(position)
        self.baselines_fitted.fill_(True)

    def _fit_baselines_from_data(self, refit: bool) -> None:
        """Fit the baselines on the DataModule's training split: always at ``fit``, at ``validate``
        or ``test`` only if the weights did not bring fitted ones (a fresh model)."""
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        if (refit or not self.baselines_fitted) and train_set is not None and hasattr(train_set, "tokens"):
            self.fit_baselines(train_set.tokens.to(self.unigram_counts.device))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._fit_baselines_from_data(refit=True)

    def on_validation_start(self) -> None:
        if self.trainer.state.fn != "fit":
            self._fit_baselines_from_data(refit=False)

    def on_test_start(self) -> None:
        self._fit_baselines_from_data(refit=False)

    def _baseline_log_probs(self, scorer: str, rows: Tensor) -> Tensor:
        counts = self.unigram_counts.expand(len(rows), -1) if scorer == "unigram" else self.position_counts[rows]
        return torch.log(counts / counts.sum(1, keepdim=True))

    # -- steps ---------------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = self(batch["inputs"]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE_INDEX)
        return loss, logits

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss(batch)
        self.log_train(batch_idx, loss=loss)
        return loss

    def target_log_probs(self, batch: dict[str, Tensor], logits: Tensor | None = None
                         ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Log-probabilities ``[T, vocab]`` of the batch's masked targets from the LM and from the
        unigram and position-frequency baselines, with the true tokens ``[T]`` and whether each
        target lies in CDR-H3 ``[T]``."""
        logits = self(batch["inputs"]).float() if logits is None else logits
        targets = batch["labels"] != IGNORE_INDEX
        rows = targets.nonzero()[:, 1]
        log_probs = {"lm": logits[targets].log_softmax(-1),
                     "unigram": self._baseline_log_probs("unigram", rows),
                     "position": self._baseline_log_probs("position", rows)}
        return log_probs, batch["labels"][targets], batch["cdr_h3"][targets]

    def _evaluate(self, stage: str, batch: dict[str, Tensor]) -> None:
        loss, logits = self._loss(batch)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        log_probs, truth, h3 = self.target_log_probs(batch, logits)
        for scorer, values in log_probs.items():
            self.scores[f"{stage}_{scorer}_all"].update(values, truth)
            self.scores[f"{stage}_{scorer}_h3"].update(values[h3], truth[h3])

    def _log_scores(self, stage: str) -> None:
        for scorer in SCORERS:
            for region in REGIONS:
                metric = self.scores[f"{stage}_{scorer}_{region}"]
                prefix = f"{stage}/" if scorer == "lm" else f"{stage}/{scorer}/"
                suffix = "" if region == "all" else "_h3"
                for name, value in metric.compute().items():
                    self.log(f"{prefix}{name}{suffix}", value, prog_bar=scorer == "lm" and region == "all")
                metric.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Per-residue mean pseudo-log-likelihood of each sequence in the batch."""
        sequences = [self.tokenizer.decode(row) for row in batch["tokens"]]
        return self.pseudo_log_likelihood(sequences)

    # -- nativeness ----------------------------------------------------------------------------
    @torch.no_grad()
    def pseudo_log_likelihood(self, sequences: Sequence[str], per_residue: bool = True) -> Tensor:
        """PLL of each sequence: sum over residues i of log p(x_i | x with i masked), or its mean
        over residues (``per_residue``). All (sequence, position) copies are scored in batches of
        ``pll_batch_size``. Returns a float tensor ``[len(sequences)]``."""
        if not sequences:
            return torch.zeros(0)
        was_training = self.training
        self.eval()
        device = self.unigram_counts.device
        tokens = self.tokenizer.batch_encode(list(sequences)).to(device)
        lengths = torch.tensor([len(s) for s in sequences], device=device)
        owner = torch.repeat_interleave(torch.arange(len(sequences), device=device), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(len(owner), device=device) - offsets[owner] + 1  # token index after <cls>
        total = torch.zeros(len(sequences), dtype=torch.float64, device=device)
        for start in range(0, len(owner), self.hparams.pll_batch_size):
            rows, cols = owner[start : start + self.hparams.pll_batch_size], position[start : start + self.hparams.pll_batch_size]
            width = int(lengths[rows].max()) + 2
            masked = tokens[rows, :width].clone()
            truth = masked[torch.arange(len(rows)), cols]
            masked[torch.arange(len(rows)), cols] = self.tokenizer.mask_id
            logits = self.encoder(masked)[torch.arange(len(rows)), cols].float()
            total.index_add_(0, rows, logits.log_softmax(-1).gather(1, truth[:, None]).squeeze(1).double())
        if was_training:
            self.train()
        return (total / lengths if per_residue else total).float()
