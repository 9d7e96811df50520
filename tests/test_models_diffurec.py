"""DiffuRec against the reference document (shared/docs/diffurec-reference.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffurec.models import build_model, model_from_config
from diffurec.models.diffurec import (
    PRESETS,
    timestep_embedding,
    posterior_coefficients,
    reverse_timesteps,
    trunc_lin_betas,
)
from trainer_data import adam_losses

NUM_ITEMS, MAX_LEN, D = 300, 50, 128


def reference_schedule(steps=32):
    """The schedule from the document's formulas, in NumPy (independent of the model code)."""
    scale = 1000 / steps
    beta = np.linspace(scale * 1e-4 + 0.01, scale * 0.02 + 0.01, steps)
    alpha_bar = np.cumprod(1 - beta)
    alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
    c1 = beta * np.sqrt(alpha_bar_prev) / (1 - alpha_bar)
    c2 = (1 - alpha_bar_prev) * np.sqrt(1 - beta) / (1 - alpha_bar)
    return beta, alpha_bar, c1, c2


def real_inputs(splits, users=64):
    return torch.from_numpy(np.asarray(splits.test_inputs[:users]).astype(np.int64))


def test_trunc_lin_constants():
    beta = trunc_lin_betas(32).numpy()
    assert beta[0] == pytest.approx(0.013125, abs=1e-12)
    assert beta[31] == pytest.approx(0.635, abs=1e-12)
    sqrt_alpha_bar = np.sqrt(np.cumprod(1 - beta))
    assert sqrt_alpha_bar[0] == pytest.approx(0.9934, abs=5e-5)
    assert sqrt_alpha_bar[15] == pytest.approx(0.228, abs=5e-4)
    assert sqrt_alpha_bar[31] == pytest.approx(0.0010, abs=5e-5)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN)
    assert torch.allclose(model.sqrt_alpha_bar.double(), torch.from_numpy(sqrt_alpha_bar), atol=1e-7)


def test_posterior_coefficients_match_the_formulas():
    beta, alpha_bar, c1_ref, c2_ref = reference_schedule()
    c1, c2, beta_out = posterior_coefficients(torch.from_numpy(alpha_bar))
    np.testing.assert_allclose(c1.numpy(), c1_ref, rtol=1e-10)
    np.testing.assert_allclose(c2.numpy(), c2_ref, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(beta_out.numpy(), beta, rtol=1e-10)  # sigma_t^2 = beta_t
    # At t = 0 the posterior mean is x0_hat itself; spot values from the formulas by hand.
    assert c1[0] == pytest.approx(1.0) and c2[0] == pytest.approx(0.0, abs=1e-15)
    t = 15
    assert c1[t].item() == pytest.approx(beta[t] * math.sqrt(alpha_bar[t - 1]) / (1 - alpha_bar[t]))
    assert c2[t].item() == pytest.approx((1 - alpha_bar[t - 1]) * math.sqrt(1 - beta[t]) / (1 - alpha_bar[t]))


def test_reverse_timesteps():
    assert reverse_timesteps(32, 32) == list(range(31, -1, -1))
    assert reverse_timesteps(32, 1) == [31]
    assert reverse_timesteps(32, 2) == [31, 0]
    assert len(reverse_timesteps(32, 4)) == 4
    with pytest.raises(ValueError):
        reverse_timesteps(32, 33)


def test_paper_config_and_architecture():
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper")
    cfg = model.config
    assert (cfg["hidden_size"], cfg["num_blocks"], cfg["num_heads"], cfg["ffn_size"]) == (128, 4, 4, 512)
    assert (cfg["dropout"], cfg["emb_dropout"]) == (0.1, 0.3)
    assert (cfg["diffusion_steps"], cfg["reverse_steps"]) == (32, 32)
    assert cfg["lambda_uncertainty"] == 0.001 and not model.trims_padding
    assert model.item_embedding.padding_idx is None  # learned padding row
    assert not any("position" in name for name, _ in model.named_parameters())  # no positions
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 + 2 * 4 and all(m.eps == 1e-12 for m in norms)
    # N(0, 1) item init, as nn.Embedding's default
    weight = model.item_embedding.weight.detach()
    assert weight.std().item() == pytest.approx(1.0, abs=0.02) and weight.mean().abs() < 0.02
    # Config round trip rebuilds the same architecture
    rebuilt = model_from_config(model.config)
    assert rebuilt.config == model.config
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_fast_init_scales_item_embeddings_only():
    paper = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper")
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "fast-init")
    weight = model.item_embedding.weight.detach()
    assert weight.std().item() == pytest.approx(128**-0.5, rel=0.03)
    differences = {k for k in PRESETS["fast-init"] if PRESETS["fast-init"][k] != PRESETS["paper"][k]}
    assert differences == {"mask", "attention", "reverse_steps", "item_init_std"}
    assert model.trims_padding and not paper.trims_padding


