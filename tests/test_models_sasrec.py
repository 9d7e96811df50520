"""SASRec+: causal attention, right-anchored learned positions, full-softmax CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffurec.models import build_model, model_from_config

from trainer_data import adam_losses


def test_causal_attention_last_position_sees_everything_earlier_positions_do_not():
    torch.manual_seed(0)
    model = build_model("sasrec", 100, 20, "dense").eval()
    inputs = torch.randint(1, 101, (4, 20))
    changed = inputs.clone()
    changed[:, -1] = (changed[:, -1] % 100) + 1  # a different most recent item
    with torch.no_grad():
        mask = model.attention_mask(inputs)
    # Position i attends to keys 0..i only.
    assert torch.equal(mask[0, 0], torch.ones(20, 20, dtype=torch.bool).tril())
    assert not torch.allclose(model.score(inputs), model.score(changed))


def test_padded_keys_hidden_and_padding_row_zero():
    model = build_model("sasrec", 100, 10)
    inputs = torch.tensor([[0, 0, 0, 5, 6, 7, 8, 9, 10, 11]])
    mask = model.attention_mask(inputs)[0, 0]
    assert not mask[5, :3].any() and mask[5, 3:6].all()  # real queries never see padding
    assert mask[1, 1] and not mask[1, 0]  # a padded query sees only itself (no NaN rows)
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0
    assert model.trims_padding and model.requires_training


def test_positions_count_from_the_right():
    """An item's position embedding depends on its distance from the most recent item."""
    torch.manual_seed(1)
    model = build_model("sasrec", 100, 10, "pre-ln").eval()
    inputs = torch.tensor([[0, 0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        model.position_embedding.weight[6:].add_(100.0)  # rows only reachable 6+ from the right
    torch.testing.assert_close(model.score(inputs), model.score(inputs[:, -3:]))


def test_loss_learns_on_real_prefixes(ml100k_splits):
    torch.manual_seed(1997)
    model = build_model("sasrec", ml100k_splits.num_items, ml100k_splits.max_len, "dense")
    inputs = torch.from_numpy(np.asarray(ml100k_splits.train_inputs[-128:]).astype(np.int64))
    targets = torch.from_numpy(np.asarray(ml100k_splits.train_targets[-128:]).astype(np.int64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.loss(inputs, targets).item()
    assert first == pytest.approx(np.log(ml100k_splits.num_items + 1), rel=0.15)  # near uniform
    for _ in range(15):
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.8 * first
    assert model_from_config(model.config).config == model.config


# Issue 18's ablation knobs: each preset's behaviour, then each knob alone.


def three_adam_steps(preset: str, **hyper) -> tuple[list[float], torch.Tensor]:
    """Losses of 3 Adam steps on fixed random data, and the scores after them."""
    torch.manual_seed(7)
    model = build_model("sasrec", 50, 8, preset, **hyper)
    inputs = torch.randint(1, 51, (16, 8))
    inputs[:5, :3] = 0  # some left padding
    targets = torch.randint(1, 51, (16,))
    losses = adam_losses(model, inputs, targets, steps=3)
    return losses, model.eval().score(inputs)


@pytest.mark.parametrize(
    ("preset", "losses", "score_sum", "first_scores"),
    [
        # Recorded from the code before the knobs existed (commit 4bdc760), when `pre-ln` was called
        # `default`; equal bit for bit here.
        (
            "pre-ln",
            [4.649407386779785, 4.41398811340332, 4.461642742156982],
            45.404747009277344,
            [-0.10195283591747284, 0.7479689121246338, -0.21050848066806793],
        ),
        (
            "dense",
            [4.736731052398682, 4.140167713165283, 3.9671313762664795],
            70.76921081542969,
            [-0.10887844115495682, 0.9731912612915039, -0.23572632670402527],
        ),
    ],
)
def test_pre_ln_and_dense_train_as_before_the_knobs(preset, losses, score_sum, first_scores):
    got_losses, scores = three_adam_steps(preset)
    # rel 1e-6: the same arithmetic on another CPU may round differently; any knob is far larger.
    assert got_losses == pytest.approx(losses, rel=1e-6)
    assert scores.sum().item() == pytest.approx(score_sum, rel=1e-5)
    assert scores[0, :3].tolist() == pytest.approx(first_scores, rel=1e-5)


def test_recbole_preset_sets_all_six_recbole_choices():
    model = build_model("sasrec", 50, 8, "recbole")
    cfg = model.config
    knobs = ("norm", "embedding_norm", "embedding_scale", "init", "positions", "ffn_dropout")
    assert [cfg[knob] for knob in knobs] == ["post", True, False, "normal-0.02", "left", False]
    assert [build_model("sasrec", 50, 8, "pre-ln").config[knob] for knob in knobs] == [
        "pre",
        False,
        True,
        "default",
        "right",
        True,
    ]
    assert model_from_config(cfg).config == cfg
    assert three_adam_steps("recbole")[0] != pytest.approx(three_adam_steps("pre-ln")[0], rel=1e-3)


def test_recbole_is_the_default_and_old_default_folders_load_as_pre_ln():
    assert build_model("sasrec", 50, 8).config["preset"] == "recbole"
    old = build_model("sasrec", 50, 8, "pre-ln", dropout=0.3).config
    loaded = model_from_config(dict(old, preset="default"))  # a folder saved before the rename
    assert loaded.config == old
    with pytest.raises(ValueError, match="unknown SASRec preset 'default'"):
        build_model("sasrec", 50, 8, "default")  # new runs name what they train


def test_unknown_knob_value_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        build_model("sasrec", 50, 8, norm="middle")
    with pytest.raises(ValueError, match="positions must be one of"):
        build_model("sasrec", 50, 8, positions="center")
    with pytest.raises(ValueError, match="embedding_norm must be true or false"):
        build_model("sasrec", 50, 8, embedding_norm="maybe")  # a string would be truthy


def block_outputs(model) -> list[torch.Tensor]:
    """What each block returns on a forward pass (hooks)."""
    outputs: list[torch.Tensor] = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    return outputs


def test_post_norm_blocks_end_normalised_and_pre_norm_blocks_do_not():
    inputs = torch.randint(1, 51, (6, 8))
    for norm, normalised in (("post", True), ("pre", False)):
        torch.manual_seed(3)
        model = build_model("sasrec", 50, 8, "pre-ln", norm=norm).eval()
        with torch.no_grad():  # non-trivial LayerNorm affine parameters would hide nothing
            outputs = block_outputs(model)
            representation = model.represent(inputs)
        last = outputs[-1][:, -1]
        is_standardised = torch.allclose(last.mean(-1), torch.zeros(6), atol=1e-5) and torch.allclose(
            last.var(-1, unbiased=False), torch.ones(6), atol=1e-3
        )
        assert is_standardised == normalised, norm
        # Post-LN: the last block's LayerNorm is the output (no second LayerNorm on top).
        assert torch.equal(representation, last) == normalised, norm


def test_embedding_norm_standardises_the_block_input():
    inputs = torch.randint(1, 51, (4, 8))
    for embedding_norm in (True, False):
        torch.manual_seed(3)
        model = build_model("sasrec", 50, 8, "pre-ln", embedding_norm=embedding_norm).eval()
        seen: list[torch.Tensor] = []
        model.blocks[0].register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            model.represent(inputs)
        means = seen[0].mean(-1)
        assert torch.allclose(means, torch.zeros_like(means), atol=1e-5) == embedding_norm


def test_embedding_scale_multiplies_item_embeddings_by_sqrt_d():
    inputs = torch.tensor([[0, 0, 4, 9]])
    inputs_seen = {}
    for scale in (True, False):
        torch.manual_seed(3)
        model = build_model("sasrec", 50, 8, "pre-ln", hidden_size=16, embedding_scale=scale).eval()
        with torch.no_grad():
            model.position_embedding.weight.zero_()
        model.blocks[0].register_forward_pre_hook(lambda _m, args, s=scale: inputs_seen.update({s: args[0]}))
        with torch.no_grad():
            model.represent(inputs)
    torch.testing.assert_close(inputs_seen[True], inputs_seen[False] * 4.0)  # sqrt(16)


def test_init_normal_002_draws_every_weight_with_std_002():
    torch.manual_seed(5)
    model = build_model("sasrec", 2000, 50, "pre-ln", init="normal-0.02")
    assert model.item_embedding.weight[1:].std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.item_embedding.weight[0]) == 0  # padding stays zero
    assert model.position_embedding.weight.std().item() == pytest.approx(0.02, rel=0.2)
    for block in model.blocks:
        for linear in (block.attention.query, block.attention.out, block.ffn_in, block.ffn_out):
            assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
            assert torch.count_nonzero(linear.bias) == 0
        assert torch.equal(block.norm_ffn.weight, torch.ones(64))
    default = build_model("sasrec", 2000, 50, "pre-ln")
    assert default.item_embedding.weight[1:].std().item() == pytest.approx(64**-0.5, rel=0.05)
    assert default.blocks[0].attention.out.weight.std().item() == pytest.approx((2 / 128) ** 0.5, rel=0.1)


def test_left_positions_start_at_the_oldest_real_item():
    torch.manual_seed(1)
    model = build_model("sasrec", 100, 10, "pre-ln", positions="left").eval()
    short = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 4, 5]])
    ids = model.position_ids(short)
    assert ids[0, -3:].tolist() == [0, 1, 2]  # the oldest item uses row 0
    # A longer history moves the most recent item's position; right anchoring keeps it at 0.
    longer = torch.tensor([[0, 0, 0, 0, 0, 9, 8, 3, 4, 5]])
    assert model.position_ids(longer)[0, -1] == 4
    right = build_model("sasrec", 100, 10, "pre-ln").eval()
    assert right.position_ids(short)[-1] == right.position_ids(longer)[-1] == 0
    with torch.no_grad():
        baseline = model.score(short)
        model.position_embedding.weight[3:].add_(100.0)  # rows a 3-item history never reaches
        torch.testing.assert_close(model.score(short), baseline)
        torch.testing.assert_close(model.score(short[:, -3:]), baseline)  # padding-free too
        model.position_embedding.weight[0].add_(1.0)  # the oldest item's row
        assert not torch.allclose(model.score(short), baseline)


def test_d128_has_diffurecs_width():
    model = build_model("sasrec", 50, 8, "d128")
    assert model.item_embedding.weight.shape == (51, 128)
    assert model.config["ffn_size"] == 512 and model.config["num_blocks"] == 2


def test_ffn_dropout_false_leaves_the_ffn_activations_whole():
    torch.manual_seed(0)
    inputs = torch.randint(1, 50, (16, 8))
    for ffn_dropout in (True, False):
        model = build_model("sasrec", 50, 8, "recbole", ffn_dropout=ffn_dropout).train()
        block = model.blocks[0]
        seen: dict[str, torch.Tensor] = {}
        block.ffn_in.register_forward_hook(lambda m, i, out, seen=seen: seen.__setitem__("in", out))
        block.ffn_out.register_forward_hook(lambda m, i, out, seen=seen: seen.__setitem__("out", i[0]))
        model.loss(inputs, torch.randint(1, 50, (16,)))
        activations = F.gelu(seen["in"], approximate="tanh")
        if ffn_dropout:  # about half dropped, the rest scaled by 1 / (1 - 0.5)
            dropped = (seen["out"] == 0) & (activations != 0)
            assert 0.4 < dropped.float().mean() < 0.6
            kept = ~dropped
            assert torch.allclose(seen["out"][kept], 2 * activations[kept], atol=1e-6)
        else:
            assert torch.equal(seen["out"], activations)


def test_folders_saved_before_ffn_dropout_existed_load_with_it_on():
    config = build_model("sasrec", 50, 8, "recbole", ffn_dropout=True).config
    del config["ffn_dropout"]  # what a folder written before the knob holds
    assert model_from_config(config).config["ffn_dropout"] is True
