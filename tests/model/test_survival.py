"""SurvivalModel: shapes, missing-modality invariance per imputation strategy, freezing, gradients."""
import pytest
import torch

from impumae.model import MAEConfig, MultimodalMAE, SurvivalConfig, SurvivalModel
from tests.model.tiny_model import SPECS, TINY, random_inputs

STRATEGIES = ["decoder", "mask_token", "drop"]


def make_model(imputation="decoder", n_clinical=3, freeze="paper", seed=0):
    torch.manual_seed(seed)
    mae = MultimodalMAE(SPECS, MAEConfig(**TINY))
    return SurvivalModel(mae, SurvivalConfig(imputation=imputation, n_clinical=n_clinical, fusion_heads=2,
                                             freeze=freeze))


def make_batch(b=5, seed=1):
    x, present, g = random_inputs(b, seed, present_rate=0.6)
    present["rna"][0] = True
    present["mri"][0] = False
    clinical = torch.randn(b, 3, generator=g)
    return x, present, clinical


@pytest.mark.parametrize("imputation", STRATEGIES)
def test_logits_shape_and_finite(imputation):
    model = make_model(imputation)
    x, present, clinical = make_batch(5)
    logits = model(x, present, clinical)
    assert logits.shape == (5, 20) and torch.isfinite(logits).all()


@pytest.mark.parametrize("imputation", STRATEGIES)
def test_values_of_missing_modalities_change_nothing(imputation):
    model = make_model(imputation).eval()
    x, present, clinical = make_batch(6)
    before = model(x, present, clinical)
    x2 = {n: v.clone() for n, v in x.items()}
    x2["rna"][~present["rna"]] = float("nan")
    x2["mri"][~present["mri"]] = 1e5
    x2["wsi"][~present["wsi"]] = 200
    x2["dna"][~present["dna"]] = -3.0
    after = model(x2, present, clinical)
    assert torch.equal(before, after)
    # while a present modality's values do matter
    x3 = {n: v.clone() for n, v in x.items()}
    x3["rna"][0] += 1.0
    assert not torch.allclose(model(x3, present, clinical)[0], before[0])


@pytest.mark.parametrize("imputation", STRATEGIES)
def test_batch_of_one_and_a_patient_with_nothing_but_clinical(imputation):
    model = make_model(imputation)
    x, present, clinical = make_batch(1)
    assert model(x, present, clinical).shape == (1, 20)
    x, present, clinical = make_batch(3)
    for n in present:
        present[n][1] = False
    logits = model(x, present, clinical)
    assert torch.isfinite(logits).all()
    logits.sum().backward()


def test_paper_freeze_policy():
    model = make_model()
    mae = model.mae
    for name in ("mri", "wsi"):
        assert not any(p.requires_grad for p in mae.input_adapters[name].parameters())
        assert not any(p.requires_grad for p in mae.encoders[name].blocks.parameters())
    for name in ("rna", "dna"):
        blocks = mae.encoders[name].blocks
        assert not any(p.requires_grad for p in blocks[0].parameters())
        assert all(p.requires_grad for p in blocks[-1].parameters())
        assert not any(p.requires_grad for p in mae.input_adapters[name].parameters())
    assert all(mae.encoders[n].cls.requires_grad for n in mae.names)
    decoder = [mae.mask_token, mae.modality_embed, *mae.decoder_embed.parameters(),
               *mae.decoder_blocks.parameters(), *mae.output_adapters.parameters()]
    assert not any(p.requires_grad for p in decoder)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert id(model.head.weight) in trainable and id(model.cls) in trainable


def test_other_freeze_policies():
    none = make_model(freeze="none").mae
    assert all(p.requires_grad for p in none.encoders.parameters())
    assert all(p.requires_grad for p in none.input_adapters.parameters())
    frozen = make_model(freeze="encoders").mae
    assert [n for n, p in frozen.encoders.named_parameters() if p.requires_grad] == [f"{n}.cls" for n in frozen.names]


@pytest.mark.parametrize("imputation", STRATEGIES)
def test_optimiser_step_changes_trainable_weights_only(imputation):
    model = make_model(imputation)
    x, present, clinical = make_batch(6)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)
    loss = model(x, present, clinical).pow(2).mean()
    loss.backward()
    mae = model.mae
    # gradients reach the unfrozen parts: the last tabular block, the CLS tokens, fusion and head
    assert mae.encoders["rna"].blocks[-1].qkv.weight.grad.abs().sum() > 0
    assert mae.encoders["rna"].cls.grad.abs().sum() > 0
    assert mae.encoders["mri"].cls.grad is not None
    assert model.fusion.qkv.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in mae.decoder_blocks.parameters())  # imputation has no gradient
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        if not p.requires_grad:
            assert not changed, name
    for name in ["mae.encoders.rna.blocks.1.qkv.weight", "mae.encoders.wsi.cls", "head.weight", "fusion.proj.weight"]:
        assert not torch.equal(dict(model.named_parameters())[name].detach(), before[name]), name


def test_decoder_imputation_equals_encoding_the_imputed_inputs():
    model = make_model("decoder").eval()
    x, present, clinical = make_batch(4)
    filled = model.mae.impute(x, present)
    everyone = {n: torch.ones_like(v) for n, v in present.items()}
    direct = make_model("drop").eval()
    direct.load_state_dict(model.state_dict())
    # 'drop' with everything present is plain encoding + fusion: same as 'decoder' on imputed inputs
    assert torch.allclose(model(x, present, clinical), direct(filled, everyone, clinical), atol=1e-5)


def test_clinical_features_are_required_and_used():
    model = make_model(n_clinical=3).eval()
    x, present, clinical = make_batch(3)
    with pytest.raises(ValueError, match="clinical"):
        model(x, present)
    other = clinical.clone()
    other[:, 0] += 1
    assert not torch.allclose(model(x, present, clinical), model(x, present, other))
    assert make_model(n_clinical=0)(x, present).shape == (3, 20)
