"""AlignAb stage 2: LM-guided sequence-structure co-design of a CDR loop (DiffAb-style diffusion,
``codesign_diffusion``; IPA network, ``codesign_network``), as a LightningModule.

Training (``ComplexDataModule`` in design mode: one patch per complex and CDR, split by complex): a random
rigid motion of the whole patch (uniform rotation about the anchor centre, Gaussian translation jitter), a
timestep ``t ~ U{1..T}`` per patch, the loop noised by Eqs. (2), (4), (6) and the loss
``L = L_pos + L_rot + L_seq + w_ce L_ce`` (DiffAb's three terms with equal weights, plus D3PM's auxiliary
cross-entropy of the predicted amino acids, weight ``seq_ce_weight``).

Evaluation (``test``): ``num_samples`` designs of the held-out loops by ancestral sampling; amino-acid
recovery (AAR) and C-alpha RMSD after superposition on the antibody framework of the patch
(``zoo.alignab.metrics``), beside two baselines drawn in the same pass: uniform random sequences on the native
backbone and, with an LM, the LM alone filling the masked loop (argmax of its MLM head).

``predict``: ``num_designs`` designs per complex, each written as a full PDB (the rest of the complex unchanged;
designed residues get N, CA, C from their frames and O in the peptide plane; side chains by FASPR when
``pack_side_chains`` and the ``pyfaspr`` package is installed, else backbone only) plus ``designs.fasta`` and
``designs.csv`` with AAR, RMSD and the energy PROXY (``zoo.alignab.energy``, not Rosetta).
"""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from data_modules.complexes import CDR_NAMES, Complex, local_frames, read_pdb_complex, write_pdb
from data_modules.residues import AMINO_ACIDS, SPECIAL_TOKENS
from zoo.alignab.codesign_diffusion import NUM_TYPES, LoopDiffusion, LoopState
from zoo.alignab.codesign_network import CoDesignNetwork, PairCache
from zoo.alignab.metrics import framework_rmsd, recovery
from zoo.alignab.so3 import backbone_from_frames, place_oxygen, random_rotations
from zoo.core.errors import ConfigError, ShapeError
from zoo.core.module import ZooModule

CODESIGN_SIZES = {
    "tiny": {"dim": 32, "pair_dim": 16, "depth": 2, "heads": 4},
    "small": {"dim": 64, "pair_dim": 32, "depth": 3, "heads": 4},
    "base": {"dim": 128, "pair_dim": 64, "depth": 6, "heads": 8},  # DiffAb's widths and depth
}
FIELDS = ("aa", "coords", "residue_mask", "role", "cdr", "epitope", "chain", "resseq", "design", "lm_tokens",
          "lm_index")


def faspr_binary() -> Path | None:
    """The FASPR executable that the ``pyfaspr`` package builds at install, or None."""
    try:
        import pyfaspr
    except ImportError:
        return None
    path = Path(pyfaspr.__file__).parent / "bin" / "FASPR"
    return path if path.is_file() else None


