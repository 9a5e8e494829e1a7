"""Survival model on top of a pretrained :class:`MultimodalMAE` (impuTMAE fine-tuning).

forward(x, present, clinical) -> hazard logits [B, n_bins] (discrete-time logistic hazard).

1. Missing modalities, ``SurvivalConfig.imputation``:
   - ``"decoder"`` (paper): ``mae.impute`` fills each missing modality in input space (eval mode,
     no gradient, deterministic), then every modality is encoded as if it were real data;
   - ``"mask_token"``: a missing modality's states are a learnable per-modality token (initialised
     from the MAE decoder's mask token when the widths match) plus the modality's fixed positions;
   - ``"drop"``: a missing modality's tokens are excluded from fusion by a boolean key-padding mask.
2. Encoding: ``mae.encode`` (CLS + tokens per modality; a stacked kind (images): the CLS of each
   of the P items, averaged into one token).
3. Fusion: a global learnable CLS + all modality tokens concatenated, one pre-LN self-attention
   block (width, ``fusion_heads``, dropout) with a boolean key-padding mask, final LayerNorm,
   readout from the global CLS (never padded, so attention is always defined).
4. Head: dropout, concatenation of the clinical features [B, n_clinical], Linear -> n_bins.
   :meth:`SurvivalModel.init_hazard_bias` starts its bias at given per-bin logits (the training
   Kaplan-Meier hazard, ``TimeBins.baseline_hazard_logits``): the model starts from the population
   curve instead of a hazard of 0.5 per bin.
5. Linear path (``SurvivalConfig.linear_path``, off by default): a direct route from the features
   to the risk, ``w . f`` added to every hazard logit, with ``f`` the model-space values of the
   present modalities whose kind has named features (tabular; measured values only, a missing
   modality contributes 0, never a decoder imputation) and the clinical features. ``w`` starts at
   zero (the model at initialisation is the model without the path, exactly) and is kept small by
   its own L2, :meth:`SurvivalModel.penalty` = ``linear_l2 * ||w||^2``, which the fine-tuning loss
   adds (no weight decay on it: :meth:`SurvivalModel.parameter_groups`).

Freezing (``SurvivalConfig.freeze``), applied to the MAE in place at construction:
   - ``"paper"``: encoders (input adapter, blocks, final LN) frozen, but for the kinds that
     fine-tune their last blocks (``Kind.fine_tunes_last_blocks``: tabular), whose last
     ``tabular_trainable_blocks`` blocks and final LN stay trainable (volume and image: all frozen);
   - ``"encoders"``: every encoder frozen; ``"none"``: every encoder trainable.
   In all policies the CLS tokens are trainable and the decoder (used only for imputation, under
   no_grad) is frozen. :meth:`SurvivalModel.trainable_parameters` lists what an optimiser should get.
   Imputation uses the model's current encoders (the frozen part dominates; the few trainable blocks
   drift little in 20 fine-tuning epochs).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from impumae.model.mae import Block, Encoded, MultimodalMAE

IMPUTATIONS = ("decoder", "mask_token", "drop")
FREEZE_POLICIES = ("paper", "encoders", "none")


@dataclass
class SurvivalConfig:
    n_bins: int = 20
    dropout: float = 0.1
    fusion_heads: int = 4
    fusion_mlp_ratio: float = 4.0
    freeze: str = "paper"
    tabular_trainable_blocks: int = 1
    imputation: str = "decoder"
    n_clinical: int = 0
    linear_path: bool = False      # a zero-initialised linear risk over the tabular and clinical features
    linear_l2: float = 0.0         # penalty() = linear_l2 * sum of squared linear-path weights

    def __post_init__(self):
        if self.imputation not in IMPUTATIONS:
            raise ValueError(f"unknown imputation {self.imputation!r}; expected one of {IMPUTATIONS}")
        if self.freeze not in FREEZE_POLICIES:
            raise ValueError(f"unknown freeze policy {self.freeze!r}; expected one of {FREEZE_POLICIES}")

    def to_dict(self) -> dict:
        return asdict(self)


def apply_freeze(mae: MultimodalMAE, policy: str, tabular_trainable_blocks: int = 1) -> None:
    """Set ``requires_grad`` on the MAE's parameters for fine-tuning (see the module docstring)."""
    for p in mae.parameters():
        p.requires_grad_(False)
    for name in mae.names:
        encoder, kind = mae.encoders[name], mae.kinds[name]
        trainable: list[nn.Module] = []
        if policy == "none":
            trainable = [encoder, mae.input_adapters[name]]
        elif policy == "paper" and kind.fine_tunes_last_blocks and tabular_trainable_blocks > 0:
            trainable = list(encoder.blocks[-tabular_trainable_blocks:]) + [encoder.norm]
        for module in trainable:
            for p in module.parameters():
                p.requires_grad_(True)
        encoder.cls.requires_grad_(True)


