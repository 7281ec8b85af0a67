"""AlignAb stage 3: online, iterative, temperature-scaled energy alignment of the co-design diffusion model by
residue-level Diffusion-DPO (AbDPO), single-objective, weighted-sum or Pareto (``preferences``), as a
LightningModule.

One ``fit`` epoch is one round (the paper's online loop):

1. sample: ``designs_per_complex`` designs of every training patch's loop from the current policy, over
   ``sample_steps`` respaced steps at the round's temperature ``tau_r = tau_0 (tau_1 / tau_0)^(r / (R - 1))``
   (``temperature_start`` -> ``temperature_end`` over the ``R = max_epochs`` rounds);
2. score: side chains from the rotamer library, CDR-antigen E_Rep / E_nonRep per residue, CDR E_total and the
   dG proxy (``preferences.design_energies``; the energy PROXY, not Rosetta);
3. pair: winners and losers per patch by ``method`` (``preferences.preference_pairs``) and per-residue signs;
4. update: one pass over the training patches, each step the DPO loss (Eq. (8) of ``preferences``) of the
   batch's pairs against the frozen reference (the starting model), per objective, combined by PCGrad for
   ``pareto``; optionally plus ``native_weight`` x the stage-2 denoising loss on the native loops.

The round's designs, energies and pairs go to ``<log dir>/rounds/round_RRR.pt`` when it is drawn, its summary
(mean and median energies, pairs, sampling and update seconds) to a line of ``rounds.csv`` when it ends, and
the round itself into every checkpoint, so a run resumed from a checkpoint taken inside a round trains on
the same pairs instead of drawing new ones. ``test`` samples held-out loops at temperature 1 and logs AAR,
RMSD and the four energies; the aligned policy is ``self.policy`` (a ``CoDesignDiffusion``).
"""

from __future__ import annotations

import copy
import csv
import time

import torch
from torch import Tensor

from zoo.alignab.codesign_diffusion import LoopState
from zoo.alignab.codesign_module import CoDesignDiffusion
from zoo.alignab.preferences import (
    CONFLICT_RULES,
    LEVELS,
    METHODS,
    OBJECTIVES,
    SideChainLibrary,
    design_energies,
    dpo_loss,
    pcgrad,
    preference_pairs,
    residue_dominance,
    residue_signs,
)
from zoo.core.errors import CheckpointError, ConfigError
from zoo.core.module import ZooModule

ENERGIES = ("rep", "nonrep", "total", "dg")


def load_codesign(spec: str) -> CoDesignDiffusion:
    """A ``CoDesignDiffusion`` from a registered name (``alignab-codesign-h3``) or a checkpoint file."""
    from zoo.core.registry import build_from_checkpoint, checkpoint_class, checkpoint_path, verify_checkpoint

    path = checkpoint_path(spec)
    if not path.is_file():
        raise CheckpointError(f"init_from {spec!r} is neither a registered name nor a checkpoint file; expected a "
                              "co-design model such as 'alignab-codesign-h3' (python -m zoo pretrained lists them)")
    checkpoint = verify_checkpoint(path)
    recorded = checkpoint_class(checkpoint)
    if recorded not in (None, CoDesignDiffusion.__name__):
        raise CheckpointError(f"init_from {spec!r} holds a {recorded}; expected a CoDesignDiffusion")
    return build_from_checkpoint(checkpoint, CoDesignDiffusion, source=f"init_from {spec!r} ({path})")