class CoDesignDiffusion(ZooModule):
    """Diffusion co-design of a CDR loop's sequence and structure given the rest of the patch.

    Args:
        size: ``tiny``, ``small``, ``base`` (``CODESIGN_SIZES``) or ``custom`` (``dim``, ``pair_dim``, ``depth``,
            ``heads``).
        num_steps, rot_scale, pos_clip: diffusion steps; the IGSO3 scale at ``t = T``; the largest ``x0^`` in
            sampling, in units of 10 A (``LoopDiffusion``).
        seq_ce_weight: weight of the auxiliary cross-entropy on the predicted amino acids (0: DiffAb's loss).
        lm_guidance: inject the stage-1 LM's per-residue embeddings of the masked context (``lm_name`` from the
            registry, frozen); false is the ablation.
        max_loop_length: the longest loop the model designs (longer ones are refused with one line).
        augment, translation_jitter: random rigid motion of each training patch; jitter std in A.
        lr, weight_decay: AdamW under a cosine schedule.
        num_samples: designs per held-out loop in ``test``; ``num_designs`` per complex in ``predict``.
        sample_steps: reverse steps of sampling (0: all ``num_steps``; fewer: respaced jumps). A dry run
            (``fast_dev_run``) checks the path only: one design per loop, 5 steps.
        sample_seed: seed of the sampling generator (``test`` and ``predict`` are reproducible).
        pack_side_chains: pack designed side chains with FASPR in ``predict`` if ``pyfaspr`` is installed.
    """

    def __init__(self, size: str = "small", dim: int = 64, pair_dim: int = 32, depth: int = 3, heads: int = 4,
                 num_steps: int = 100, rot_scale: float = 2.0, pos_clip: float = 3.0, seq_ce_weight: float = 1.0,
                 lm_guidance: bool = True,
                 lm_name: str = "alignab-lm-oas", max_loop_length: int = 30, augment: bool = True,
                 translation_jitter: float = 1.0, lr: float = 0.001, weight_decay: float = 0.0, num_samples: int = 4,
                 num_designs: int = 4, sample_steps: int = 0, sample_seed: int = 0, pack_side_chains: bool = True
                 ) -> None:
        super().__init__()
        if size not in (*CODESIGN_SIZES, "custom"):
            raise ConfigError(f"CoDesignDiffusion size must be one of {(*CODESIGN_SIZES, 'custom')}, got {size!r}")
        for name, value in (("num_samples", num_samples), ("num_designs", num_designs),
                            ("max_loop_length", max_loop_length)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not 0 <= sample_steps <= num_steps:
            raise ConfigError(f"sample_steps must be in [0, num_steps={num_steps}] (0: all), got {sample_steps}")
        self.save_hyperparameters()
        shape = CODESIGN_SIZES.get(size, {"dim": dim, "pair_dim": pair_dim, "depth": depth, "heads": heads})
        self.lm = None
        if lm_guidance:
            from zoo.core.registry import load_pretrained

            lm = load_pretrained(lm_name)
            lm.requires_grad_(False)
            self.lm = lm.encoder
        lm_dim = self.lm.norm.normalized_shape[0] if self.lm is not None else 0
        self.network = CoDesignNetwork(**shape, num_steps=num_steps, lm_dim=lm_dim)
        self.diffusion = LoopDiffusion(num_steps, rot_scale, pos_clip)
        self._generator: torch.Generator | None = None
        self._designs: list[dict] = []

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lm is not None:
            self.lm.eval()  # frozen: no dropout
        return self

    # -- inputs -------------------------------------------------------------------------------------------
    def inputs(self, batch: dict[str, Tensor], augment: bool = False, generator: torch.Generator | None = None
               ) -> tuple[LoopState, Tensor, dict[str, Tensor]]:
        """The native state (types, C-alpha / 10 A, frames), the design mask and the network's conditioning
        (role, CDR, flags, chain, resseq, residue mask, LM embeddings) of a design-mode batch."""
        missing = [k for k in FIELDS if k not in batch]
        if missing:
            raise ShapeError(f"CoDesignDiffusion needs a ComplexDataModule batch in design mode (design_cdrs set); "
                             f"missing fields {missing}")
        coords, mask = batch["coords"], batch["residue_mask"]
        self.check_shape("coords", coords, [None, None, 14, 3])
        rot = local_frames(coords[..., 0, :], coords[..., 1, :], coords[..., 2, :])
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        rot = torch.where(mask[..., None, None], rot, eye)
        pos = coords[..., 1, :] / 10
        if augment:
            b = len(coords)
            turn = random_rotations((b,), generator, coords.dtype).to(coords.device)
            shift = torch.randn(b, 1, 3, generator=generator, dtype=coords.dtype).to(coords.device)
            pos = pos @ turn.transpose(-1, -2) + shift * self.hparams.translation_jitter / 10
            rot = turn[:, None] @ rot
        design = batch["design"] & mask
        lengths = design.sum(-1)
        if (lengths > self.hparams.max_loop_length).any():
            raise ShapeError(f"a loop of {int(lengths.max())} residues is longer than max_loop_length="
                             f"{self.hparams.max_loop_length}")
        cond = {k: batch[k] for k in ("role", "cdr", "epitope", "chain", "resseq")}
        cond.update(design=design, mask=mask, lm=self.lm_embeddings(batch) if self.lm is not None else None)
        return LoopState(batch["aa"].clamp(max=NUM_TYPES), pos, rot), design, cond

    def lm_embeddings(self, batch: dict[str, Tensor]) -> Tensor:
        """The frozen LM's embeddings ``[B, K, lm_dim]`` of each patch residue in its masked antibody chain."""
        tokens, index = batch["lm_tokens"], batch["lm_index"]
        b, chains, length = tokens.shape
        with torch.no_grad():
            embedded = self.lm.embed(tokens.reshape(b * chains, length)).reshape(b, chains * length, -1)
        picked = embedded.gather(1, index.clamp_min(0)[..., None].expand(-1, -1, embedded.shape[-1]))
        return picked * (index >= 0)[..., None]

    def lm_fill(self, batch: dict[str, Tensor]) -> Tensor:
        """The LM-alone baseline: the argmax amino acid of the LM's MLM head at every masked loop residue
        ``[B, K]`` (sequence only; -1 outside the loop)."""
        if self.lm is None:
            raise ConfigError("lm_fill needs the LM (lm_guidance=true)")
        tokens, index = batch["lm_tokens"], batch["lm_index"]
        b, chains, length = tokens.shape
        with torch.no_grad():
            logits = self.lm(tokens.reshape(b * chains, length)).reshape(b, chains * length, -1)
        first = len(SPECIAL_TOKENS)  # the tokenizer's first residue id; residues follow in AMINO_ACIDS order
        best = logits[..., first:first + NUM_TYPES].argmax(-1)
        picked = best.gather(1, index.clamp_min(0))
        return torch.where(batch["design"] & (index >= 0), picked, torch.full_like(picked, -1))

    def network_fn(self, cond: dict[str, Tensor], cache: bool = True):
        """``(state, t) -> (eps^, R0^, logits)`` on the conditioning ``cond``. With ``cache`` the closure keeps
        the pair features of its previous call (``PairCache``: in sampling only the loop moves between calls, so
        only its rows and columns are recomputed; while autograd records every call computes all)."""
        pair_cache = PairCache() if cache else None
        return lambda state, t: self.network(state.aa, state.rot, state.pos, t, **cond, pair_cache=pair_cache)

    # -- training ----------------------------------------------------------------------------------------
    def denoise(self, batch: dict[str, Tensor], t: Tensor | None = None, generator: torch.Generator | None = None,
                augment: bool = False) -> tuple[Tensor, Tensor, Tensor, dict]:
        """The network's ``(eps^, R0^, logits)`` on the batch's loops noised at ``t [B]`` (drawn when not given),
        with what the losses need (``state0``, ``noisy``, ``eps``, ``t``, ``design``)."""
        state0, design, cond = self.inputs(batch, augment, generator)
        if t is None:
            t = torch.randint(1, self.diffusion.num_steps + 1, (len(design),), generator=generator)
        t = t.to(design.device)
        noisy, eps = self.diffusion.add_noise(state0, design, t, generator)
        eps_pred, rot_pred, logits = self.network_fn(cond)(noisy, t)
        return eps_pred, rot_pred, logits, {"state0": state0, "noisy": noisy, "eps": eps, "t": t, "design": design}

    def forward(self, batch: dict[str, Tensor], t: Tensor | None = None, generator: torch.Generator | None = None,
                augment: bool = False) -> dict[str, Tensor]:
        """The three losses of the batch noised at ``t [B]`` (drawn when not given)."""
        eps_pred, rot_pred, logits, target = self.denoise(batch, t, generator, augment)
        return self.diffusion.losses(target["state0"], target["noisy"], target["eps"], target["t"], eps_pred,
                                     rot_pred, logits, target["design"])

    def total(self, losses: dict[str, Tensor]) -> Tensor:
        return losses["pos"] + losses["rot"] + losses["seq"] + self.hparams.seq_ce_weight * losses["seq_ce"]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self(batch, augment=self.hparams.augment)
        loss = self.total(losses)
        self.log_train(batch_idx, loss=loss, **losses)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        generator = torch.Generator().manual_seed(batch_idx)  # the same timesteps and noise every epoch
        losses = self(batch, generator=generator)
        losses["loss"] = self.total(losses)
        for name, value in losses.items():
            self.log(f"val/{name}", value, on_step=False, on_epoch=True, prog_bar=name == "loss",
                     batch_size=len(batch["aa"]), sync_dist=True)

    # -- sampling ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def design(self, batch: dict[str, Tensor], num: int = 1, generator: torch.Generator | None = None,
               progress: bool = False, steps: int | None = None, temperature: float = 1.0
               ) -> tuple[LoopState, LoopState, Tensor]:
        """``num`` designs per patch: ``(native, designed, design mask)``, each ``[B * num, ...]`` (the designs
        of patch b are rows ``b * num ... b * num + num - 1``), over ``steps`` reverse steps (default
        ``sample_steps``) at sampling ``temperature`` (``LoopDiffusion.sample``)."""
        batch = {k: v.repeat_interleave(num, 0) for k, v in batch.items()}
        state0, design, cond = self.inputs(batch)
        steps = steps or self.hparams.sample_steps or None
        designed = self.diffusion.sample(self.network_fn(cond), state0, design, generator, progress, steps,
                                         temperature)
        return state0, designed, design

    def _sampling(self, num: int) -> tuple[int, int | None]:
        """Designs per loop and steps: a dry run (``fast_dev_run``) checks the path only, 1 design, 5 steps."""
        if self.trainer.fast_dev_run:
            return 1, min(5, self.diffusion.num_steps)
        return num, None

    def evaluate(self, native: LoopState, designed: LoopState, design: Tensor, batch: dict[str, Tensor]
                 ) -> dict[str, Tensor]:
        """Per design: AAR over the loop and C-alpha RMSD (A) after superposition on the antibody framework."""
        aar = recovery(designed.aa, native.aa, design) if design.any(-1).all() else None
        framework = (batch["role"] < 2) & batch["residue_mask"] & ~design
        rmsd = framework_rmsd(designed.pos * 10, native.pos * 10, framework, design)
        return {"aar": aar, "rmsd": rmsd}

    def on_test_epoch_start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.hparams.sample_seed)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        n, steps = self._sampling(self.hparams.num_samples)
        size = len(batch["aa"])
        native, designed, design = self.design(batch, n, self._generator, steps=steps)
        scores = self.evaluate(native, designed, design, {k: v.repeat_interleave(n, 0) for k, v in batch.items()})
        random_aa = torch.randint(0, NUM_TYPES, design.shape, generator=self._generator).to(design.device)
        values = {"aar": scores["aar"], "rmsd": scores["rmsd"], "aar_random": recovery(random_aa, native.aa, design)}
        if self.lm is not None:
            values["aar_lm"] = recovery(self.lm_fill(batch), native.aa[::n], design[::n])
        for name, value in values.items():
            self.log(f"test/{name}", value.float().mean(), on_step=False, on_epoch=True, batch_size=size,
                     sync_dist=True)
        generator = torch.Generator().manual_seed(batch_idx)
        losses = self(batch, generator=generator)
        self.log("test/loss", self.total(losses), on_step=False, on_epoch=True,
                 batch_size=size, sync_dist=True)

    # -- predict: PDB and FASTA files, energies ----------------------------------------------------------
    def on_predict_epoch_start(self) -> None:
        self._generator = torch.Generator().manual_seed(self.hparams.sample_seed)
        self._designs.clear()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> list[dict]:
        """``num_designs`` designs of every patch, written to ``<log dir>/designs/``; one record per design."""
        folder = self.output_path("designs", per_rank=False)
        complexes = self.trainer.datamodule.complexes
        records = []
        for b in range(len(batch["aa"])):
            one = {k: v[b:b + 1] for k, v in batch.items()}
            complex_ = complexes[int(one["complex"][0, 0])]
            loop_name = CDR_NAMES[int(one["loop"][0, 0]) - 1]
            length = int((one["design"] & one["residue_mask"]).sum())
            if length > self.hparams.max_loop_length:
                print(f"skipped {complex_.name} CDR-{loop_name}: loop of {length} residues is longer than "
                      f"max_loop_length={self.hparams.max_loop_length}")
                continue
            num, steps = self._sampling(self.hparams.num_designs)
            native, designed, design = self.design(one, num, self._generator, steps=steps)
            scores = self.evaluate(native, designed, design,
                                   {k: v.repeat_interleave(len(design), 0) for k, v in one.items()})
            for i in range(len(design)):
                record = self.write_design(folder, complex_, loop_name, i, one, designed, design, scores)
                records.append(record)
        self._designs.extend(records)
        return records

    def write_design(self, folder: Path, complex_: Complex, loop_name: str, i: int, one: dict[str, Tensor],
                     designed: LoopState, design: Tensor, scores: dict[str, Tensor]) -> dict:
        """Write design ``i`` of a patch into the full complex as PDB; return its record."""
        index = one["index"][0][design[i]].cpu()
        rot, ca = designed.rot[i][design[i]].cpu().float(), (designed.pos[i][design[i]] * 10 + one["origin"][0]).cpu()
        coords, atom_mask = complex_.coords.clone(), complex_.atom_mask.clone()
        coords[index, :3] = backbone_from_frames(rot, ca)
        atom_mask[index] = False
        atom_mask[index, :4] = True
        for j in index.tolist():
            following = j + 1 if j + 1 < len(complex_) and complex_.chain[j + 1] == complex_.chain[j] else j
            coords[j, 3] = place_oxygen(coords[j, 1], coords[j, 2], coords[following, 0])
        sequence = list(complex_.sequence())
        for j, a in zip(index.tolist(), designed.aa[i][design[i]].tolist()):
            sequence[j] = AMINO_ACIDS[a]
        sequence = "".join(sequence)
        path = folder / f"{complex_.name}_{loop_name}_{i:03d}.pdb"
        write_pdb(complex_, path, sequence, coords, atom_mask)
        packed = self.hparams.pack_side_chains and self.pack(path, complex_, index)
        loop = "".join(sequence[j] for j in index.tolist())
        return {"complex": complex_.name, "cdr": loop_name, "design": i, "sequence": loop,
                "native": complex_.sequence(torch.isin(torch.arange(len(complex_)), index)),
                "aar": float(scores["aar"][i]), "rmsd": float(scores["rmsd"][i]), "side_chains": bool(packed),
                "pdb": path.name, "index": index.tolist()}

    @staticmethod
    def pack(path: Path, complex_: Complex, index: Tensor) -> bool:
        """Side chains of the residues ``index`` by FASPR (Huang et al. 2020) on the whole design; every other
        residue keeps its crystal atoms. False (file unchanged) without ``pyfaspr`` or when FASPR fails."""
        binary = faspr_binary()
        if binary is None:
            return False
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "packed.pdb"
            shutil.copy(path, Path(tmp) / "in.pdb")
            result = subprocess.run([str(binary), "-i", "in.pdb", "-o", out.name], cwd=tmp, capture_output=True,
                                    timeout=300)
            if result.returncode != 0 or not out.is_file():
                return False
            packed = read_pdb_complex(out, complex_)
        design = read_pdb_complex(path, complex_)
        coords, mask = design.coords.clone(), design.atom_mask.clone()
        coords[index], mask[index] = packed.coords[index], packed.atom_mask[index]
        write_pdb(design, path, design.sequence(), coords, mask)
        return True

    def on_predict_epoch_end(self) -> None:
        """``designs.fasta`` (designed loops), ``designs.csv`` (AAR, RMSD, energy proxy per design)."""
        from zoo.alignab.energy import score_complex

        folder = self.output_path("designs", per_rank=False)
        records, self._designs = self._designs, []
        if not records:
            return
        complexes = {c.name: c for c in self.trainer.datamodule.complexes}
        for record in records:
            complex_ = complexes[record["complex"]]
            design = read_pdb_complex(folder / record["pdb"], complex_)
            loop = torch.zeros(len(complex_), dtype=torch.bool)
            loop[record.pop("index")] = True
            energy = score_complex(design.coords, design.aa, design.atom_mask, design.chain, loop,
                                   complex_.antigen_mask)
            for name in ("cdr_ag_nonrep", "cdr_ag_rep", "cdr_total", "dg"):
                record[name] = float(getattr(energy, name)[0])
        with open(folder / "designs.fasta", "w") as f:
            for r in records:
                f.write(f">{r['complex']}_{r['cdr']}_{r['design']:03d} native={r['native']} aar={r['aar']:.3f} "
                        f"rmsd={r['rmsd']:.2f}\n{r['sequence']}\n")
        with open(folder / "designs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
        mean = {k: sum(r[k] for r in records) / len(records) for k in ("aar", "rmsd", "cdr_ag_rep", "cdr_ag_nonrep")}
        print(f"{len(records)} designs in {folder}: mean " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()
                                                                        if math.isfinite(v)))