class SurvivalModel(nn.Module):
    def __init__(self, mae: MultimodalMAE, cfg: SurvivalConfig | None = None):
        super().__init__()
        cfg = cfg or SurvivalConfig()
        self.cfg, self.mae = cfg, mae
        width = mae.cfg.width
        apply_freeze(mae, cfg.freeze, cfg.tabular_trainable_blocks)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.cls, std=0.02)
        self.fusion = Block(width, cfg.fusion_heads, int(width * cfg.fusion_mlp_ratio), dropout=cfg.dropout)
        self.fusion_norm = nn.LayerNorm(width)
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(width + cfg.n_clinical, cfg.n_bins)
        if cfg.imputation == "mask_token":
            self.missing_tokens = nn.ParameterDict()
            for name in mae.names:
                start = (mae.mask_token.detach().clone() if mae.cfg.decoder_width == width
                         else torch.randn(width) * 0.02)
                self.missing_tokens[name] = nn.Parameter(start)
                spec, kind = mae.specs[name], mae.kinds[name]
                # the tokens mae.encode gives: CLS + n_tokens, or one averaged CLS for a stacked kind
                n_tokens = 0 if kind.stacked else spec.n_tokens
                pos = torch.cat([torch.zeros(1, width), torch.from_numpy(kind.positions(spec, width)[:n_tokens])])
                self.register_buffer(f"missing_pos_{name}", pos, persistent=False)
        self.linear_modalities = [n for n in mae.names if mae.kinds[n].has_feature_names]
        if cfg.linear_path:
            n_features = sum(mae.specs[n].shape[0] for n in self.linear_modalities) + cfg.n_clinical
            if n_features == 0:
                raise ValueError("linear_path needs features: no modality's kind has named features "
                                 f"({list(mae.names)}) and there are no clinical features")
            # skip_init + zeros: no draw from the RNG, so the rest of a seeded model is the same with or without it
            self.linear = nn.utils.skip_init(nn.Linear, n_features, 1, bias=False)
            nn.init.zeros_(self.linear.weight)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def linear_parameters(self) -> list[nn.Parameter]:
        """The linear path's weights (regularised by :meth:`penalty`, not by weight decay)."""
        return [self.linear.weight] if self.cfg.linear_path else []

    def parameter_groups(self, weight_decay: float, linear_lr: float | None = None) -> list[dict]:
        """AdamW parameter groups: the trainable parameters with ``weight_decay``, and the linear
        path's weights (when on) without (their L2 is :meth:`penalty`), at learning rate
        ``linear_lr`` when given (else the optimiser's)."""
        linear = {id(p) for p in self.linear_parameters()}
        groups = [{"params": [p for p in self.trainable_parameters() if id(p) not in linear],
                   "weight_decay": weight_decay}]
        if linear:
            groups.append({"params": self.linear_parameters(), "weight_decay": 0.0,
                           **({} if linear_lr is None else {"lr": linear_lr})})
        return groups

    def penalty(self) -> torch.Tensor:
        """``linear_l2 * ||w||^2`` of the linear path (0 without it); the fine-tuning loss adds it."""
        if not self.cfg.linear_path:
            return self.head.bias.new_zeros(())
        return self.cfg.linear_l2 * self.linear.weight.pow(2).sum()

    @torch.no_grad()
    def init_hazard_bias(self, logits) -> None:
        """Set the hazard head's bias to per-bin ``logits`` [n_bins] (e.g. the training Kaplan-Meier
        hazard, ``TimeBins.baseline_hazard_logits``)."""
        logits = torch.as_tensor(logits, dtype=self.head.bias.dtype, device=self.head.bias.device)
        if logits.shape != self.head.bias.shape:
            raise ValueError(f"init_hazard_bias: expected {tuple(self.head.bias.shape)} logits, got {tuple(logits.shape)}")
        self.head.bias.copy_(logits)

    def linear_features(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                        clinical: torch.Tensor | None) -> torch.Tensor:
        """[B, F]: what the linear path weighs: the measured features (a missing modality: 0) and
        the clinical ones."""
        parts = [torch.where(present[n].reshape(-1)[:, None].bool(), x[n], 0.0) for n in self.linear_modalities]
        if self.cfg.n_clinical:
            parts.append(clinical)
        return torch.cat(parts, dim=1).to(self.linear.weight.dtype)

    def linear_risk(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                    clinical: torch.Tensor | None) -> torch.Tensor:
        """[B, 1]: the linear path over the measured features (a missing modality contributes 0)."""
        return self.linear(self.linear_features(x, present, clinical))

    def _missing_states(self, name: str) -> torch.Tensor:
        """[1, T, width]: the states that stand for a missing modality under ``mask_token``."""
        return (self.missing_tokens[name] + getattr(self, f"missing_pos_{name}"))[None]

    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                clinical: torch.Tensor | None = None) -> torch.Tensor:
        names = self.mae.names
        batch = x[names[0]].shape[0]
        present = {n: present[n].to(device=x[n].device, dtype=torch.bool).reshape(-1) for n in names}
        measured = x
        if self.cfg.imputation == "decoder":
            x = self.mae.impute(x, present)
            encoded = self.mae.encode(x, {n: torch.ones_like(present[n]) for n in names})
        else:
            encoded = self.mae.encode(x, present)
        states, pads = [self.cls.expand(batch, -1, -1)], [torch.zeros(batch, 1, dtype=torch.bool, device=self.cls.device)]
        for name in names:
            enc: Encoded = encoded[name]
            s, pad = enc.states, enc.pad
            if self.cfg.imputation == "mask_token":
                s = torch.where(present[name][:, None, None], s, self._missing_states(name).to(s.dtype))
                pad = torch.zeros_like(pad)
            states.append(s)
            pads.append(pad)
        seq, pad = torch.cat(states, dim=1), torch.cat(pads, dim=1)
        fused = self.fusion_norm(self.fusion(seq, pad=pad))[:, 0]
        features = self.head_dropout(fused)
        if self.cfg.n_clinical:
            if clinical is None or clinical.shape[-1] != self.cfg.n_clinical:
                raise ValueError(f"expected clinical features [B, {self.cfg.n_clinical}], got "
                                 f"{None if clinical is None else tuple(clinical.shape)}")
            features = torch.cat([features, clinical.to(features.dtype)], dim=1)
        logits = self.head(features)
        if self.cfg.linear_path:
            logits = logits + self.linear_risk(measured, present, clinical).to(logits.dtype)
        return logits
