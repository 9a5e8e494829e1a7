"""MultimodalMAE: adapters, masking, decoder assembly (trap 3.1), missing modalities (3.2), loss, imputation (3.3)."""
import math

import pytest
import torch
from torch import nn

from impumae.modalities import ModalitySpec
from tests.model.tiny_model import SPECS as TOKENISED, TINY, random_inputs
from impumae.model import MAEConfig, MultimodalMAE, assemble_decoder_tokens, draw_mask, masked_mse
from impumae.kinds.adapters import CubeEmbed, CubeReconstruct

SPECS = {**TOKENISED, "clinical": ModalitySpec("clinical", "clinical", (3,))}


def make_model(seed=0, **changes):
    torch.manual_seed(seed)
    return MultimodalMAE(SPECS, MAEConfig(**{**TINY, **changes}))


def make_batch(b=5, seed=1):
    x, present, _ = random_inputs(b, seed, present_rate=0.7)
    present["rna"][0] = False  # make sure each pattern occurs
    present["rna"][-1] = True
    return x, present


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def input_adapter(spec, width=32):
    return spec.kind_object.input_adapter(spec, width, MAEConfig())


def value_mask(spec):
    mask = spec.kind_object.value_mask(spec)
    return None if mask is None else torch.from_numpy(mask)


# --- adapters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rna", "dna", "mri", "wsi"])
def test_patchify_roundtrip_and_shapes(name):
    spec = SPECS[name]
    x = torch.randn(3, *spec.kind_object.item_shape(spec))
    patches = spec.kind_object.patchify(spec, x)
    assert patches.shape == (3, spec.n_tokens, spec.patch_dim)
    assert torch.equal(spec.kind_object.unpatchify(spec, patches), x)


def test_tabular_adapter_equals_conv1d_on_zero_padded_vector():
    spec = SPECS["rna"]
    adapter = input_adapter(spec)
    conv = nn.Conv1d(1, 32, kernel_size=32, stride=32)
    conv.weight.data = adapter.embed.weight.data[:, None, :]
    conv.bias.data = adapter.embed.bias.data
    x = torch.randn(2, 250)
    expected = conv(nn.functional.pad(x, (0, 6))[:, None]).transpose(1, 2)
    assert torch.allclose(adapter(spec.kind_object.patchify(spec, x)) - adapter.pos, expected, atol=1e-5)
    # padding excluded from the loss
    assert value_mask(spec).sum() == 250 and value_mask(SPECS["dna"]) is None


def test_volume_adapters_equal_two_strided_conv3d_and_convtranspose3d():
    spec = SPECS["mri"]  # patch 8 -> k1 = 2, k2 = 4
    embed = CubeEmbed(8, 32)
    conv1, conv2 = nn.Conv3d(1, 16, 2, 2), nn.Conv3d(16, 32, 4, 4)
    conv1.weight.data = embed.conv1.weight.data.reshape(16, 1, 2, 2, 2)
    conv1.bias.data = embed.conv1.bias.data
    # conv2 input features are ordered (sub-cube z, y, x, channel)
    conv2.weight.data = embed.conv2.weight.data.reshape(32, 4, 4, 4, 16).permute(0, 4, 1, 2, 3).contiguous()
    conv2.bias.data = embed.conv2.bias.data
    x = torch.randn(2, 16, 16, 16)
    expected = conv2(nn.functional.gelu(conv1(x[:, None]))).flatten(2).transpose(1, 2)
    assert torch.allclose(embed(spec.kind_object.patchify(spec, x)), expected, atol=1e-5)

    head = CubeReconstruct(8, 32)
    de1, de2 = nn.ConvTranspose3d(32, 16, 4, 4), nn.ConvTranspose3d(16, 1, 2, 2)
    de1.weight.data = head.deconv1.weight.data.T.reshape(32, 4, 4, 4, 16).permute(0, 4, 1, 2, 3).contiguous()
    de1.bias.data = head.deconv1.bias.data.reshape(64, 16)[0].clone()
    head.deconv1.bias.data = de1.bias.data.repeat(64)  # a ConvTranspose bias is per channel
    de2.weight.data = head.deconv2.weight.data.T.reshape(16, 1, 2, 2, 2)
    de2.bias.data = head.deconv2.bias.data[:1].clone()
    head.deconv2.bias.data = de2.bias.data.repeat(8)
    tokens = torch.randn(5, 32)
    expected = de2(nn.functional.gelu(de1(tokens[:, :, None, None, None])))[:, 0]  # [5, 8, 8, 8]
    assert torch.allclose(head(tokens), expected.reshape(5, 512), atol=1e-5)


