"""The DiT modules' GPU-minded paths, checked on the CPU: ``compile`` (torch.compile of the denoiser),
fused AdamW only where every parameter is on CUDA, sampling loops without per-step host work that
give the very same samples as the loops they replaced, and the training loss computed once."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from tests.conftest import run_cli
from zoo.core.errors import ConfigError
from zoo.dit.conditional import ConditionalDiT
from zoo.dit.diffusion import GaussianDiffusion, _randn, guided
from zoo.dit.latent import LatentDiT
from zoo.dit.model import DiT
from zoo.dit.optim import adamw, fusable

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights drawn at random: the adaLN-Zero init outputs exactly zero, which would make any
    comparison of outputs vacuous."""
    generator = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


# -- the samplers as they were before per-step tensors and device reads were taken out ----------
def old_predict(d, model, x, t, abar, one_minus_abar, clip_x0, kwargs):
    out = model(x, torch.full((len(x),), t, device=x.device, dtype=torch.long), **kwargs)
    a, b = math.sqrt(abar), math.sqrt(one_minus_abar)
    x0 = d._x0(x, out, a, b)
    if not clip_x0:
        return x0, d._eps(x, out, a, b)
    x0 = x0.clamp(-1, 1)
    return x0, (x - a * x0) / b


def old_ddpm(d, model, shape, generator, clip_x0=False, **kwargs):
    x = d._start(shape, None, generator)
    names = ("betas", "alphas_cumprod", "one_minus_alphas_cumprod", "alphas_cumprod_prev", "posterior_variance")
    betas, abar, one_minus_abar, abar_prev, variance = (getattr(d, name).tolist() for name in names)
    for t in range(d.num_steps - 1, -1, -1):
        x0, _ = old_predict(d, model, x, t, abar[t], one_minus_abar[t], clip_x0, kwargs)
        c0 = math.sqrt(abar_prev[t]) * betas[t] / one_minus_abar[t]
        ct = math.sqrt(1 - betas[t]) * variance[t] / betas[t]
        x = c0 * x0 + ct * x
        if t > 0:
            x = x + math.sqrt(variance[t]) * _randn(x.shape, x.device, x.dtype, generator)
    return x