def test_parameter_count_matches_reference():
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper")
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("item_embedding"))
    d, ffn = 128, 512
    block = 4 * (d * d + d) + (d * ffn + ffn) + (ffn * d + d) + 2 * 2 * d
    expected = 4 * block + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * 2 * d
    assert non_embedding == expected == 925_312
    # The document's "about 1.0 M" counts the reference's four unused layers (~0.1 M) too.
    assert 0.9e6 < non_embedding < 1.1e6
    beauty = build_model("diffurec", 12101, MAX_LEN, "paper")
    assert sum(p.numel() for p in beauty.parameters()) == pytest.approx(2.6e6, rel=0.06)


def test_lambda_distribution_fresh_and_elementwise():
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    seen = []
    original = model._lambda
    model._lambda = lambda *a: seen.append(original(*a)) or seen[-1]
    inputs = torch.randint(1, NUM_ITEMS + 1, (64, MAX_LEN))
    torch.manual_seed(0)
    model.score(inputs, reverse_steps=2)  # inference draws lambda too, once per step
    model.train()
    model.loss(inputs, torch.randint(1, NUM_ITEMS + 1, (64,)))
    assert len(seen) == 3
    for lam in seen:  # 409,600 draws each: the mean's standard error is 1.6e-6
        assert lam.shape == (64, MAX_LEN, D)
        assert lam.mean().item() == pytest.approx(0.001, abs=1e-5)
        assert lam.std().item() == pytest.approx(0.001, abs=1e-5)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_fast_lite_is_fast_init_with_two_blocks_on_the_last_ten_items():
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "fast-lite")
    assert len(model.blocks) == 2 and model.config["window"] == 10
    differences = {k for k in PRESETS["fast-lite"] if PRESETS["fast-lite"][k] != PRESETS["fast-init"][k]}
    assert differences == {"num_blocks", "window"}
    assert PRESETS["paper"]["window"] is None and PRESETS["paper"]["num_blocks"] == 4
    lite_pos = {k for k in PRESETS["fast-lite-pos"] if PRESETS["fast-lite-pos"][k] != PRESETS["fast-lite"][k]}
    assert lite_pos == {"positions"} and not any(PRESETS[p]["positions"] for p in ("paper", "fast-lite"))


def test_paper_ignores_order_of_earlier_items_while_sasrec_does_not(ml100k_splits):
    inputs = real_inputs(ml100k_splits)
    inputs = inputs[(inputs > 0).sum(1) >= 10][:16]  # users with >= 10 items in the window
    torch.manual_seed(1)
    permutation = torch.cat([torch.randperm(MAX_LEN - 1), torch.tensor([MAX_LEN - 1])])
    assert not torch.equal(inputs[:, permutation], inputs)

    paper = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "paper").eval()
    x_t = torch.randn(len(inputs), D)
    t = torch.full((len(inputs),), 7)
    lam = paper._lambda(len(inputs), MAX_LEN, "cpu")
    with torch.no_grad():
        out = paper.approximate(paper.history(inputs), paper.attention_mask(inputs), x_t, t, lam)
        permuted = inputs[:, permutation]
        out_permuted = paper.approximate(
            paper.history(permuted), paper.attention_mask(permuted), x_t, t, lam[:, permutation]
        )
    torch.testing.assert_close(out_permuted, out, atol=2e-5, rtol=1e-5)

    sasrec = build_model("sasrec", ml100k_splits.num_items, MAX_LEN, "pre-ln").eval()
    changed = (sasrec.score(inputs) - sasrec.score(inputs[:, permutation])).abs().amax(dim=1)
    assert (changed > 1e-3).all()
    # positions=true (not the reference's) gives DiffuRec the order too
    positioned = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "fast-init", positions=True).eval()
    with torch.no_grad():
        out, out_permuted = (
            positioned.approximate(positioned.history(x), positioned.attention_mask(x), x_t, t, lam)
            for x in (inputs, permuted)
        )
    assert ((out - out_permuted).abs().amax(dim=1) > 1e-3).all()
    assert "position_embedding.weight" not in paper.state_dict()


