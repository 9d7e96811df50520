"""The `paper` preset against numbers the authors' own code computed.

../shared/fixtures/diffurec-reference-golden.npz (described in its README beside it) holds the
weights, inputs, every random draw and the outputs of WHUIR/DiffuRec@f6f70c9. The weights are
loaded into `paper`, the recorded draws are fed in, and the outputs must match the reference's:
the schedule, q_sample, the approximator, the training loss and the whole 32-step reverse process.
Order-1 outputs are compared with atol 1e-5 (the README measured 1.5e-6; the smallest structural
change it lists moves them by 7e-4), scores and the loss with a relative tolerance of 1e-6.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from diffurec.models import build_model
from diffurec.models.diffurec import from_reference_names, posterior_coefficients, trunc_lin_betas
from diffurec.models.layers import dot_scores

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "diffurec-reference-golden.npz"
GOLDEN_SHA256 = "a3ca72a56b3607f3b93c7133fd61fc34874492c27653ea6dfda80d7451836c8c"
NUM_ITEMS, MAX_LEN = 300, 50
ORDER_ONE = dict(atol=1e-5, rtol=0.0)  # x0_hat, x_t, history: values of order 1
RELATIVE = dict(atol=1e-6, rtol=1e-6)  # scores up to ~99, the loss ~78


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    if not GOLDEN.is_file():
        pytest.fail(f"reference golden file not found at {GOLDEN}")
    assert hashlib.sha256(GOLDEN.read_bytes()).hexdigest() == GOLDEN_SHA256, f"{GOLDEN} changed"
    with np.load(GOLDEN) as arrays:
        return {name: torch.from_numpy(arrays[name]) for name in arrays.files}


@pytest.fixture(scope="module")
def model(golden: dict[str, torch.Tensor]) -> torch.nn.Module:
    paper = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    prefix = "weights/"
    weights = {name[len(prefix) :]: value for name, value in golden.items() if name.startswith(prefix)}
    assert len(weights) == 73
    state = from_reference_names(weights)
    paper.load_state_dict(state, strict=True)  # every parameter comes from the reference
    return paper


def test_schedule_is_the_references(golden, model):
    beta = trunc_lin_betas(32)
    alpha_bar = torch.cumprod(1.0 - beta, dim=0)
    c1, c2, beta_out = posterior_coefficients(alpha_bar)
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    posterior_variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    for ours, name in (
        (beta, "betas"),
        (beta_out, "betas"),
        (alpha_bar, "alphas_cumprod"),
        (c1, "posterior_mean_coef1"),
        (c2, "posterior_mean_coef2"),
        (posterior_variance, "posterior_variance"),
    ):
        torch.testing.assert_close(ours.float(), golden[name], rtol=1e-6, atol=1e-12, msg=name)
    # The buffers q_sample reads are the reference's float32 values bit for bit.
    assert torch.equal(model.sqrt_alpha_bar, golden["sqrt_alphas_cumprod"])
    assert torch.equal(model.sqrt_one_minus_alpha_bar, golden["sqrt_one_minus_alphas_cumprod"])
    # "Fixed large" reverse variance: sigma_t = sqrt(beta_t) for t >= 1.
    sigma = torch.exp(0.5 * golden["reverse_log_variance"][1:].double())
    torch.testing.assert_close(beta_out[1:].sqrt(), sigma, rtol=1e-6, atol=0.0)


def test_history_representation(golden, model):
    with torch.no_grad():
        torch.testing.assert_close(model.history(golden["inputs"]), golden["history"], **ORDER_ONE)


def test_approximator_output(golden, model):
    inputs = golden["inputs"]
    with torch.no_grad():
        out = model.approximate(
            model.history(inputs),
            model.attention_mask(inputs),
            golden["approx_x_t"],
            golden["approx_t"],
            golden["approx_lambda"],
        )
    torch.testing.assert_close(out, golden["approx_out"], **ORDER_ONE)


def test_q_sample(golden, model):
    with torch.no_grad():
        x0 = model.item_embedding(golden["targets"])
        x_t = model.q_sample(x0, golden["loss_t"], golden["loss_noise"])
    torch.testing.assert_close(x_t, golden["loss_x_t"], rtol=1e-6, atol=1e-7)


def test_training_loss(golden, model):
    inputs, targets = golden["inputs"], golden["targets"]
    draws = dict(t=golden["loss_t"], noise=golden["loss_noise"], lam=golden["loss_lambda"])
    with torch.no_grad():
        loss = model.loss(inputs, targets, **draws)
        rep = model.approximate(
            model.history(inputs), model.attention_mask(inputs), golden["loss_x_t"], draws["t"], draws["lam"]
        )
    torch.testing.assert_close(rep, golden["loss_rep"], **ORDER_ONE)
    torch.testing.assert_close(loss, golden["loss_value"], **RELATIVE)
    assert loss.item() == pytest.approx(78.48967, rel=1e-6)


def test_whole_reverse_process(golden, model):
    """All 32 steps through represent() with the reference's x_T, lambda and noise. The
    reference also drew noise at t = 0 (reverse_noise[31]) and multiplied it by zero; this
    implementation draws none there, so that one is not replayed."""
    assert golden["reverse_t"].tolist() == list(range(31, -1, -1))
    with torch.no_grad():
        rep = model.represent(
            golden["inputs"],
            reverse_steps=32,
            x_T=golden["reverse_x_T"],
            noise=golden["reverse_noise"][:31],
            lam=golden["reverse_lambda"],
        )
        scores = dot_scores(rep, model.item_embedding.weight)
    torch.testing.assert_close(rep, golden["reverse_x0"], **ORDER_ONE)
    # 1e-6 of the largest score (~99): a score near 0 carries the rounding of the big ones.
    scale = golden["reverse_scores"].abs().max().item()
    assert scale > 90
    torch.testing.assert_close(scores, golden["reverse_scores"], atol=1e-6 * scale, rtol=1e-6)
    ours = scores[:, 1:].topk(20, dim=1).indices
    theirs = golden["reverse_scores"][:, 1:].topk(20, dim=1).indices
    assert torch.equal(ours, theirs)


def test_reverse_trajectory_step_by_step(golden, model):
    """Each reverse step alone, from the reference's own state before it: x0_hat at every t and
    the next state (so a wrong step is named, not only the end result)."""
    inputs = golden["inputs"]
    trajectory = golden["reverse_trajectory"]
    with torch.no_grad():
        history, mask = model.history(inputs), model.attention_mask(inputs)
        for k, t in enumerate(range(31, -1, -1)):
            t_batch = torch.full((len(inputs),), t)
            x0_hat = model.approximate(history, mask, trajectory[k], t_batch, golden["reverse_lambda"][k])
            torch.testing.assert_close(x0_hat, golden["reverse_x0_hat"][k], **ORDER_ONE, msg=f"t={t}")
    torch.testing.assert_close(golden["reverse_x0"], trajectory[32], atol=0.0, rtol=0.0)