def test_image_adapter_equals_conv2d_and_positions_are_2d():
    spec = SPECS["wsi"]
    adapter = input_adapter(spec)
    conv = nn.Conv2d(3, 32, 8, 8)
    conv.weight.data = adapter.embed.weight.data.reshape(32, 8, 8, 3).permute(0, 3, 1, 2).contiguous()
    conv.bias.data = adapter.embed.bias.data
    img = torch.rand(2, 32, 32, 3)
    expected = conv(img.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
    assert torch.allclose(adapter(spec.kind_object.patchify(spec, img)) - adapter.pos, expected, atol=1e-5)
    # 2-D sin-cos: tokens in the same grid row share the first half of their position
    assert torch.equal(adapter.pos[0, :16], adapter.pos[3, :16]) and not torch.equal(adapter.pos[0, 16:], adapter.pos[3, 16:])
    assert spec.kind_object.output_adapter(spec, 32, MAEConfig())(torch.randn(2, 16, 32)).shape == (2, 16, 8 * 8 * 3)


# --- masking and the decoder sequence -------------------------------------------------------------

def test_draw_mask_keeps_round_half_per_sample_and_masks_missing():
    present = torch.tensor([True, False, True])
    m = draw_mask(3, 13, 0.5, present, gen())
    assert m.keep.shape == (3, 7)  # round(6.5) -> 7 (half up)
    assert (~m.masked[0]).sum() == 7 and m.masked[1].all()
    assert not torch.equal(m.keep[0], m.keep[2])  # per-sample randomness
    for b in range(3):
        assert torch.equal(m.keep[b].sort().values, torch.nonzero(m.restore[b] < 7).reshape(-1))
    full = draw_mask(2, 5, 0.0, torch.tensor([True, True]))
    assert torch.equal(full.keep, torch.arange(5).expand(2, -1)) and not full.masked.any()


def test_assemble_decoder_tokens_puts_every_visible_token_back_at_its_own_position():
    b, n, d = 4, 9, 3
    present = torch.tensor([True, True, False, True])
    m = draw_mask(b, n, 0.5, present, gen(3))
    states = torch.cat([torch.full((b, 1, d), -1.0), (m.keep[:, :, None] + 1.0).expand(-1, -1, d)], dim=1)
    mask_token = torch.full((d,), 100.0)
    seq = assemble_decoder_tokens(states, m.restore, present, mask_token)
    assert seq.shape == (b, 1 + n, d)
    for i in range(b):
        if not present[i]:
            assert (seq[i] == 100.0).all()  # missing: all mask tokens, CLS slot too
            continue
        assert (seq[i, 0] == -1).all()
        for t in range(n):
            expected = 100.0 if m.masked[i, t] else t + 1.0
            assert (seq[i, 1 + t] == expected).all()


def test_decoder_input_of_the_whole_model_holds_each_token_at_its_own_slot():
    """Every modality (not only the first) lands at its own positions (trap 3.1)."""
    model = make_model()
    with torch.no_grad():
        for name in model.names:  # token state = its fixed position (unique per token)
            enc = model.input_adapters[name].embed
            for p in enc.parameters():
                p.zero_()
            model.encoders[name].blocks = nn.ModuleList()
            model.encoders[name].norm = nn.Identity()
        model.decoder_embed.weight.copy_(torch.eye(32))
        model.decoder_embed.bias.zero_()
        model.decoder_pos.zero_()
        model.modality_embed.zero_()
    seen = {}
    model.decoder_blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("seq", args[0].clone()))
    x, present = make_batch(6)
    out = model(x, present, generator=gen())
    parts = torch.split(seen["seq"], model.decoder_slots, dim=1)
    for name, part in zip(model.names, parts):
        pos = model.input_adapters[name].pos
        for i in range(6):
            for t in range(SPECS[name].n_tokens):
                expected = model.mask_token if out.masked[name][i, t] else pos[t]
                assert torch.allclose(part[i, 1 + t], expected), (name, i, t)
        assert out.masked[name][~present[name]].all()