@pytest.mark.parametrize("positions", [False, True])
def test_fast_output_ignores_left_padding(ml100k_splits, positions):
    """With the noise fixed (x_t, and lambda at the real positions), extra left padding changes
    nothing in `fast`; padded positions' lambda is drawn but cannot reach the output. Positions,
    where used, are anchored at the most recent item, so padding does not move them."""
    model = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "fast", positions=positions).eval()
    assert model.trims_padding
    inputs = real_inputs(ml100k_splits)
    inputs = inputs[(inputs > 0).sum(1) <= 30][:32]
    longest = int((inputs > 0).sum(1).max())
    assert longest < MAX_LEN
    trimmed = inputs[:, -longest:]
    torch.manual_seed(3)
    x_t, t = torch.randn(len(inputs), D), torch.randint(0, 32, (len(inputs),))
    lam = model._lambda(len(inputs), MAX_LEN, "cpu")
    with torch.no_grad():
        full = model.approximate(model.history(inputs), model.attention_mask(inputs), x_t, t, lam)
        cut = model.approximate(
            model.history(trimmed), model.attention_mask(trimmed), x_t, t, lam[:, -longest:]
        )
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
    # The whole reverse process is reproducible per seed.
    torch.manual_seed(4)
    first = model.score(trimmed, reverse_steps=2)
    torch.manual_seed(4)
    assert torch.equal(model.score(trimmed, reverse_steps=2), first)


def test_sasrec_output_ignores_left_padding(ml100k_splits):
    model = build_model("sasrec", ml100k_splits.num_items, MAX_LEN).eval()
    assert model.trims_padding
    inputs = real_inputs(ml100k_splits)
    inputs = inputs[(inputs > 0).sum(1) <= 30][:32]
    longest = int((inputs > 0).sum(1).max())
    torch.testing.assert_close(model.score(inputs[:, -longest:]), model.score(inputs), atol=1e-4, rtol=1e-5)


def test_paper_output_depends_on_padding(ml100k_splits):
    """The reference quirk: real positions attend to padded keys, so trimming is not exact."""
    model = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "paper").eval()
    inputs = real_inputs(ml100k_splits)
    inputs = inputs[(inputs > 0).sum(1) <= 30][:32]
    longest = int((inputs > 0).sum(1).max())
    trimmed = inputs[:, -longest:]
    x_t, t = torch.randn(len(inputs), D), torch.full((len(inputs),), 5)
    lam = model._lambda(len(inputs), MAX_LEN, "cpu")
    with torch.no_grad():
        full = model.approximate(model.history(inputs), model.attention_mask(inputs), x_t, t, lam)
        cut = model.approximate(
            model.history(trimmed), model.attention_mask(trimmed), x_t, t, lam[:, -longest:]
        )
    assert (full - cut).abs().max() > 1e-2


def test_default_draws_are_the_documented_ones_in_order():
    """Without injected draws, loss() draws t, noise, lambda and represent() x_T, then per step
    lambda and noise (none on the last step), in that order from torch's generator: drawing them
    by hand under the same seed and injecting them gives bit-identical results. (The arithmetic
    itself is checked against the reference's numbers in test_reference_golden.py.)"""
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper").eval()
    batch, length = 4, 12  # shorter than max_len: any window works
    inputs = torch.randint(0, NUM_ITEMS + 1, (batch, length))
    inputs[:, -1] = torch.randint(1, NUM_ITEMS + 1, (batch,))
    targets = torch.randint(1, NUM_ITEMS + 1, (batch,))

    def lam() -> torch.Tensor:
        return torch.randn(batch, length, D) * 0.001 + 0.001

    torch.manual_seed(11)
    t = torch.randint(0, 32, (batch,))
    loss_draws = dict(t=t, noise=torch.randn(batch, D), lam=lam())
    assert t.min() < t.max()  # a t fixed to one value would not be the same draws
    torch.manual_seed(11)
    with torch.no_grad():
        assert torch.equal(model.loss(inputs, targets), model.loss(inputs, targets, **loss_draws))

    for steps in (32, 3, 1):
        torch.manual_seed(12)
        x_T = torch.randn(batch, D)
        lams, noises = [], []
        for step in range(steps):
            lams.append(lam())
            if step + 1 < steps:
                noises.append(torch.randn(batch, D))
        torch.manual_seed(12)
        drawn = model.represent(inputs, reverse_steps=steps)
        injected = model.represent(inputs, reverse_steps=steps, x_T=x_T, noise=noises, lam=lams)
        assert torch.equal(drawn, injected), steps
    scores = model.score(inputs)
    assert scores.shape == (batch, NUM_ITEMS + 1) and scores.dtype == torch.float32


