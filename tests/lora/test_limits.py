"""The LoRA gradient of one attention layer: by hand vs autograd vs fp64 finite differences, and the
polynomial approximation converging to it (tiny sizes, fp64)."""

import pytest
import torch

from zoo.core.errors import ConfigError, ShapeError
from zoo.lora import LoRAProblem, approx_lora_gradient, lora_gradient, lora_loss, random_problem, relative_error

pytestmark = pytest.mark.usefixtures("one_thread")


def with_leaves(problem):
    leaves = {n: (a.clone().requires_grad_(), b.clone().requires_grad_()) for n, (a, b) in problem.adapters.items()}
    return LoRAProblem(problem.x, problem.y, problem.w_star, leaves, problem.alpha)


@pytest.mark.parametrize("adaptation", ["partial", "full"])
def test_hand_gradient_equals_autograd(adaptation):
    problem = with_leaves(random_problem(16, 4, rank=2, adaptation=adaptation, alpha=3.0, seed=1))
    loss = lora_loss(problem)
    loss.backward()
    value, grads = lora_gradient(problem)
    assert sorted(grads) == sorted(problem.adapters)
    torch.testing.assert_close(value, loss.detach(), rtol=1e-13, atol=0)
    for name, (a, b) in problem.adapters.items():
        torch.testing.assert_close(grads[name][0], a.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads[name][1], b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("adaptation", ["partial", "full"])
def test_hand_gradient_equals_central_finite_differences(adaptation):
    problem = random_problem(6, 3, rank=2, adaptation=adaptation, alpha=2.0, seed=2)
    _, grads = lora_gradient(problem)
    h = 1e-6
    for name, pair in problem.adapters.items():
        for which, tensor in enumerate(pair):
            numeric = torch.zeros_like(tensor)
            for idx in range(tensor.numel()):
                values = []
                for sign in (1, -1):
                    moved = tensor.clone()
                    moved.view(-1)[idx] += sign * h
                    new = (moved, pair[1]) if which == 0 else (pair[0], moved)
                    values.append(float(lora_loss(LoRAProblem(problem.x, problem.y, problem.w_star,
                                                              {**problem.adapters, name: new}, problem.alpha))))
                numeric.view(-1)[idx] = (values[0] - values[1]) / (2 * h)
            torch.testing.assert_close(grads[name][which], numeric, rtol=1e-6, atol=1e-8)


def test_zero_b_gives_zero_a_gradient():
    problem = random_problem(8, 4, rank=2, adaptation="full", seed=3)
    zero = LoRAProblem(problem.x, problem.y, problem.w_star,
                       {n: (a, torch.zeros_like(b)) for n, (a, b) in problem.adapters.items()})
    _, grads = lora_gradient(zero)
    for name in grads:
        assert torch.equal(grads[name][0], torch.zeros_like(grads[name][0]))
        assert grads[name][1].abs().max() > 0


@pytest.mark.parametrize("adaptation", ["partial", "full"])
def test_approximate_gradient_converges_with_degree(adaptation):
    problem = random_problem(16, 4, rank=2, adaptation=adaptation, seed=4).scaled(0.8)
    assert problem.max_score() < 2
    exact_loss, exact = lora_gradient(problem)
    errors = []
    for degree in (1, 2, 4, 6, 8, 10):
        loss, approx = approx_lora_gradient(problem, degree)
        errors.append(relative_error(approx, exact))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4
    torch.testing.assert_close(loss, exact_loss, rtol=1e-6, atol=0)


def test_small_entries_are_near_exact():
    problem = random_problem(12, 4, rank=2, adaptation="full", seed=5).scaled(0.3)
    _, exact = lora_gradient(problem)
    assert relative_error(approx_lora_gradient(problem, 8)[1], exact) < 1e-10


def test_bad_input_is_one_line():
    problem = random_problem(6, 3, rank=2)
    cases = [
        (ConfigError, "adaptation", lambda: random_problem(6, 3, adaptation="half")),
        (ConfigError, "rank", lambda: random_problem(6, 3, rank=0)),
        (ConfigError, "degree", lambda: approx_lora_gradient(problem, 0)),
        (ConfigError, "'o'", lambda: LoRAProblem(problem.x, problem.y, problem.w_star,
                                                 {"o": problem.adapters["q"]})),
        (ShapeError, "adapter 'q'", lambda: LoRAProblem(problem.x, problem.y, problem.w_star,
                                                        {"q": (torch.zeros(2, 3), torch.zeros(2, 3))})),
        (ShapeError, "x and y", lambda: LoRAProblem(problem.x, problem.y[:4], problem.w_star, {})),
        (ShapeError, "w_star['k']", lambda: LoRAProblem(problem.x, problem.y, {"q": problem.w_star["q"]}, {})),
    ]
    for error, words, call in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value) and "\n" not in str(info.value)