# --- missing modalities --------------------------------------------------------------------------

def test_values_of_a_missing_modality_change_nothing():
    model = make_model()
    x, present = make_batch(6)
    out = model(x, present, generator=gen(5))
    x2 = dict(x)
    for name in ["rna", "mri"]:
        changed = x[name].clone()
        changed[~present[name]] = float("nan") if name == "rna" else 1e6
        x2[name] = changed
    wsi = x["wsi"].clone()
    wsi[~present["wsi"]] = 255
    x2["wsi"] = wsi
    out2 = model(x2, present, generator=gen(5))
    assert torch.equal(out.loss, out2.loss)
    for name in model.names:
        assert torch.equal(out.pred[name], out2.pred[name])
    assert torch.equal(model.impute(x, present)["dna"], model.impute(x2, present)["dna"])


def test_all_missing_modality_in_batch_gives_zero_for_it_and_finite_gradients():
    model = make_model()
    x, present = make_batch(4)
    present["mri"] = torch.zeros(4, dtype=torch.bool)
    x["mri"] = torch.full_like(x["mri"], float("nan"))
    out = model(x, present, generator=gen())
    assert out.losses["mri"].item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_non_finite_present_input_is_rejected():
    model = make_model()
    x, present = make_batch(3)
    present["dna"][:] = True
    x["dna"][1, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        model(x, present)


def test_batch_of_one():
    model = make_model()
    x, present = make_batch(1)
    present["dna"][0] = True
    out = model(x, present, generator=gen())
    assert torch.isfinite(out.loss) and out.pred["wsi"].shape == (1, 16, 192)
    out.loss.backward()


# --- loss ----------------------------------------------------------------------------------------

def test_masked_mse_by_hand_and_ignores_uncounted_tokens_and_padding():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[5.0, 5.0], [3.0, 1.0]]])
    target = torch.zeros_like(pred)
    counted = torch.tensor([[True, False], [False, True]])
    # counted values: (1, 4) and (9, 1) -> mean of 4 values = 15 / 4
    assert masked_mse(pred, target, counted).item() == pytest.approx(15 / 4)
    changed = pred.clone()
    changed[0, 1] = 99.0
    changed[1, 0] = -7.0
    assert masked_mse(changed, target, counted).item() == pytest.approx(15 / 4)
    # value mask: the second value of the second token is padding -> (1 + 4 + 9) / 3
    vm = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert masked_mse(pred, target, counted, vm).item() == pytest.approx(14 / 3)
    assert masked_mse(pred, target, torch.zeros_like(counted)).item() == 0.0