class CoDesignAlignment(ZooModule):
    """Energy alignment of a co-design diffusion model (module docstring).

    Args:
        init_from: the stage-2 model to align (registered name or checkpoint); also the frozen reference.
        method: ``single`` (one objective), ``weighted`` (weighted sum) or ``pareto`` (dominance pairs, one loss
            per objective, PCGrad).
        objectives: energies preferences are built from, of ``rep`` (CDR-antigen E_Rep) and ``nonrep``
            (E_nonRep), all minimised.
        weights: one per objective for ``weighted`` (default all 1).
        beta: the DPO inverse temperature (Diffusion-DPO's ``T omega(lambda_t)`` folded in).
        level: ``residue`` (AbDPO's per-residue preferences, Eq. (8) of ``preferences``) or ``design`` (one
            preference per pair over the whole loop, Eq. (9)).
        conflict: ``pareto`` at residue level, where the energies disagree on a residue: ``pcgrad`` (one loss per
            energy, gradients combined by PCGrad) or ``dominance`` (one loss, a residue preferred only where it
            Pareto-dominates; ``preferences``, point 6).
        designs_per_complex, sample_steps: designs per training loop per round and their reverse steps.
        temperature_start, temperature_end: the sampling temperature of the first and last round (geometric).
        passes: updates per training batch in a round, each with a fresh timestep and noise (more updates per
            round for the cost of one round's sampling).
        timesteps: timesteps (and noise draws) per pair in one update, averaged (Diffusion-DPO draws one).
        native_weight: weight of the stage-2 denoising loss on the native training loops (0: pure DPO).
        rotamers: rotamers per amino acid in the side-chain library (built from the training complexes).
        lr, weight_decay, grad_clip: AdamW (constant rate) and the gradient-norm clip (0: none).
        num_samples, test_steps: designs per held-out loop in ``test`` and their reverse steps (temperature 1).
        seed: seeds each round's sampling (with the round number) and the DPO noise.
    """

    def __init__(self, init_from: str = "alignab-codesign-h3", method: str = "pareto",
                 objectives: list[str] | None = None, weights: list[float] | None = None, beta: float = 1.0,
                 level: str = "residue", conflict: str = "pcgrad",
                 designs_per_complex: int = 8, sample_steps: int = 20, temperature_start: float = 1.0,
                 temperature_end: float = 0.5, passes: int = 1, timesteps: int = 1, native_weight: float = 0.0,
                 rotamers: int = 6,
                 lr: float = 1e-4,
                 weight_decay: float = 0.0, grad_clip: float = 1.0, num_samples: int = 4, test_steps: int = 20,
                 seed: int = 0) -> None:
        super().__init__()
        objectives = list(OBJECTIVES) if objectives is None else list(objectives)
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {LEVELS}, got {level!r}")
        if conflict not in CONFLICT_RULES:
            raise ConfigError(f"conflict must be one of {CONFLICT_RULES}, got {conflict!r}")
        bad = [o for o in objectives if o not in OBJECTIVES]
        if bad or not objectives or len(set(objectives)) != len(objectives):
            raise ConfigError(f"objectives must be distinct names from {OBJECTIVES}, got {objectives}")
        if method == "single" and len(objectives) != 1:
            raise ConfigError(f"method 'single' takes exactly one objective, got {objectives}")
        if weights is not None and (method != "weighted" or len(weights) != len(objectives)):
            raise ConfigError(f"weights {weights} need method 'weighted' and one weight per objective {objectives}")
        for name, value in (("designs_per_complex", designs_per_complex - 1), ("num_samples", num_samples - 1),
                            ("sample_steps", sample_steps - 1), ("test_steps", test_steps - 1),
                            ("rotamers", rotamers - 1), ("passes", passes - 1), ("timesteps", timesteps - 1)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 1, got {value + 1}")
        for name, value in (("beta", beta), ("temperature_start", temperature_start),
                            ("temperature_end", temperature_end)):
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if native_weight < 0 or grad_clip < 0:
            raise ConfigError(f"native_weight and grad_clip must be >= 0, got {native_weight}, {grad_clip}")
        self.save_hyperparameters()
        self.objectives = objectives
        self.automatic_optimization = False
        self.policy = load_codesign(init_from)
        self.reference = copy.deepcopy(self.policy.network).requires_grad_(False).eval()
        if max(sample_steps, test_steps) > self.policy.diffusion.num_steps:
            raise ConfigError(f"sample_steps and test_steps must be <= the model's num_steps "
                              f"({self.policy.diffusion.num_steps}), got {sample_steps}, {test_steps}")
        # the rotamer library, built from the training complexes at the first fit and kept in the state dict
        self.register_buffer("library_local", torch.zeros(21, rotamers, 14, 3, dtype=torch.float64))
        self.register_buffer("library_mask", torch.zeros(21, 14, dtype=torch.bool))
        self._round: dict | None = None
        self._generator: torch.Generator | None = None
        self._update_start = 0.0
        self._generator_state: Tensor | None = None

    def train(self, mode: bool = True):
        super().train(mode)
        self.reference.eval()
        return self

    # -- the library -------------------------------------------------------------------------------------
    @property
    def library(self) -> SideChainLibrary:
        if not self.library_mask.any():
            raise ConfigError("the side-chain library is not built yet: fit first (or load an aligned checkpoint)")
        return SideChainLibrary(self.library_local, self.library_mask)

    def setup(self, stage: str) -> None:
        if self.library_mask.any():
            return
        datamodule = self.trainer.datamodule
        names = set(datamodule.splits["train"])
        library = SideChainLibrary.from_complexes([c for c in datamodule.complexes if c.name in names],
                                                  self.hparams.rotamers, seed=self.hparams.seed)
        self.library_local.copy_(library.local)
        self.library_mask.copy_(library.mask)

    def losses_per_pair(self) -> int:
        """One DPO loss per objective for residue-level ``pareto`` with PCGrad, else one."""
        per_objective = self.hparams.level == "residue" and self.hparams.conflict == "pcgrad"
        return len(self.objectives) if self.hparams.method == "pareto" and per_objective else 1

    def temperature(self, round_: int) -> float:
        rounds = max(int(self.trainer.max_epochs or 1), 1)
        start, end = self.hparams.temperature_start, self.hparams.temperature_end
        return start * (end / start) ** (round_ / (rounds - 1)) if rounds > 1 else start

    # -- one round: sample, score, pair -------------------------------------------------------------------
    def score(self, patch: dict[str, Tensor], designed: LoopState) -> dict[str, Tensor]:
        return design_energies({k: v.cpu() for k, v in patch.items()}, designed.aa.cpu(), designed.pos.cpu(),
                               designed.rot.cpu(), self.library)

    @torch.no_grad()
    def sample_round(self, round_: int) -> dict:
        """Designs, energies and preference pairs of every training patch (module docstring, steps 1-3)."""
        from tqdm.auto import tqdm

        start = time.perf_counter()
        train = self.trainer.datamodule.train_set
        n, tau, steps = self.hparams.designs_per_complex, self.temperature(round_), self.hparams.sample_steps
        if self.trainer.fast_dev_run:  # a dry run checks the path only: 4 designs a loop, at most 5 steps
            n, steps = min(4, n), min(5, steps)
        generator = torch.Generator().manual_seed(self.hparams.seed * 100_003 + round_)
        chunk = max(1, 64 // n)
        was_training = self.policy.training
        self.policy.eval()
        designs = {k: [] for k in ("complex", "aa", "pos", "rot", *ENERGIES)}
        pairs = {k: [] for k in ("complex", "loop", "winner", "loser", "signs")}
        bar = tqdm(range(0, len(train), chunk), desc=f"round {round_} sampling", leave=False,
                   disable=not self.trainer.progress_bar_callback)
        for first in bar:
            rows = list(range(first, min(first + chunk, len(train))))
            batch = {k: v.to(self.device) for k, v in train.__getitems__(rows).items()}
            _, designed, _ = self.policy.design(batch, n, generator, steps=steps, temperature=tau)
            for b in range(len(rows)):
                part = LoopState(*(x[b * n:(b + 1) * n] for x in (designed.aa, designed.pos, designed.rot)))
                patch = {k: v[b] for k, v in batch.items()}
                energy = self.score(patch, part)
                offset = len(designs["complex"]) * n
                designs["complex"].append(patch["complex"].cpu().expand(n))
                for name, value in (("aa", part.aa), ("pos", part.pos), ("rot", part.rot)):
                    designs[name].append(value.cpu())
                for name in ENERGIES:
                    designs[name].append(energy[name].float())
                objectives = torch.stack([energy[o] for o in self.objectives], -1)
                residue = torch.stack([energy[f"residue_{o}"] for o in self.objectives])  # [m, n, K]
                if self.hparams.method == "weighted":
                    weights = torch.tensor(self.hparams.weights or [1.0] * len(self.objectives)).double()
                    residue = (residue * weights[:, None, None]).sum(0, keepdim=True)
                for w, l in preference_pairs(objectives, self.hparams.method, self.hparams.weights):
                    if self.hparams.level == "design":  # one preference for the pair, on every loop residue
                        signs = patch["design"].cpu().double()[None]
                    elif self.hparams.method == "pareto" and self.hparams.conflict == "dominance":
                        signs = residue_dominance(residue[:, w], residue[:, l])[None] * patch["design"].cpu()
                    else:
                        signs = residue_signs(residue[:, w], residue[:, l]) * patch["design"].cpu()
                    pairs["complex"].append(int(patch["complex"][0]))
                    pairs["loop"].append(int(patch["loop"][0]))
                    pairs["winner"].append(offset + w)
                    pairs["loser"].append(offset + l)
                    pairs["signs"].append(signs.float())
        self.policy.train(was_training)
        out = {"round": round_, "temperature": tau, "seconds": time.perf_counter() - start,
               "designs": {k: torch.cat(v) for k, v in designs.items()},
               "pairs": {"complex": torch.tensor(pairs["complex"], dtype=torch.long),
                         "loop": torch.tensor(pairs["loop"], dtype=torch.long),
                         "winner": torch.tensor(pairs["winner"], dtype=torch.long),
                         "loser": torch.tensor(pairs["loser"], dtype=torch.long),
                         "signs": torch.stack(pairs["signs"]) if pairs["signs"] else torch.zeros(
                             0, self.losses_per_pair(),
                             train.tensors[train.names.index("design")].shape[1])}}
        return out

    def on_train_epoch_start(self) -> None:
        round_ = self.current_epoch
        if self._round is None or self._round["round"] != round_:  # a resumed run keeps its round's pairs
            self._round = self.sample_round(round_)
            self.save_round(self._round)
        self._update_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        """The round's summary (energies of its designs, pairs, sampling and update seconds) to the logger and
        to ``rounds.csv``."""
        summary = self.round_summary(self._round)
        summary["update_seconds"] = time.perf_counter() - self._update_start
        for name, value in summary.items():
            if name != "round":
                self.log(f"round/{name}", float(value), on_step=False, on_epoch=True)
        path = self.output_path("rounds.csv", per_rank=False)  # every rank: trainer.log_dir is a collective
        if self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(summary))
            if new:
                writer.writeheader()
            writer.writerow(summary)

    @staticmethod
    def round_summary(round_: dict) -> dict[str, float]:
        designs = round_["designs"]
        out = {"round": round_["round"], "temperature": round_["temperature"], "sample_seconds": round_["seconds"],
               "pairs": len(round_["pairs"]["complex"])}
        for name in ENERGIES:
            out[name] = float(designs[name].mean())
            out[f"{name}_median"] = float(designs[name].median())
        return out

    def save_round(self, round_: dict) -> None:
        folder = self.output_path("rounds", per_rank=False)  # every rank: trainer.log_dir is a collective
        if self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(round_, folder / f"round_{round_['round']:03d}.pt")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._round is not None:
            checkpoint["alignab_round"] = self._round
        if self._generator is not None:
            checkpoint["alignab_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._round = checkpoint.get("alignab_round")
        self._generator_state = checkpoint.get("alignab_generator")

    # -- one update --------------------------------------------------------------------------------------
    def pair_batch(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], LoopState, LoopState, Tensor] | None:
        """The batch's pairs: the patches repeated per pair, winner and loser designs, signs ``[P, m, K]``."""
        pairs, designs = self._round["pairs"], self._round["designs"]
        # a training patch is one (complex, CDR) loop: its pairs are those drawn for that loop
        keys = zip(batch["complex"][:, 0].tolist(), batch["loop"][:, 0].tolist())
        wanted = [(b, p) for b, (c, loop) in enumerate(keys)
                  for p in torch.nonzero((pairs["complex"] == c) & (pairs["loop"] == loop)).flatten().tolist()]
        if not wanted:
            return None
        index_b = torch.tensor([b for b, _ in wanted])
        index_p = torch.tensor([p for _, p in wanted])
        patches = {k: v[index_b.to(v.device)] for k, v in batch.items()}

        def state(which: str) -> LoopState:
            rows = pairs[which][index_p]
            return LoopState(*(designs[k][rows].to(self.device) for k in ("aa", "pos", "rot")))

        return patches, state("winner"), state("loser"), pairs["signs"][index_p].to(self.device)

    def errors(self, network, noisy: LoopState, state0: LoopState, eps: Tensor, t: Tensor, cond: dict) -> Tensor:
        """Per-residue errors ``[3, B, K]`` (position, rotation, sequence KL) of ``network``."""
        eps_pred, rot_pred, logits = network(noisy.aa, noisy.rot, noisy.pos, t, **cond)
        terms = self.policy.diffusion.residue_losses(state0, noisy, eps, t, eps_pred, rot_pred, logits)
        return torch.stack([terms["pos"], terms["rot"], terms["seq"]])

    def dpo_losses(self, batch: dict[str, Tensor], generator: torch.Generator | None = None
                   ) -> tuple[list[Tensor], Tensor] | None:
        """One DPO loss per objective (one in all for ``single`` / ``weighted``) and the accuracy."""
        found = self.pair_batch(batch)
        if found is None:
            return None
        patches, winner, loser, signs = found
        k = self.hparams.timesteps
        if k > 1:  # every pair at k timesteps (k noise draws): a lower-variance estimate of Eq. (8)
            patches = {name: v.repeat_interleave(k, 0) for name, v in patches.items()}
            winner, loser = (LoopState(*(x.repeat_interleave(k, 0) for x in (s.aa, s.pos, s.rot)))
                             for s in (winner, loser))
            signs = signs.repeat_interleave(k, 0)
        native, design, cond = self.policy.inputs(patches)
        p = len(design)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        t = torch.randint(1, self.policy.diffusion.num_steps + 1, (p,), generator=generator).to(self.device)
        states, noisy, noise = [], [], []
        for chosen in (winner, loser):
            state0 = LoopState(*(torch.where(design[(...,) + (None,) * (x.ndim - 2)], x, n)
                                 for x, n in ((chosen.aa, native.aa), (chosen.pos, native.pos),
                                              (chosen.rot, native.rot))))
            # the same timestep and the same draws of noise for winner and loser (Diffusion-DPO's choice)
            state_t, eps = self.policy.diffusion.add_noise(state0, design, t, torch.Generator().manual_seed(seed))
            states.append(state0)
            noisy.append(state_t)
            noise.append(eps)
        cat = lambda a, b: LoopState(*(torch.cat([x, y]) for x, y in zip(  # noqa: E731
            (a.aa, a.pos, a.rot), (b.aa, b.pos, b.rot))))
        state0, state_t, eps = cat(*states), cat(*noisy), torch.cat(noise)
        cond2 = {k: None if v is None else torch.cat([v, v]) for k, v in cond.items()}
        policy = self.errors(self.policy.network, state_t, state0, eps, torch.cat([t, t]), cond2)
        with torch.no_grad():
            reference = self.errors(self.reference, state_t, state0, eps, torch.cat([t, t]), cond2)
        losses, accuracies = [], []
        for k in range(signs.shape[1]):
            loss, accuracy = dpo_loss(policy[:, :p], reference[:, :p], policy[:, p:], reference[:, p:],
                                      signs[:, k], self.hparams.beta, self.hparams.level)
            losses.append(loss)
            accuracies.append(accuracy)
        return losses, torch.stack(accuracies).mean()

    def on_fit_start(self) -> None:
        """Checks the run's setup; seeds the DPO noise (or, resuming, restores its stream); a fit that does not
        resume from a checkpoint forgets any round a loaded model carries (drawn by another policy)."""
        super().on_fit_start()
        trainer = self.trainer
        if self.losses_per_pair() > 1 and (trainer.world_size > 1 or str(trainer.precision).startswith("16")):
            raise ConfigError(f"method 'pareto' combines per-objective gradients by hand (PCGrad) and supports one "
                              f"process at 32-bit or bf16 precision; got world_size={trainer.world_size}, "
                              f"precision={trainer.precision}")
        if self.hparams.temperature_start != self.hparams.temperature_end and (trainer.max_epochs or -1) < 1:
            raise ConfigError("the temperature schedule runs over trainer.max_epochs rounds; set max_epochs "
                              f"(got {trainer.max_epochs}) or make temperature_start equal temperature_end")
        self._generator = torch.Generator().manual_seed(self.hparams.seed)
        if trainer.ckpt_path is None:
            self._round = None
        elif self._generator_state is not None:
            self._generator.set_state(self._generator_state)
        self._generator_state = None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        for _ in range(1 if self.trainer.fast_dev_run else self.hparams.passes):  # a dry run: one step
            values = self.update(batch)
        if values is not None:
            self.log_train(batch_idx, **values)

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """One optimizer step on the batch's pairs (module docstring, step 4); the logged values."""
        optimizer = self.optimizers()
        found = self.dpo_losses(batch, self._generator)
        if found is None:
            return None
        losses, accuracy = found
        params = [p for p in self.policy.network.parameters() if p.requires_grad]
        native = None
        if self.hparams.native_weight > 0:
            native = self.policy.total(self.policy(batch, generator=self._generator))
        optimizer.zero_grad()
        if len(losses) == 1:
            total = losses[0] + (self.hparams.native_weight * native if native is not None else 0)
            self.manual_backward(total)
        else:
            grads = [torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True) for loss in losses]
            grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)] for gs in grads]
            for p, g in zip(params, pcgrad(grads)):
                p.grad = g
            if native is not None:
                for p, g in zip(params, torch.autograd.grad(self.hparams.native_weight * native, params,
                                                            allow_unused=True)):
                    if g is not None:
                        p.grad = p.grad + g
        if self.hparams.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        values = {"loss": torch.stack(losses).sum().detach(), "accuracy": accuracy}
        for name, loss in zip(self.objectives if len(losses) > 1 else ["dpo"], losses):
            values[f"loss_{name}"] = loss.detach()
        if native is not None:
            values["native"] = native.detach()
        return values

    def configure_optimizers(self):
        return torch.optim.AdamW([p for p in self.policy.network.parameters() if p.requires_grad],
                                 lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # -- evaluation --------------------------------------------------------------------------------------
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """The stage-2 denoising loss of the held-out native loops (how far alignment moved the model)."""
        losses = self.policy(batch, generator=torch.Generator().manual_seed(batch_idx))
        self.log("val/loss", self.policy.total(losses), on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["aa"]), sync_dist=True)

    def on_test_epoch_start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.hparams.seed)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        n = 1 if self.trainer.fast_dev_run else self.hparams.num_samples
        steps = min(5, self.hparams.test_steps) if self.trainer.fast_dev_run else self.hparams.test_steps
        native, designed, design = self.policy.design(batch, n, self._generator, steps=steps)
        repeated = {k: v.repeat_interleave(n, 0) for k, v in batch.items()}
        values = self.policy.evaluate(native, designed, design, repeated)
        for b in range(len(batch["aa"])):
            part = LoopState(*(x[b * n:(b + 1) * n] for x in (designed.aa, designed.pos, designed.rot)))
            energy = self.score({k: v[b] for k, v in batch.items()}, part)
            for name in ENERGIES:
                self.log(f"test/{name}", energy[name].float().mean(), on_step=False, on_epoch=True, batch_size=1)
        for name, value in values.items():
            if value is not None:
                self.log(f"test/{name}", value.float().mean(), on_step=False, on_epoch=True,
                         batch_size=len(batch["aa"]), sync_dist=True)