def old_ddim(d, model, shape, steps, eta, generator, clip_x0=False, **kwargs):
    taus = d.ddim_timesteps(steps)
    x = d._start(shape, None, generator)
    abar, one_minus_abar = d.alphas_cumprod.tolist(), d.one_minus_alphas_cumprod.tolist()
    log_abar = d.alphas_cumprod.log().tolist()
    for t, p in zip(taus[::-1], [*taus[-2::-1], None]):
        abar_p, one_minus_abar_p, log_abar_p = (1.0, 0.0, 0.0) if p is None else (abar[p], one_minus_abar[p], log_abar[p])
        x0, eps = old_predict(d, model, x, t, abar[t], one_minus_abar[t], clip_x0, kwargs)
        sigma = eta * math.sqrt(one_minus_abar_p / one_minus_abar[t] * -math.expm1(log_abar[t] - log_abar_p))
        x = math.sqrt(abar_p) * x0 + math.sqrt(max(one_minus_abar_p - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn(x.shape, x.device, x.dtype, generator)
    return x


@pytest.mark.parametrize("prediction, schedule", [("epsilon", "linear"), ("v", "cosine")])
@pytest.mark.parametrize("sampler, steps, eta, clip_x0", [
    ("ddpm", None, None, False), ("ddpm", None, None, True), ("ddim", 7, 0.0, True), ("ddim", 10, 1.0, False),
    ("ddim", 4, 0.5, True),
])
def test_samplers_give_bit_identical_samples_to_the_old_loops(prediction, schedule, sampler, steps, eta, clip_x0):
    d = GaussianDiffusion(num_steps=40, schedule=schedule, prediction=prediction)
    net = randomized(DiT(input_size=4, patch_size=2, in_channels=2, hidden_size=32, depth=2, num_heads=4,
                         num_classes=5)).eval()
    model, y, shape = guided(net, 2.5, net.null_class), torch.tensor([0, 4, 2]), (3, 2, 4, 4)
    if sampler == "ddpm":
        new = d.ddpm_sample(model, shape, generator=gen(3), clip_x0=clip_x0, y=y)
        old = old_ddpm(d, model, shape, gen(3), clip_x0=clip_x0, y=y)
    else:
        new = d.ddim_sample(model, shape, steps, eta=eta, generator=gen(3), clip_x0=clip_x0, y=y)
        old = old_ddim(d, model, shape, steps, eta, gen(3), clip_x0=clip_x0, y=y)
    assert new.abs().max() > 0.1  # a model that does something
    assert torch.equal(new, old)


def test_latent_dit_samples_are_bit_identical_to_the_old_loops():
    model = LatentDiT(ambient_dim=8, latent_dim=4, num_steps=30).eval()
    randomized(model.net, 1)
    assert torch.equal(model.diffusion.ddpm_sample(model, (5, 8), generator=gen(4)),
                       old_ddpm(model.diffusion, model, (5, 8), gen(4)))
    assert torch.equal(model.diffusion.ddim_sample(model, (5, 8), 6, generator=gen(4)),
                       old_ddim(model.diffusion, model, (5, 8), 6, 0.0, gen(4)))


def test_the_samplers_read_no_schedule_from_the_module_buffers(monkeypatch):
    """The per-call tables come from the CPU originals: a sampler never copies a buffer back from
    the device (on a GPU, each such read waits for the device)."""
    d = GaussianDiffusion(num_steps=12)
    for name in d._tables:
        d._buffers[name] = torch.full_like(d._buffers[name], float("nan"))  # would poison any read
    x = d.ddim_sample(lambda x, t: torch.zeros_like(x), (2, 3), 4, generator=gen(5))
    x = x + d.ddpm_sample(lambda x, t: torch.zeros_like(x), (2, 3), generator=gen(5))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_training_loss_is_unchanged(prediction):
    d = GaussianDiffusion(num_steps=50, prediction=prediction)
    net = randomized(DiT(input_size=4, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=4,
                         num_classes=3, class_dropout=0.0))
    x0, y = torch.randn(6, 1, 4, 4, generator=gen(6)), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = d.training_loss(net, x0, generator=gen(7), reduction="none", y=y)
    generator = gen(7)  # as drawn inside: t, then the noise
    t = torch.randint(0, 50, (6,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    expected = ((net(d.q_sample(x0, t, noise), t, y=y) - d.target(x0, t, noise)) ** 2).flatten(1).mean(1)
    assert torch.equal(loss, expected)
    with pytest.raises(ConfigError, match=r"timesteps must be in \[0, 49\]"):  # given timesteps are still checked
        d.training_loss(net, x0, t=torch.full((6,), 50), y=y)


# -- labels ---------------------------------------------------------------------------------------
def test_labels_are_checked_before_the_batch_moves():
    model = ConditionalDiT(num_classes=10)
    batch = (torch.rand(2, 1, 8, 8), torch.tensor([3, 10]))
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 9\], got 3..10 \(set model.init_args.num_classes"):
        model.on_before_batch_transfer(batch, 0)
    good = (batch[0], torch.tensor([0, 9]))
    assert model.on_before_batch_transfer(good, 0) is good


# -- fused AdamW ------------------------------------------------------------------------------------
def test_adamw_is_fused_only_when_every_parameter_is_on_cuda():
    cpu = [torch.nn.Parameter(torch.zeros(2))]
    assert not fusable(cpu) and not fusable([])
    assert not adamw(iter(cpu), lr=0.1).defaults.get("fused")  # CPU: torch's default, as before
    groups = adamw([{"params": iter(cpu)}, {"params": iter([torch.nn.Parameter(torch.ones(1))]), "lr": 0.5}], lr=0.1)
    assert [len(g["params"]) for g in groups.param_groups] == [1, 1]  # generators read once, kept
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not fusable(meta)
    model = ConditionalDiT()
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults.get("fused")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adamw_is_fused_on_cuda():
    model = ConditionalDiT().cuda()
    assert model.configure_optimizers().defaults["fused"] is True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_loop_has_no_per_step_host_sync():
    """The number of synchronizing calls of a sampling run does not grow with its steps."""
    import warnings

    model = ConditionalDiT(num_steps=50).cuda().eval()
    labels = torch.tensor([1, 2, 3], device="cuda")

    def syncs(steps: int) -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                model.sample(labels, steps=steps, generator=torch.Generator("cuda").manual_seed(0))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(10) == syncs(2)


# -- compile ----------------------------------------------------------------------------------------
@pytest.fixture
def eager_compile(monkeypatch):
    """``torch.compile`` with dynamo's ``eager`` backend: the graph capture without inductor's code
    generation (minutes on a CPU); the real thing is the slow test below."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    yield
    torch._dynamo.reset()


def test_compile_is_a_saved_hyperparameter_and_keeps_checkpoint_keys(eager_compile):
    plain, compiled = ConditionalDiT(), ConditionalDiT(compile=True)
    assert compiled.hparams.compile is True and plain.hparams.compile is False
    assert list(compiled.state_dict()) == list(plain.state_dict())
    latent = LatentDiT(compile=True)
    assert latent.hparams.compile is True and list(latent.state_dict()) == list(LatentDiT().state_dict())


def compare_compiled(compiled: ConditionalDiT, eager: ConditionalDiT, rtol: float, atol: float) -> None:
    eager.load_state_dict(compiled.state_dict())
    x, y = torch.rand(4, 1, 8, 8, generator=gen(8)), torch.tensor([0, 1, 2, 3])
    losses = []
    for model in (compiled, eager):
        loss = model.diffusion.training_loss(model.net, model.encode(x), generator=gen(9), y=y)
        loss.backward()
        losses.append((loss.detach(), [p.grad.clone() for p in model.net.parameters()]))
    torch.testing.assert_close(losses[0][0], losses[1][0], rtol=rtol, atol=atol)
    for a, b in zip(losses[0][1], losses[1][1]):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    samples = [model.sample(y, steps=3, generator=gen(10)) for model in (compiled, eager)]
    torch.testing.assert_close(samples[0], samples[1], rtol=rtol, atol=atol)


def test_compiled_modules_train_and_sample_like_eager_ones(eager_compile, tmp_path):
    torch.manual_seed(0)
    compiled = ConditionalDiT(num_steps=20, sample_steps=3, class_dropout=0.0, compile=True)
    randomized(compiled.net), randomized(compiled.ema, 1)
    compare_compiled(compiled, ConditionalDiT(num_steps=20, sample_steps=3, class_dropout=0.0), rtol=0, atol=0)
    cli = run_cli("fit", "--config", "configs/dit/digits_tiny.yaml", "--model.compile=true",
                  "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
    assert cli.model.hparams.compile is True and cli.trainer.global_step == 1


@pytest.mark.slow
def test_inductor_compiled_modules_train_and_sample_like_eager_ones(tmp_path):
    """Inductor's generated kernels (about a minute to compile on a CPU) against eager, and one
    ``fast_dev_run`` step through the CLI."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = ConditionalDiT(num_steps=20, sample_steps=3, class_dropout=0.0, compile=True)
    randomized(compiled.net), randomized(compiled.ema, 1)
    compare_compiled(compiled, ConditionalDiT(num_steps=20, sample_steps=3, class_dropout=0.0), rtol=1e-4, atol=1e-5)
    cli = run_cli("fit", "--config", "configs/dit/digits_tiny.yaml", "--model.compile=true",
                  "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
                  "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
    assert cli.trainer.global_step == 1
    torch._dynamo.reset()