def test_model_loss_counts_masked_tokens_of_present_samples_only():
    model = make_model()
    x, present = make_batch(6)
    out = model(x, present, generator=gen(2))
    for name in model.names:
        counted = out.counted[name]
        assert torch.equal(counted, out.masked[name] & present[name][:, None])
        n_keep = int(SPECS[name].n_tokens * 0.5 + 0.5)
        assert (counted.sum(1)[present[name]] == SPECS[name].n_tokens - n_keep).all()
        err = (out.pred[name] - out.target[name]) ** 2
        vm = value_mask(SPECS[name])
        if vm is not None:
            err = err * vm
            by_hand = err[counted].sum() / (vm.sum(-1).expand_as(counted)[counted]).sum()
        else:
            by_hand = err[counted].mean()
        assert out.losses[name].item() == pytest.approx(by_hand.item(), rel=1e-5)
        # targets at visible tokens / missing samples do not enter: moving them changes nothing
        target = out.target[name].clone()
        target[~counted] += 123.0
        assert masked_mse(out.pred[name], target, counted, vm).item() == pytest.approx(out.losses[name].item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(sum(v.item() for v in out.losses.values()), rel=1e-6)


def test_image_choice_is_reproducible_with_a_generator():
    model = make_model()
    x, present = make_batch(8)
    a, b = model(x, present, generator=gen(9)), model(x, present, generator=gen(9))
    assert torch.equal(a.image_index["wsi"], b.image_index["wsi"]) and torch.equal(a.loss, b.loss)
    fixed = model(x, present, image_index=2, generator=gen(9))
    assert (fixed.image_index["wsi"] == 2).all()
    img = x["wsi"][:, 2].float() / 255
    assert torch.allclose(fixed.target["wsi"][present["wsi"]], SPECS["wsi"].kind_object.patchify(SPECS["wsi"], img)[present["wsi"]])


# --- imputation ---------------------------------------------------------------------------------

def test_impute_is_deterministic_and_keeps_present_values():
    model = make_model()
    x, present = make_batch(6)
    model.train()
    torch.manual_seed(1)
    first = model.impute(x, present)
    assert model.training  # mode restored
    torch.manual_seed(2)
    model.eval()
    second = model.impute(x, present)
    assert not model.training
    for name in model.names:
        assert torch.equal(first[name], second[name])
        shape = SPECS[name].shape
        assert first[name].shape == (6, *shape) and first[name].dtype == torch.float32
        ref = x[name].float() / 255 if name == "wsi" else x[name]
        assert torch.equal(first[name][present[name]], ref[present[name]])
        assert torch.isfinite(first[name]).all()
    recon = model.reconstruct(x, present)
    missing = ~present["wsi"]
    # a missing image modality: the same reconstruction for each of the P images
    assert torch.equal(recon["wsi"][missing][:, 0], recon["wsi"][missing][:, 2])


def test_encode_shapes_and_image_cls_average():
    model = make_model()
    x, present = make_batch(4)
    enc = model.encode(x, present)
    assert enc["rna"].states.shape == (4, 1 + 8, 32) and enc["mri"].states.shape == (4, 1 + 8, 32)
    assert enc["wsi"].states.shape == (4, 1, 32)
    assert torch.equal(enc["rna"].pad[:, 0], ~present["rna"])
    # the image token is the mean of the P images' CLS outputs
    p = torch.ones(4, dtype=torch.bool)
    one = [model.encoders["wsi"](model.input_adapters["wsi"](SPECS["wsi"].kind_object.patchify(SPECS["wsi"], x["wsi"][:, i].float() / 255)))[:, 0]
           for i in range(3)]
    assert torch.allclose(model.encode(x, {**present, "wsi": p})["wsi"].states[:, 0], torch.stack(one).mean(0), atol=1e-5)


def test_config_depths_and_paper_numbers():
    model = make_model(depth={"rna": 3})
    assert len(model.encoders["rna"].blocks) == 3 and len(model.encoders["mri"].blocks) == 1
    assert "clinical" not in model.names
    cfg = MAEConfig()
    assert (cfg.width, cfg.heads, cfg.mlp_ratio, cfg.decoder_width, cfg.decoder_depth, cfg.decoder_mlp,
            cfg.mask_ratio) == (256, 4, 4.0, 256, 3, 512, 0.5)
    assert math.isclose(sum(model.decoder_slots), sum(1 + SPECS[n].n_tokens for n in model.names))


# --- whole-modality hiding (trains the decoder for imputation) ---------------------------------

def test_hidden_modality_is_invisible_to_the_model_but_scored_by_the_loss():
    from impumae.model.mae import draw_hidden_modalities
    model = make_model().eval()
    x, present = make_batch()
    present = {n: torch.ones_like(p) for n, p in present.items()}
    hidden = {n: torch.zeros_like(p) for n, p in present.items()}
    hidden["rna"][1] = True
    out = model(x, present, generator=gen(3), image_index=0, hidden=hidden)
    assert out.counted["rna"][1].all()                 # every token of the hidden sample is scored
    x2 = {**x, "rna": x["rna"].clone()}
    x2["rna"][1] += 10.0                                # the hidden values change...
    out2 = model(x2, present, generator=gen(3), image_index=0, hidden=hidden)
    for name in ("dna", "mri", "wsi"):                  # ...nothing the model predicts
        assert torch.equal(out.pred[name], out2.pred[name])
    assert torch.equal(out.pred["rna"][1], out2.pred["rna"][1])
    assert out2.losses["rna"] > out.losses["rna"]       # but the loss sees them

    pa, pb = torch.ones(1000, dtype=torch.bool), torch.rand(1000, generator=gen(1)) < 0.5
    drawn = draw_hidden_modalities({"a": pa, "b": pb}, 0.5, gen(0))
    assert not (drawn["b"] & ~pb).any()                                  # only present ones are hidden
    assert ((pa & ~drawn["a"]) | (pb & ~drawn["b"])).all()               # something always stays visible
    assert 0.08 < drawn["a"].float().mean() < 0.17                     # 0.5 x P(b present and kept) = 0.125
    assert draw_hidden_modalities({"a": pa}, 0.5) is None                # one modality: nothing to hide
    assert draw_hidden_modalities({"a": pa, "b": pb}, 0.0) is None       # probability 0: the paper


def test_skipping_missing_samples_gives_the_dense_answer_with_less_work():
    """cfg.skip_missing computes encoders and output heads only where they matter; the loss, its
    gradients, the predictions and the encoder states of present samples are the dense ones."""
    x, present = make_batch(8, seed=3)
    hidden = {"rna": present["rna"] & (torch.arange(8) % 3 == 0)}
    answers = {}
    for skip in (False, True):
        model = make_model(skip_missing=skip)
        out = model(x, present, generator=gen(7), hidden=hidden, predict_missing=not skip)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        answers[skip] = (out, grads, model.encode(x, present))
    (dense, dense_grads, dense_enc), (sparse, sparse_grads, sparse_enc) = answers[False], answers[True]
    assert torch.allclose(dense.loss, sparse.loss, atol=1e-6)
    assert dense_grads.keys() == sparse_grads.keys()
    for name, grad in dense_grads.items():
        assert torch.allclose(grad, sparse_grads[name], atol=1e-6), name
    for name in dense.pred:
        p = present[name]
        assert torch.allclose(dense.pred[name][p], sparse.pred[name][p], atol=1e-6)
        assert not sparse.pred[name][~p].any()  # predict_missing=False: nothing computed there
        assert torch.allclose(dense_enc[name].states[p], sparse_enc[name].states[p], atol=1e-6)
        assert not sparse_enc[name].states[~p].any() and torch.equal(dense_enc[name].pad, sparse_enc[name].pad)


def test_skipping_missing_samples_keeps_imputation_unchanged():
    x, present = make_batch(6, seed=4)
    dense, sparse = make_model(skip_missing=False), make_model(skip_missing=True)
    for name, value in dense.impute(x, present).items():
        assert torch.allclose(value, sparse.impute(x, present)[name], atol=1e-6), name


@pytest.mark.parametrize("also_no_mri", [False, True])
def test_encode_when_no_sample_of_the_batch_has_an_image_modality(also_no_mri):
    """Found by the real cohort (H&E for 3 of 1,104 patients): a batch without any slide."""
    model = make_model()
    x, present = make_batch(4)
    present["wsi"] = torch.zeros(4, dtype=torch.bool)
    if also_no_mri:
        present["mri"] = torch.zeros(4, dtype=torch.bool)
    enc = model.encode(x, present)
    assert enc["wsi"].states.shape == (4, 1, 32) and not enc["wsi"].states.any()
    assert enc["wsi"].pad.all()


# --- the cross-modal linear term (MAEConfig.cross_linear) ---------------------------------------

TABULAR = {n: s for n, s in SPECS.items() if n in ("rna", "dna")}


def test_cross_linear_is_off_by_default_and_starts_as_the_plain_decoder():
    torch.manual_seed(0)
    plain = MultimodalMAE(SPECS, MAEConfig(**TINY)).eval()
    assert not any("cross_linear" in k for k in plain.state_dict())   # old checkpoints load unchanged
    torch.manual_seed(0)
    linear = MultimodalMAE(SPECS, MAEConfig(**TINY, cross_linear="learnt")).eval()
    assert sorted(linear.cross_sources) == ["dna", "rna"]              # tabular targets, tabular sources only
    assert linear.cross_sources["rna"] == ("dna",)
    assert linear.cross_linear["rna"].weight.shape == (250, 128 + 1)  # features of dna + its indicator
    missing = linear.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing.missing_keys) == sorted(f"cross_linear.{n}.{w}" for n in ("rna", "dna")
                                                  for w in ("weight", "bias"))
    x, present = make_batch()
    a = plain(x, present, generator=gen(2), image_index=0)
    b = linear(x, present, generator=gen(2), image_index=0)
    for name in SPECS:
        if name in a.pred:
            assert torch.equal(a.pred[name], b.pred[name])          # zero-initialised: adds exactly 0


