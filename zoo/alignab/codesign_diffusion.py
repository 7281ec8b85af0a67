"""AlignAb stage 2 / DiffAb (Luo et al. 2022, NeurIPS): the three diffusions of a designed loop, per residue its
amino acid, its C-alpha position and its frame orientation. Only residues with ``design`` true are noised or
sampled; every other residue is passed through untouched (``torch.where``), so the context stays bit-identical.

Timesteps ``t = 1, ..., T`` (``t = 0`` is the data). One cosine schedule (Nichol & Dhariwal 2021, DiffAb's
``s = 0.01``) serves all three:

    abar_t = f(t) / f(0),  f(t) = cos^2((t / T + s) / (1 + s) pi / 2),   beta_t = min(1 - abar_t / abar_{t-1}, 0.999)  (1)

with ``abar_t`` recomputed as ``prod_{s <= t} (1 - beta_s)`` after the clip, and the Gaussian posterior
variance ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (0 at ``t = 1``).

Amino acids, multinomial diffusion over K = 20 types (Hoogeboom et al. 2021; DiffAb section 3.2):

    q(x_t | x_0) = Cat(abar_t x_0 + (1 - abar_t) / K)                                                          (2)
    q(x_{t-1} | x_t, x_0) = Cat(theta / sum theta),
        theta = (alpha_t x_t + (1 - alpha_t) / K) * (abar_{t-1} x_0 + (1 - abar_{t-1}) / K)                  (3)

(``x`` one-hot, or a probability vector for the model's ``x_0``). Loss: KL(q(.|x_t, x_0) || q(.|x_t, x0^)).

C-alpha positions, Gaussian DDPM (Ho et al. 2020) on coordinates / 10 A, centred on the loop's anchors:

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps                                                               (4)
    x_{t-1} = c0_t x0^ + ct_t x_t + sqrt(beta~_t) z,   x0^ = clip((x_t - sqrt(1 - abar_t) eps^) / sqrt(abar_t))     (5)
    c0_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t),   ct_t = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)

(Ho et al. Eqs. 6-7). Unclipped, (5) is DiffAb's ``(x_t - beta_t / sqrt(1 - abar_t) eps^) / sqrt(alpha_t)``;
``clip`` shortens each residue's ``x0^`` to at most ``pos_clip`` (3 = 30 A from the anchor centre, beyond any
CDR loop here), as DDPM clips images to [-1, 1]. It replaces DiffAb's floor of ``alpha_T`` at ``alpha_{T-1}``:
the clipped ``beta_T = 0.999`` makes ``1 / sqrt(alpha_T)`` about 32, and without either fix an early error in
``eps^`` is amplified; a trained model here drifted a few designs out to 30-160 A without the clip. Sampling may
skip steps: a jump ``t -> s`` uses ``abar_t / abar_s`` for ``alpha_t`` in (3) and (5) and the composed
posterior, ``c0 = sqrt(abar_s)(1 - abar_t / abar_s) / (1 - abar_t)``, ``ct = sqrt(abar_t / abar_s)(1 - abar_s) /
(1 - abar_t)``, variance ``(1 - abar_t / abar_s)(1 - abar_s) / (1 - abar_t)``. The noise is isotropic, so drawing it in the global frame or in a residue's
local frame is the same distribution; the network predicts ``eps`` in the residue's (noisy) local frame and
the module rotates it to the global frame (DiffAb's choice), which makes the prediction rotation-equivariant.

Orientations, IGSO3 diffusion (``zoo.alignab.so3``), variance-exploding with scale
``eps_t = rot_scale sqrt(1 - abar_t)`` (``rot_scale = 2``: IGSO3(2) is within 2 % of uniform, where sampling
starts):

    R_t = E R_0,   E ~ IGSO3(eps_t)                                                                             (6)
    R_{t-1} = E' exp(lambda_t log(R_t R0^^T)) R0^,   lambda_t = eps_{t-1}^2 / eps_t^2,
        E' ~ IGSO3(eps_{t-1} sqrt(1 - lambda_t))                                                                (7)

(7) is the Brownian bridge of the heat kernel: the geodesic from the network's ``R0^`` toward ``R_t`` at the
fraction ``lambda_t``, with the bridge's variance (exact for the Euclidean analogue, the small-angle limit
here). Both (6) and (7) commute with a global rotation. DiffAb instead shrinks ``R_0`` toward the identity in
the forward process (``exp(sqrt(abar_t) log R_0)``) and steps to ``E' R0^``; the change is deliberate and
stated in docs/alignab.md. The orientation loss is DiffAb's ``3 - tr(R0^^T R_0)`` (``so3.rotation_loss``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.alignab.so3 import IGSO3, random_rotations, rotation_loss, so3_exp, so3_log
from zoo.core.errors import ConfigError

NUM_TYPES = 20


def cosine_schedule(num_steps: int, s: float = 0.01, max_beta: float = 0.999) -> dict[str, Tensor]:
    """Eq. (1) as float64 tables indexed by ``t = 0, ..., T``: ``betas`` (``beta_0 = 0``), ``alphas``,
    ``alpha_bars`` (``abar_0 = 1``) and ``posterior_variance`` (``beta~_0 = beta~_1 = 0``)."""
    if num_steps < 2:
        raise ConfigError(f"num_steps must be >= 2, got {num_steps}")
    u = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((u / num_steps + s) / (1 + s) * math.pi / 2) ** 2
    raw = f / f[0]
    betas = torch.cat([raw.new_zeros(1), (1 - raw[1:] / raw[:-1]).clamp(max=max_beta)])
    alphas = 1 - betas
    alpha_bars = torch.cumprod(alphas, 0)
    variance = torch.zeros_like(betas)
    variance[1:] = betas[1:] * (1 - alpha_bars[:-1]) / (1 - alpha_bars[1:])
    return {"betas": betas, "alphas": alphas, "alpha_bars": alpha_bars, "posterior_variance": variance}


def _at(table: Tensor, t: Tensor, like: Tensor, trailing: int) -> Tensor:
    """``table[t]`` ``[B]`` in ``like``'s dtype, shaped ``[B, 1, ..., 1]`` with ``trailing`` ones."""
    return table[t].to(dtype=like.dtype, device=like.device).view(-1, *[1] * trailing)


