"""U-Hop+: learn a kernel feature map under which the memories are a good spherical code, then
retrieve with it (Wu, Hu et al., "Provably Optimal Memory Capacity for Modern Hopfield Models",
NeurIPS 2024).

The kernelized Hopfield model (KHM) retrieves with similarities measured in feature space and
outputs a combination of the raw memories (``zoo.hopfield.retrieval``):

    T(x) = Xi^T Sep(beta <Phi(Xi), Phi(x)>),        Phi(u) = W u,  W: d -> D

Stage I (``fit``): minimize the separation loss of the normalized memory features,

    L(Phi) = (1/M) log[ 2/(M(M-1)) sum_{mu<nu} exp(<phi_mu, phi_nu> / tau) ],

with Adam on mini-batches of memories (the loss of a batch sees the pairs inside it). It is a
log-sum-exp relaxation of maximizing the smallest pairwise angle; validation logs the loss on the
whole set and that smallest separation ``1 - max cos``.

Stage II (``test``): retrieval with ``Phi`` fixed, on masked and noisy queries, for each
separation function, next to the same retrieval without a feature map (the classic model, "plain").
Per query type, separation and variant it logs

- ``sse``: squared error between the retrieved pattern and the true memory (both clamped to
  [0, 1]), summed over pixels, averaged over queries;
- ``success``: share of queries with cosine distance x 100 <= ``success_distance`` (20);
- ``metastable``: the size of the metastable state, the number of memories whose final
  retrieval weight exceeds ``support_threshold`` (softmax weights are never exactly 0).

Names: ``test/<masked|noisy>/<separation>/<plain|uhop>/<metric>``. ``retrieval.png`` in the log
dir shows memories, queries and what each variant retrieves.

The memory set comes from the DataModule (``trainer.datamodule.memories``, e.g.
``MemoryDataModule``) at the start of every stage and is saved with the checkpoint, so a loaded
model retrieves on its own: ``model.retrieve(queries)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.core.errors import ConfigError, ShapeError
from zoo.core.module import ZooModule
from zoo.core.plots import image_grid
from zoo.hopfield.retrieval import SEPARATIONS, LinearFeatureMap, min_separation, retrieve, separation_loss

QUERIES = ("masked", "noisy")
SHOWN = 8  # memories shown in retrieval.png


class UHopPlus(ZooModule):
    """U-Hop+ Stage I (fit a linear feature map) and Stage II (retrieval with it).

    Args:
        in_dim: d, the memories' width (64 for 8x8 digits, 784 for MNIST, 3072 for CIFAR).
        feature_dim: D, the feature map's width (the paper's 200 for MNIST).
        tau: temperature of the separation loss.
        lr: Adam learning rate. The paper uses 0.1 for one epoch; on digits that lowers the
            smallest separation (measured 0.0144 -> 0.0013 after one epoch), 0.001 for 50 epochs
            raises it (-> 0.072), see the README.
        beta: inverse temperature of retrieval.
        steps: retrieval updates per query.
        separations: separation functions evaluated at test time (of ``softmax``, ``sparsemax``,
            ``entmax15``, ``entmax``).
        alpha: alpha of ``entmax``.
        success_distance: a retrieval succeeds when its cosine distance x 100 is at most this.
        support_threshold: retrieval weights above it count towards the metastable state.
        chunk_size: memories mapped by ``Phi`` at once.
    """

    def __init__(
        self,
        in_dim: int = 64,
        feature_dim: int = 200,
        tau: float = 0.1,
        lr: float = 0.001,
        beta: float = 1.0,
        steps: int = 1,
        separations: tuple[str, ...] = ("softmax", "sparsemax", "entmax15"),
        alpha: float = 1.5,
        success_distance: float = 20.0,
        support_threshold: float = 1e-3,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        unknown = [s for s in separations if s not in SEPARATIONS]
        if unknown or not separations:
            raise ConfigError(f"separations must be a non-empty list of {SEPARATIONS}, got {list(separations)}")
        if not beta > 0:
            raise ConfigError(f"beta must be > 0, got {beta}")
        if beta == float("inf"):
            raise ConfigError(f"beta must be finite (an inverse temperature), got {beta}")
        if not 1 <= alpha <= 2:
            raise ConfigError(f"alpha must lie in [1, 2], got {alpha}")
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        if not tau > 0:
            raise ConfigError(f"tau must be > 0, got {tau}")
        self.save_hyperparameters()
        self.feature_map = LinearFeatureMap(in_dim, feature_dim)
        self.register_buffer("memories", torch.zeros(0, in_dim))
        self._shown: dict[str, Tensor] = {}

    # -- the memory set ----------------------------------------------------------------------
    def set_memories(self, memories: Tensor) -> None:
        """Store the memory set ``[M, in_dim]`` (M >= 2) that retrieval reads from."""
        if memories.dim() != 2 or memories.shape[1] != self.hparams.in_dim or len(memories) < 2:
            raise ShapeError(
                f"UHopPlus: memories must have shape [M >= 2, {self.hparams.in_dim}], got {list(memories.shape)}"
                " (set model.init_args.in_dim to the data's width)"
            )
        self.memories = memories.to(self.memories)

    def _adopt_memories(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(datamodule, "memories", None) is not None:
            self.set_memories(datamodule.memories)
        if len(self.memories) == 0:
            raise ConfigError("UHopPlus needs a memory set: use a DataModule with `memories` (MemoryDataModule)")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._adopt_memories()

    def on_validation_start(self) -> None:
        self._adopt_memories()

    def on_test_start(self) -> None:
        self._adopt_memories()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Size the memory buffer to the checkpoint's set before its weights are loaded."""
        stored = checkpoint["state_dict"].get("memories")
        if stored is not None:
            self.memories = torch.empty_like(stored, device=self.memories.device)

    # -- Stage II: retrieval -----------------------------------------------------------------
    def retrieve(self, queries: Tensor, separation: str = "softmax", use_feature_map: bool = True,
                 beta: float | None = None) -> tuple[Tensor, Tensor]:
        """``steps`` updates ``x <- Xi^T Sep(beta K(Xi, x))`` from ``queries [B, in_dim]``, with
        ``Phi`` (U-Hop+) or without (plain), at ``beta`` (default: the model's). Returns the
        retrieved patterns ``[B, in_dim]`` and the last update's retrieval weights ``[B, M]``."""
        self.check_shape("queries", queries, (None, self.hparams.in_dim))
        if len(self.memories) == 0:
            raise ConfigError("UHopPlus has no memory set: call set_memories or load a fitted checkpoint")
        beta = self.hparams.beta if beta is None else beta
        return retrieve(queries, self.memories, beta, separation, self.hparams.alpha,
                        self.feature_map if use_feature_map else None, steps=self.hparams.steps,
                        chunk_size=self.hparams.chunk_size, return_weights=True)

    def retrieval_metrics(self, queries: Tensor, targets: Tensor, separation: str, use_feature_map: bool,
                          beta: float | None = None) -> tuple[dict[str, Tensor], Tensor]:
        """Per-query ``sse``, ``success`` and ``metastable`` (module docstring) and the retrieved patterns."""
        retrieved, weights = self.retrieve(queries, separation, use_feature_map, beta)
        distance = 100 * (1 - F.cosine_similarity(retrieved, targets, dim=-1))
        metrics = {
            "sse": ((retrieved.clamp(0, 1) - targets.clamp(0, 1)) ** 2).sum(-1),
            "success": (distance <= self.hparams.success_distance).float(),
            "metastable": (weights > self.hparams.support_threshold).sum(-1).float(),
        }
        return metrics, retrieved

    # -- Stage I: the separation loss --------------------------------------------------------
    def training_step(self, batch: tuple[Tensor], batch_idx: int) -> Tensor | None:
        (memories,) = batch
        self.check_shape("memories", memories, (None, self.hparams.in_dim))
        if len(memories) < 2:
            return None  # a lone memory in the epoch's last batch has no pair to separate: skip the step
        loss = separation_loss(memories, self.feature_map, self.hparams.tau)
        self.log_train(batch_idx, loss=loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        targets, masked, noisy = batch
        for name, queries in zip(QUERIES, (masked, noisy)):
            metrics, _ = self.retrieval_metrics(queries, targets, self.hparams.separations[0], True)
            self.log(f"val/{name}/sse", metrics["sse"].mean(), batch_size=len(targets))

    def on_validation_epoch_end(self) -> None:
        with torch.no_grad():
            self.log("val/separation_loss", separation_loss(self.memories, self.feature_map, self.hparams.tau))
            self.log("val/min_separation", min_separation(self.memories, self.feature_map), prog_bar=True)
            self.log("val/min_separation_plain", min_separation(self.memories))

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        targets, masked, noisy = batch
        keep = SHOWN - len(self._shown.get("memory", ()))
        if keep > 0:
            self._show("memory", targets[:keep])
        for name, queries in zip(QUERIES, (masked, noisy)):
            if keep > 0:
                self._show(name, queries[:keep])
            for separation in self.hparams.separations:
                for variant, use_map in (("plain", False), ("uhop", True)):
                    metrics, retrieved = self.retrieval_metrics(queries, targets, separation, use_map)
                    for metric, values in metrics.items():
                        self.log(f"test/{name}/{separation}/{variant}/{metric}", values.mean(), batch_size=len(targets))
                    if keep > 0 and separation == self.hparams.separations[0]:
                        self._show(f"{name}/{variant}", retrieved[:keep])

    def _show(self, key: str, images: Tensor) -> None:
        self._shown[key] = torch.cat([self._shown[key], images.cpu()]) if key in self._shown else images.cpu()

    def on_test_epoch_end(self) -> None:
        """``retrieval.png``: one row per shown memory: the memory, then per query type the query
        and what plain and U-Hop+ retrieval (first separation) return."""
        shown, self._shown = self._shown, {}
        path = self.output_path("retrieval.png", per_rank=False)  # every rank: a collective
        shape = getattr(getattr(self.trainer, "datamodule", None), "image_shape", None)
        if not shown or shape is None or self.global_rank != 0:
            return
        columns = ["memory"] + [f"{q}{suffix}" for q in QUERIES for suffix in ("", "/plain", "/uhop")]
        rows = len(shown["memory"])
        images = torch.stack([shown[c][r] for r in range(rows) for c in columns]).view(-1, *shape)
        captions = [c.replace("/", " ") for c in columns] * rows
        image_grid(images, path, captions, columns=len(columns))

    def configure_optimizers(self):
        return torch.optim.Adam(self.feature_map.parameters(), lr=self.hparams.lr)