def test_cross_linear_reads_only_the_sources_the_encoders_see():
    torch.manual_seed(0)
    model = MultimodalMAE(TABULAR, MAEConfig(**TINY, cross_linear="learnt")).eval()
    for lin in model.cross_linear.values():
        nn.init.normal_(lin.weight, std=0.1)
    x, present = make_batch(b=6)
    present = {"rna": torch.ones(6, dtype=torch.bool), "dna": torch.tensor([True, True, False, True, True, True])}
    hidden = {"rna": torch.zeros(6, dtype=torch.bool), "dna": torch.tensor([False, True, False, False, False, False])}
    out = model(x, present, mask_ratio=0.0, hidden=hidden)
    # by hand: rna's term for sample 0 (dna seen) and for 1 (dna hidden) and 2 (dna missing: zeros, indicator 0)
    lin = model.cross_linear["rna"]
    seen = torch.tensor([1., 0., 0., 1., 1., 1.])[:, None]
    by_hand = lin(torch.cat([x["dna"] * seen, seen], 1))
    assert torch.allclose(model.cross_linear_prediction("rna", {"dna": x["dna"] * present["dna"][:, None]},
                                                        {"dna": present["dna"] & ~hidden["dna"]}).reshape(6, -1)[:, :250],
                          by_hand, atol=1e-6)
    x2 = {n: v.clone() for n, v in x.items()}
    x2["dna"][1:3] += 5.0                                           # hidden (1) and missing (2) dna values change
    out2 = model(x2, present, mask_ratio=0.0, hidden=hidden)
    assert torch.equal(out.pred["rna"], out2.pred["rna"])            # nothing of rna's prediction moves
    x3 = {n: v.clone() for n, v in x.items()}
    x3["dna"][3] += 5.0                                              # a seen dna moves rna's prediction
    assert not torch.allclose(out.pred["rna"][3], model(x3, present, mask_ratio=0.0, hidden=hidden).pred["rna"][3])