def test_paper_loss_learns_on_real_prefixes(ml100k_splits):
    """Full-softmax CE over N+1 rows goes down within a few Adam steps on real samples."""
    torch.manual_seed(1997)
    model = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "paper")
    # 64 real samples, their last 20 positions: small enough for the CI budget on 2 cores.
    inputs = torch.from_numpy(np.asarray(ml100k_splits.train_inputs[-64:, -20:]).astype(np.int64))
    targets = torch.from_numpy(np.asarray(ml100k_splits.train_targets[-64:]).astype(np.int64))
    losses = adam_losses(model, inputs, targets, steps=10)
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    # The padding row is a class like any other: its gradient is not forced to zero.
    assert model.item_embedding.weight.grad[0].abs().sum() > 0


def test_unknown_preset_and_hyperparameter_are_rejected():
    with pytest.raises(ValueError, match="preset"):
        build_model("diffurec", NUM_ITEMS, MAX_LEN, "nope")
    with pytest.raises(ValueError, match="hyperparameter"):
        build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper", hiden_size=3)
    with pytest.raises(ValueError, match="window"):
        build_model("diffurec", NUM_ITEMS, MAX_LEN, "fast", window=0)
    assert set(PRESETS) >= {"paper", "fast"}


@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_last_block_computing_only_the_last_query_is_exact(preset):
    """The models read only the last position, so skipping the other queries of the final
    block must give exactly what the full computation gives."""
    torch.manual_seed(2)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, preset).eval()
    inputs = torch.randint(0, NUM_ITEMS + 1, (6, MAX_LEN))
    inputs[:, -1] = 1
    x_t, t = torch.randn(6, D), torch.tensor([0, 3, 9, 17, 25, 31])
    lam = model._lambda(6, MAX_LEN, "cpu")
    with torch.no_grad():
        history, mask = model.history(inputs), model.attention_mask(inputs)
        got = model.approximate(history, mask, x_t, t, lam)
        z = x_t + model.time_mlp(timestep_embedding(t, D, 1000.0 / 32))
        h = history + lam * z[:, None, :]
        for block in model.blocks:
            h = block(h, mask)
        full = model.output_norm(model.output_dropout(h))[:, -1, :]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_flops_count():
    """Against torch.utils.flop_counter (what torch actually multiplies), not a formula."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model("diffurec", NUM_ITEMS, MAX_LEN, "paper")
    inputs = torch.randint(1, NUM_ITEMS + 1, (4, 10))

    def counted(call) -> int:
        with FlopCounterMode(display=False) as counter:
            call()
        return counter.get_total_flops()

    model.train()
    assert model.flops(4, 10, training=True) == counted(
        lambda: model.loss(inputs, torch.randint(1, NUM_ITEMS + 1, (4,))).backward()
    )
    model.eval()
    for steps in (1, 4, 32):
        assert model.flops(4, 10, training=False, reverse_steps=steps) == counted(
            lambda steps=steps: model.score(inputs, reverse_steps=steps)
        )
    assert model.flops(4, 10, training=False) == model.flops(4, 10, training=False, reverse_steps=32)
    # The attention kernel does not change the arithmetic (the counter sizes SDPA differently).
    fast = build_model("diffurec", NUM_ITEMS, MAX_LEN, "fast")
    assert fast.flops(4, 10, training=True) == model.flops(4, 10, training=True)


def test_window_reads_only_the_most_recent_items(ml100k_splits):
    """window=W: items older than the last W columns change neither the scores nor the loss;
    without a window they do (the attention is bidirectional)."""
    inputs = real_inputs(ml100k_splits)
    inputs = inputs[(inputs > 0).sum(1) >= 15][:16]
    older = inputs.clone()
    older[:, : MAX_LEN - 8] = torch.where(
        older[:, : MAX_LEN - 8] > 0, (older[:, : MAX_LEN - 8] % 50) + 1, older[:, : MAX_LEN - 8]
    )
    assert not torch.equal(older, inputs) and torch.equal(older[:, -8:], inputs[:, -8:])
    targets = torch.from_numpy(np.asarray(ml100k_splits.test_targets[: len(inputs)]).astype(np.int64))
    for window, same in ((8, True), (None, False)):
        torch.manual_seed(0)
        model = build_model("diffurec", ml100k_splits.num_items, MAX_LEN, "fast-init", window=window).eval()
        scores = []
        losses = []
        for batch in (inputs, older):
            torch.manual_seed(5)
            scores.append(model.score(batch))
            torch.manual_seed(6)
            losses.append(model.loss(batch, targets))
        assert torch.equal(scores[0], scores[1]) is same, window
        assert torch.equal(losses[0], losses[1]) is same, window