@dataclass
class LoopState:
    """A batch of patches at one diffusion step: amino acids ``aa [B, K]`` (long), positions ``pos [B, K, 3]``
    (A / 10) and orientations ``rot [B, K, 3, 3]``."""

    aa: Tensor
    pos: Tensor
    rot: Tensor


class LoopDiffusion(nn.Module):
    """Eqs. (1)-(7) for ``num_steps`` steps; the tables are non-persistent buffers rebuilt from the arguments."""

    def __init__(self, num_steps: int = 100, rot_scale: float = 2.0, pos_clip: float = 3.0,
                 igso3_points: int = 2048) -> None:
        super().__init__()
        if not rot_scale > 0:
            raise ConfigError(f"rot_scale must be > 0, got {rot_scale}")
        if not pos_clip > 0:
            raise ConfigError(f"pos_clip must be > 0 (units of 10 A), got {pos_clip}")
        self.num_steps, self.rot_scale, self.pos_clip = num_steps, rot_scale, pos_clip
        tables = cosine_schedule(num_steps)
        tables["rot_eps"] = rot_scale * (1 - tables["alpha_bars"]).sqrt()  # eps_0 = 0
        for name, table in tables.items():
            self.register_buffer(name, table, persistent=False)
        self.igso3 = IGSO3(tables["rot_eps"][1:].tolist(), igso3_points)  # index t - 1: the forward scale eps_t
        self.igso3_points = igso3_points
        self._bridges: dict[tuple[int, int], IGSO3] = {}

    # -- amino acids, Eqs. (2)-(3) -----------------------------------------------------------------------
    def seq_marginal(self, x0: Tensor, t: Tensor) -> Tensor:
        """Eq. (2): ``q(x_t | x_0)`` ``[B, K, 20]`` from ``x_0`` probabilities ``[B, K, 20]`` and ``t [B]``."""
        abar = _at(self.alpha_bars, t, x0, 2)
        return abar * x0 + (1 - abar) / NUM_TYPES

    def seq_posterior(self, xt: Tensor, x0: Tensor, t: Tensor, s: Tensor | None = None) -> Tensor:
        """Eq. (3): ``q(x_s | x_t, x_0)`` ``[B, K, 20]`` from types ``xt [B, K]`` and ``x_0`` probabilities,
        ``s = t - 1`` by default; for ``s < t - 1`` (respaced sampling) ``alpha_t`` becomes ``abar_t / abar_s``."""
        s = t - 1 if s is None else s
        abar_s = _at(self.alpha_bars, s, x0, 2)
        alpha = _at(self.alpha_bars, t, x0, 2) / abar_s
        onehot = F.one_hot(xt.clamp(max=NUM_TYPES - 1), NUM_TYPES).to(x0)
        theta = (alpha * onehot + (1 - alpha) / NUM_TYPES) * (abar_s * x0 + (1 - abar_s) / NUM_TYPES)
        return theta / theta.sum(-1, keepdim=True)

    @staticmethod
    def _categorical(probs: Tensor, generator: torch.Generator | None) -> Tensor:
        flat = probs.reshape(-1, probs.shape[-1]).double().cpu()
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1]).to(probs.device)

    # -- the forward process, Eqs. (2), (4), (6) ---------------------------------------------------------
    def add_noise(self, state: LoopState, design: Tensor, t: Tensor, generator: torch.Generator | None = None
                  ) -> tuple[LoopState, Tensor]:
        """A draw of the noisy state at ``t [B]`` (design residues only) and the position noise ``eps [B, K, 3]``."""
        onehot = F.one_hot(state.aa.clamp(max=NUM_TYPES - 1), NUM_TYPES).to(state.pos)
        aa = torch.where(design, self._categorical(self.seq_marginal(onehot, t), generator), state.aa)
        eps = torch.randn(state.pos.shape, generator=generator, dtype=state.pos.dtype).to(state.pos.device)
        eps = eps * design[..., None]
        abar = _at(self.alpha_bars, t, state.pos, 2)
        pos = torch.where(design[..., None], abar.sqrt() * state.pos + (1 - abar).sqrt() * eps, state.pos)
        index = (t - 1)[:, None].expand(design.shape).to(self.igso3.cdf.device)
        noise = so3_exp(self.igso3.sample(index, generator, torch.float64)).to(state.rot)
        rot = torch.where(design[..., None, None], noise @ state.rot, state.rot)
        return LoopState(aa, pos, rot), eps

    # -- losses -------------------------------------------------------------------------------------------
    def residue_losses(self, state0: LoopState, noisy: LoopState, eps: Tensor, t: Tensor, eps_pred: Tensor,
                       rot_pred: Tensor, logits: Tensor) -> dict[str, Tensor]:
        """The terms of :meth:`losses` per residue, ``[B, K]`` each, before masking: the position-noise squared
        error (summed over x, y, z), the rotation loss, the sequence-posterior KL and the cross-entropy of the
        predicted ``x_0`` (the per-residue, per-component errors the Diffusion-DPO loss compares)."""
        pos = ((eps_pred - eps) ** 2).sum(-1)
        rot = rotation_loss(rot_pred, state0.rot)
        x0 = F.one_hot(state0.aa.clamp(max=NUM_TYPES - 1), NUM_TYPES).to(logits.dtype)
        true = self.seq_posterior(noisy.aa, x0, t)
        pred = self.seq_posterior(noisy.aa, logits.softmax(-1), t)
        kl = (true * (true.clamp_min(1e-30).log() - pred.clamp_min(1e-30).log())).sum(-1)
        ce = -(x0 * logits.log_softmax(-1)).sum(-1)
        return {"pos": pos, "rot": rot, "seq": kl, "seq_ce": ce}

    def losses(self, state0: LoopState, noisy: LoopState, eps: Tensor, t: Tensor, eps_pred: Tensor,
               rot_pred: Tensor, logits: Tensor, design: Tensor) -> dict[str, Tensor]:
        """Per-residue means over the design residues of the position-noise MSE (summed over x, y, z), the
        rotation loss, the KL between the true and the predicted sequence posteriors (DiffAb's three terms;
        at ``t = 1`` the posterior is ``x_0`` itself) and ``seq_ce``, the cross-entropy of the predicted ``x_0``
        (the auxiliary term of D3PM, Austin et al. 2021: the one-step KL is small and slow to learn from)."""
        terms = self.residue_losses(state0, noisy, eps, t, eps_pred, rot_pred, logits)
        weight = design.to(eps.dtype)
        count = weight.sum().clamp_min(1)
        known = weight * (state0.aa < NUM_TYPES)
        known_count = known.sum().clamp_min(1)
        return {"pos": (terms["pos"] * weight).sum() / count, "rot": (terms["rot"] * weight).sum() / count,
                "seq": (terms["seq"] * known).sum() / known_count, "seq_ce": (terms["seq_ce"] * known).sum() / known_count}

    # -- the reverse process, Eqs. (3), (5), (7) ---------------------------------------------------------
    def bridge_noise(self, t: int, s: int, shape: tuple[int, ...], generator: torch.Generator | None = None
                     ) -> Tensor:
        """Rotation vectors ``[*shape, 3]`` (float64) of Eq. (7)'s noise for the jump ``t -> s``: IGSO3 of scale
        ``eps_s sqrt(1 - eps_s^2 / eps_t^2)`` (zero at ``s = 0``); its angle table is built once per jump."""
        if s == 0:
            return torch.zeros(*shape, 3, dtype=torch.float64)
        if (t, s) not in self._bridges:
            eps_t, eps_s = float(self.rot_eps[t]), float(self.rot_eps[s])
            self._bridges[(t, s)] = IGSO3([eps_s * math.sqrt(max(1 - eps_s**2 / eps_t**2, 0.0))], self.igso3_points)
        return self._bridges[(t, s)].sample(torch.zeros(shape, dtype=torch.long), generator, torch.float64)

    def pos_posterior(self, xt: Tensor, eps_pred: Tensor, t: int, s: int) -> tuple[Tensor, float]:
        """Eq. (5) for the jump ``t -> s``: the mean and variance of ``q(x_s | x_t, x0^)``, ``x0^`` from the
        predicted noise, each residue's clipped to length ``pos_clip``."""
        abar_t, abar_s = float(self.alpha_bars[t]), float(self.alpha_bars[s])
        alpha = abar_t / abar_s
        x0 = (xt - math.sqrt(1 - abar_t) * eps_pred) / math.sqrt(abar_t)
        x0 = x0 * (self.pos_clip / x0.norm(dim=-1, keepdim=True).clamp_min(self.pos_clip))
        c0 = math.sqrt(abar_s) * (1 - alpha) / (1 - abar_t)
        ct = math.sqrt(alpha) * (1 - abar_s) / (1 - abar_t)
        return c0 * x0 + ct * xt, (1 - alpha) * (1 - abar_s) / (1 - abar_t)

    def step(self, state: LoopState, t: int, eps_pred: Tensor, rot_pred: Tensor, probs: Tensor, design: Tensor,
             generator: torch.Generator | None = None, s: int | None = None, temperature: float = 1.0) -> LoopState:
        """One reverse jump from ``t`` to ``s`` (``t - 1`` by default) for the design residues; the rest is
        returned as it came. A jump over several steps uses the composed transition, ``abar_t / abar_s`` in
        place of ``alpha_t`` (respaced sampling, Nichol & Dhariwal 2021 section 4). ``temperature`` scales the
        position noise and the rotation bridge's noise vector (``probs`` are already tempered by the caller);
        1 is the plain sampler, bit for bit."""
        s = t - 1 if s is None else s
        b = len(state.aa)
        tt = torch.full((b,), t, dtype=torch.long, device=state.aa.device)
        posterior = self.seq_posterior(state.aa, probs, tt, torch.full_like(tt, s))
        aa = torch.where(design, self._categorical(posterior, generator), state.aa)
        mean, variance = self.pos_posterior(state.pos, eps_pred, t, s)
        if s > 0:
            z = torch.randn(state.pos.shape, generator=generator, dtype=state.pos.dtype).to(state.pos.device)
            mean = mean + math.sqrt(variance) * temperature * z
        pos = torch.where(design[..., None], mean, state.pos)
        if s > 0:
            lam = float(self.rot_eps[s]) ** 2 / float(self.rot_eps[t]) ** 2
            relative = so3_log((state.rot @ rot_pred.transpose(-1, -2)).double())
            bridge = so3_exp(lam * relative) @ rot_pred.double()
            noise = self.bridge_noise(t, s, tuple(design.shape), generator).to(bridge.device) * temperature
            bridge = so3_exp(noise) @ bridge
        else:
            bridge = rot_pred
        rot = torch.where(design[..., None, None], bridge.to(state.rot), state.rot)
        return LoopState(aa, pos, rot)

    def sampling_timesteps(self, steps: int | None = None) -> list[int]:
        """``T = tau_S > ... > tau_1``, ``round(linspace(1, T, S))`` (all ``T`` steps by default), then 0."""
        steps = self.num_steps if steps is None else steps
        if not 1 <= steps <= self.num_steps:
            raise ConfigError(f"sampling steps must be in [1, {self.num_steps}] (num_steps), got {steps}")
        taus = torch.linspace(1, self.num_steps, steps, dtype=torch.float64).round().long().unique().tolist()
        return [*taus[::-1], 0]

    def initial(self, state: LoopState, design: Tensor, generator: torch.Generator | None = None) -> LoopState:
        """The start of sampling: design residues get uniform types, N(0, I) positions, uniform orientations."""
        shape = design.shape
        aa = torch.randint(0, NUM_TYPES, shape, generator=generator).to(state.aa.device)
        pos = torch.randn(*shape, 3, generator=generator, dtype=state.pos.dtype).to(state.pos.device)
        rot = random_rotations(shape, generator, state.rot.dtype).to(state.rot.device)
        return LoopState(torch.where(design, aa, state.aa), torch.where(design[..., None], pos, state.pos),
                         torch.where(design[..., None, None], rot, state.rot))

    @torch.no_grad()
    def sample(self, network: Callable[[LoopState, Tensor], tuple[Tensor, Tensor, Tensor]], state: LoopState,
               design: Tensor, generator: torch.Generator | None = None, progress: bool = False,
               steps: int | None = None, temperature: float = 1.0) -> LoopState:
        """Ancestral sampling from ``t = T`` down to 0 over ``steps`` respaced steps (all by default), at
        ``temperature`` (amino acids from ``softmax(logits / temperature)``, position and rotation noise scaled
        by it; AlignAb's temperature-scaled sampling; 1: the plain sampler).
        ``network(state, t [B])`` returns ``(eps [B, K, 3], R0^ [B, K, 3, 3], logits [B, K, 20])``; the design
        residues of ``state`` are replaced by draws first."""
        from tqdm.auto import tqdm

        if not temperature > 0:
            raise ConfigError(f"sampling temperature must be > 0, got {temperature}")
        state = self.initial(state, design, generator)
        taus = self.sampling_timesteps(steps)
        for t, s in tqdm(list(zip(taus[:-1], taus[1:])), desc="sampling", disable=not progress, leave=False):
            tt = torch.full((len(design),), t, dtype=torch.long, device=design.device)
            eps_pred, rot_pred, logits = network(state, tt)
            probs = (logits / temperature).softmax(-1) if temperature != 1.0 else logits.softmax(-1)
            state = self.step(state, t, eps_pred, rot_pred, probs, design, generator, s, temperature)
        return state