def test_cross_linear_learns_a_linear_cross_modal_map_the_plain_decoder_misses():
    """rna = dna @ W + small noise; a few hundred steps with rna often hidden. Imputing rna from dna on
    new samples: the linear term explains most of the variance; the plain decoder of the same size does not."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 250, generator=g) / math.sqrt(128)

    def draw(n):
        dna = torch.randn(n, 128, generator=g)
        return {"dna": dna, "rna": dna @ w + 0.1 * torch.randn(n, 250, generator=g)}

    train, test = draw(256), draw(128)
    scores = {}
    for on in ("off", "learnt"):
        torch.manual_seed(0)
        model = MultimodalMAE(TABULAR, MAEConfig(**TINY, cross_linear=on))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        present = {n: torch.ones(64, dtype=torch.bool) for n in TABULAR}
        for step in range(150):
            rows = torch.randint(0, 256, (64,), generator=g)
            hidden = {"rna": torch.rand(64, generator=g) < 0.5, "dna": torch.zeros(64, dtype=torch.bool)}
            loss = model({n: v[rows] for n, v in train.items()}, present, generator=g, hidden=hidden).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        recon = model.reconstruct(test, {"rna": torch.zeros(128, dtype=torch.bool), "dna": torch.ones(128, dtype=torch.bool)})
        truth = test["rna"]
        scores[on] = float(1 - ((recon["rna"] - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum())
    assert scores["learnt"] > 0.8, scores
    assert scores["learnt"] > scores["off"] + 0.3, scores


def test_cross_linear_refuses_a_map_too_wide():
    from impumae.model import mae as mae_module
    wide = {"a": ModalitySpec("a", "tabular", (5000,), patch=250), "b": ModalitySpec("b", "tabular", (5000,), patch=250)}
    with pytest.raises(ValueError, match="cross_linear: the map to 'a'.*25,005,000 weights"):
        MultimodalMAE(wide, MAEConfig(**TINY, cross_linear="learnt"))
    assert mae_module.CROSS_LINEAR_MAX_WEIGHTS == 20_000_000
