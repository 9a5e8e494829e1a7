"""The multimodal masked autoencoder of impuTMAE (modality-agnostic core).

A batch is ``x: {name: Tensor [B, *spec.shape]}`` and ``present: {name: BoolTensor [B]}``.
Images may be float in [0, 1] or uint8 (divided by 255 here), channels-last ``[B, P, H, W, 3]``.

Input policy: the values of a *present* sample must be finite (fold-fitted transforms fill NaN
upstream; ``MAEConfig.check_finite`` asserts it). The values of a *missing* sample are ignored:
they are replaced by zeros on entry, so NaN or anything else there changes nothing.

Pretraining forward (per modality, per sample):
1. patchify, embed (input adapter + fixed positions);
2. keep ``round(N * (1 - mask_ratio))`` tokens drawn at random (argsort of uniform noise, as in
   facebookresearch/mae); every sample keeps the same count, so the batch needs no padding;
3. prepend the modality's learnable CLS, run the modality's encoder (pre-LN ViT blocks, final LN).
   Attention is within one sample and one modality, so a missing sample's (zero) row cannot reach
   any other sample or modality here; it is discarded in the next step;
4. decoder sequence, per modality (:func:`assemble_decoder_tokens`): Linear(width -> dec_width) of
   the CLS and visible tokens, then un-shuffle so that each visible token returns to its own
   position and the learned mask token fills the masked positions; a missing modality (present
   False for that sample) is all mask tokens, its CLS slot included, so nothing of its values
   enters. Modalities are concatenated only after this (trap 3.1), fixed 1-D sin-cos positions over
   the whole sequence plus a learned per-modality embedding are added;
5. decoder blocks, LN, per-modality output adapter -> patches; loss = MSE over the masked tokens of
   present samples (visible tokens, missing samples and tabular zero-padding excluded); total = sum
   over modalities; a modality with no present sample in the batch contributes exactly 0.

Everything modality-specific is asked of the modality's kind (``spec.kind_object``, see
``impumae.kinds``): patchify / unpatchify, the input and output adapters, the loss's value mask.
Stacked kinds (``image``: P tiles per patient) in pretraining: one of the P items per patient is
drawn at random (``generator`` makes it reproducible) and tokenised; ``image_index`` picks it explicitly.

No attention mask is needed in the MAE (so the fastest SDPA kernels apply): the encoder attends
within one sample's modality, and the decoder's slots are all real tokens or mask tokens. Boolean
key-padding masks (True = excluded, never added to logits: trap 3.2) are supported by :class:`Block`
and used by the survival fusion.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from impumae.kinds.positions import sincos_1d
from impumae.modalities import ModalitySpec


@dataclass
class MAEConfig:
    width: int = 256
    heads: int = 4
    mlp_ratio: float = 4.0
    depth: dict[str, int] = field(default_factory=dict)  # per-modality override of spec.depth
    default_depth: int = 2                              # for a spec with depth 0
    decoder_width: int = 256
    decoder_depth: int = 3
    decoder_heads: int = 4
    decoder_mlp: int = 512
    mask_ratio: float = 0.5
    volume_hidden: int = 16
    check_finite: bool = True  # assert present inputs are finite (one device sync per modality)
    skip_missing: bool = True  # encode/decode only the samples that need it (see MultimodalMAE.rows_to_compute)
    # a linear map from the other tabular modalities' seen values to each tabular modality, added to the
    # decoder's output (MultimodalMAE.cross_linear_prediction): "off" = the paper's decoder only; "learnt" =
    # zero-initialised and trained by the masked loss; "ridge" = fitted by ridge regression on the
    # pretraining patients before the first epoch (train.pretrain_loop.fit_cross_linear), then held fixed
    cross_linear: str = "off"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MAEConfig":
        return cls(**d)


CROSS_LINEAR_MODES = ("off", "learnt", "ridge")
CROSS_LINEAR_MAX_WEIGHTS = 20_000_000  # MAEConfig.cross_linear: 1,544 genes <-> 20 flags is ~31k


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), x + MLP(LN(x)); fused qkv, SDPA, GELU MLP.

    ``pad``: optional BoolTensor [B, T], True = this key is excluded (gets no attention). A query row
    needs at least one non-padded key.
    """

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attend = None if pad is None else ~pad[:, None, None, :]  # bool: True = may attend
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attend,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Encoder(nn.Module):
    """A modality's encoder: learnable CLS + ``depth`` blocks + final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.cls, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T, width] -> states [B, 1 + T, width] (CLS first)."""
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


@dataclass
class TokenMask:
    """Which tokens of one modality the encoder sees. ``keep`` [B, K] and ``restore`` [B, N] are
    token indices (visible = tokens.gather(keep); original order = shuffled.gather(restore));
    ``masked`` [B, N] bool, True = hidden from the encoder (missing samples included)."""
    keep: torch.Tensor
    restore: torch.Tensor
    masked: torch.Tensor


def visible_tokens(n_tokens: int, mask_ratio: float) -> int:
    """Tokens of a sample the encoder sees at ``mask_ratio``: ``round(n_tokens * (1 - mask_ratio))``."""
    return min(n_tokens, max(0, int(n_tokens * (1.0 - mask_ratio) + 0.5)))


def draw_mask(batch: int, n_tokens: int, mask_ratio: float, present: torch.Tensor,
              generator: torch.Generator | None = None) -> TokenMask:
    """Per-sample random masking keeping ``round(n_tokens * (1 - mask_ratio))`` tokens.

    With nothing to mask (mask_ratio 0) the order is the identity and no random number is drawn.
    A missing sample (present False) is fully masked.
    """
    device = present.device
    n_keep = visible_tokens(n_tokens, mask_ratio)
    if n_keep == n_tokens:
        shuffle = torch.arange(n_tokens, device=device).expand(batch, -1)
    else:
        noise = torch.rand(batch, n_tokens, device=device, generator=generator)
        shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    masked = (restore >= n_keep) | ~present[:, None]
    return TokenMask(keep=shuffle[:, :n_keep], restore=restore, masked=masked)


def draw_hidden_modalities(present: dict[str, torch.Tensor], probability: float,
                           generator: torch.Generator | None = None) -> dict[str, torch.Tensor] | None:
    """For each sample, hide each present modality with ``probability`` (MultiMAE-style modality
    masking), never hiding every present modality of a sample. Returns {name: [B] bool} or None.

    The paper masks 50% of the tokens of every present modality and nothing more, so the decoder
    never practises what imputation asks of it: rebuilding a whole modality from the others.
    Hiding whole modalities now and then trains exactly that (``probability`` 0 = the paper).
    """
    if probability <= 0 or len(present) < 2:
        return None
    names = list(present)
    pres = torch.stack([present[n].reshape(-1).bool() for n in names], dim=1)          # [B, M]
    draw = torch.rand(pres.shape, device=pres.device, generator=generator) < probability
    hidden = pres & draw
    nothing_left = (pres & ~hidden).sum(1) == 0
    hidden[nothing_left] = False
    return {n: hidden[:, i] for i, n in enumerate(names)}


def assemble_decoder_tokens(states: torch.Tensor, restore: torch.Tensor, present: torch.Tensor,
                            mask_token: torch.Tensor) -> torch.Tensor:
    """One modality's decoder input in original token order (trap 3.1 done right).

    states: [B, 1 + K, D] (CLS then the K visible tokens in ``keep`` order, already projected to
    the decoder width); restore: [B, N]; present: [B] bool; mask_token: [D].
    Returns [B, 1 + N, D]: CLS slot, then token n = its own visible state if it was kept, else the
    mask token. A missing sample is all mask tokens (CLS slot included).
    """
    b, k1, d = states.shape
    n = restore.shape[1]
    mask = mask_token.to(states.dtype).expand(b, n + 1 - k1, d)
    shuffled = torch.cat([states[:, 1:], mask], dim=1)                       # [B, N, D], keep order
    tokens = torch.gather(shuffled, 1, restore[:, :, None].expand(-1, -1, d))  # original order
    seq = torch.cat([states[:, :1], tokens], dim=1)
    return torch.where(present[:, None, None], seq, mask_token.to(states.dtype))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, counted: torch.Tensor,
               value_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the values of the ``counted`` tokens ([B, N] bool).

    ``value_mask`` [N, patch_dim] excludes padding values. No counted token -> exactly 0 (no NaN).
    """
    err = (pred.float() - target.float()) ** 2
    if value_mask is None:
        per_token = err.mean(-1)
        weight = counted.float()
        return (per_token * weight).sum() / weight.sum().clamp(min=1.0)
    err = err * value_mask
    weight = counted.float()
    values = (weight * value_mask.sum(-1)).sum()
    return (err.sum(-1) * weight).sum() / values.clamp(min=1.0)


@dataclass
class MAEOutput:
    loss: torch.Tensor                   # scalar, sum over modalities
    losses: dict[str, torch.Tensor]      # per modality
    pred: dict[str, torch.Tensor]        # [B, N, patch_dim] reconstructed patches
    target: dict[str, torch.Tensor]      # [B, N, patch_dim] input patches (zeros where missing)
    masked: dict[str, torch.Tensor]      # [B, N] bool, hidden from the encoder
    counted: dict[str, torch.Tensor]     # [B, N] bool, in the loss (masked and present)
    image_index: dict[str, torch.Tensor]  # stacked kinds (images): [B] which item was used


@dataclass
class Encoded:
    """A modality's encoder states for the survival model: ``states`` [B, T, width] (CLS first),
    ``pad`` [B, T] bool (True = missing sample, excluded by a key-padding mask)."""
    states: torch.Tensor
    pad: torch.Tensor


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Evaluation mode and no gradient inside; the previous train/eval mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


class MultimodalMAE(nn.Module):
    def __init__(self, specs: dict[str, ModalitySpec], cfg: MAEConfig | None = None):
        super().__init__()
        cfg = cfg or MAEConfig()
        self.cfg = cfg
        self.specs = {name: spec for name, spec in specs.items() if spec.tokenised}
        if not self.specs:
            raise ValueError("MultimodalMAE needs at least one tokenised modality")
        unknown = set(cfg.depth) - set(self.specs)
        if unknown:
            raise ValueError(f"MAEConfig.depth names modalities the model does not have: {sorted(unknown)}")
        self.names = list(self.specs)
        self.kinds = {n: s.kind_object for n, s in self.specs.items()}
        mlp = int(cfg.width * cfg.mlp_ratio)
        self.input_adapters = nn.ModuleDict(
            {n: self.kinds[n].input_adapter(s, cfg.width, cfg) for n, s in self.specs.items()})
        self.encoders = nn.ModuleDict(
            {n: Encoder(cfg.width, self.depth_of(n), cfg.heads, mlp) for n in self.names})
        self.decoder_embed = nn.Linear(cfg.width, cfg.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(cfg.decoder_width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.modality_embed = nn.Parameter(torch.zeros(len(self.names), cfg.decoder_width))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_width, cfg.decoder_heads, cfg.decoder_mlp) for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(cfg.decoder_width)
        self.output_adapters = nn.ModuleDict(
            {n: self.kinds[n].output_adapter(s, cfg.decoder_width, cfg) for n, s in self.specs.items()})
        # decoder slots: per modality a CLS slot then its N tokens, modalities in self.names order
        slots = [1 + self.specs[n].n_tokens for n in self.names]
        self.decoder_slots = slots
        total = sum(slots)
        self.register_buffer("decoder_pos", torch.from_numpy(sincos_1d(cfg.decoder_width, torch.arange(total).numpy())),
                             persistent=False)
        self.register_buffer("slot_modality", torch.repeat_interleave(torch.arange(len(slots)), torch.tensor(slots)),
                             persistent=False)
        if cfg.cross_linear not in CROSS_LINEAR_MODES:
            raise ValueError(f"MAEConfig.cross_linear {cfg.cross_linear!r}: expected one of {CROSS_LINEAR_MODES}")
        self.cross_sources = self._cross_linear_sources() if cfg.cross_linear != "off" else {}
        self.cross_linear = nn.ModuleDict({
            n: nn.Linear(sum(self.specs[o].shape[0] + 1 for o in sources), self.specs[n].shape[0])
            for n, sources in self.cross_sources.items()})
        for n in self.names:
            mask = self.kinds[n].value_mask(self.specs[n])
            self.register_buffer(f"valid_{n}", torch.from_numpy(mask) if mask is not None else torch.ones(0),
                                 persistent=False)
        self.apply(_init_weights)
        for linear in self.cross_linear.values():  # starts as the plain decoder: the map adds 0
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
            linear.requires_grad_(cfg.cross_linear == "learnt")  # "ridge": set once, then held fixed

    # -- helpers ---------------------------------------------------------------------------------
    def depth_of(self, name: str) -> int:
        return self.cfg.depth.get(name, self.specs[name].depth or self.cfg.default_depth)

    def _cross_linear_sources(self) -> dict[str, tuple[str, ...]]:
        """{tabular target: the other tabular modalities} for ``cfg.cross_linear`` (checked for size)."""
        tabular = [n for n in self.names if self.kinds[n].has_feature_names]
        out = {n: tuple(o for o in tabular if o != n) for n in tabular}
        out = {n: s for n, s in out.items() if s}
        for n, sources in out.items():
            size = sum(self.specs[o].shape[0] + 1 for o in sources) * self.specs[n].shape[0]
            if size > CROSS_LINEAR_MAX_WEIGHTS:
                raise ValueError(f"MAEConfig.cross_linear: the map to {n!r} from {list(sources)} would have {size:,} "
                                 f"weights (more than {CROSS_LINEAR_MAX_WEIGHTS:,}); turn cross_linear off for "
                                 "modalities this wide")
        return out

    def cross_linear_inputs(self, name: str, inputs: dict[str, torch.Tensor],
                            seen: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, sum of source features + n sources]: the seen sources' values (0 where hidden or missing),
        then one 0/1 indicator per source (``self.cross_sources[name]`` order)."""
        parts, flags = [], []
        for o in self.cross_sources[name]:
            s = seen[o].to(device=inputs[o].device, dtype=inputs[o].dtype).reshape(-1, 1)
            parts.append(inputs[o].reshape(inputs[o].shape[0], -1) * s)
            flags.append(s)
        return torch.cat(parts + flags, dim=1)

    def cross_linear_prediction(self, name: str, inputs: dict[str, torch.Tensor],
                                seen: dict[str, torch.Tensor]) -> torch.Tensor:
        """``cfg.cross_linear``'s term for modality ``name``, patchified [B, N, patch_dim].

        A linear map of the values of the other tabular modalities that the encoders see for the sample (a source
        hidden or missing for a sample counts as 0, its training-fold mean after the standardising
        transforms, and a 0/1 indicator per source says which are seen), so it is what ridge
        regression from the other modalities is, learnt jointly with the decoder by the same masked
        loss. The decoder carries the within-modality part (visible tokens of ``name``); this term
        carries the cross-modal linear part, which the decoder alone did not learn on GBM/LGG
        (docs/results-gbmlgg.md, imputation section).
        """
        out = self.cross_linear[name](self.cross_linear_inputs(name, inputs, seen))
        return self.kinds[name].patchify(self.specs[name], out)

    def value_mask(self, name: str) -> torch.Tensor | None:
        mask = getattr(self, f"valid_{name}")
        return mask if mask.numel() else None

    def prepare_input(self, name: str, x: torch.Tensor, present: torch.Tensor,
                      shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Float input with missing samples zeroed (uint8 images / 255); checks present are finite.

        ``shape``: the expected per-sample shape (default ``spec.shape``; one item of a stacked kind
        for the pretraining path, which picks the item before converting it).
        """
        shape = self.specs[name].shape if shape is None else shape
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"modality {name!r}: expected samples of shape {tuple(shape)}, got {tuple(x.shape[1:])}")
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        elif not x.is_floating_point():
            x = x.float()
        keep = present.reshape(-1, *([1] * (x.dim() - 1)))
        x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if self.cfg.check_finite and not bool(torch.isfinite(x).all()):
            raise ValueError(f"modality {name!r}: a present sample has non-finite values; fill NaN with "
                             "the fold-fitted transforms before the model")
        return x

    def rows_to_compute(self, keep: torch.Tensor) -> torch.Tensor | None:
        """Indices of the samples worth computing for one modality, or None for all of them.

        With ``cfg.skip_missing`` the encoders see only the samples they can see and the output
        adapters run only where a prediction is used. Real cohorts have sparse imaging (2 MRI in
        1,104 patients), so a volume or slide encoder over every sample wastes nearly all of its
        work. The samples left out get zero states, which every caller replaces (mask tokens,
        key padding) or never reads (the loss counts present samples only). Dense when every
        sample is kept, when the option is off, and under ``torch.compile`` (static shapes).
        """
        if not self.cfg.skip_missing or torch.compiler.is_compiling():
            return None
        rows = keep.nonzero().squeeze(1)
        return None if rows.numel() == keep.numel() else rows

    @staticmethod
    def _scatter_rows(values: torch.Tensor, rows: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Values of ``rows`` -> [batch, ...] with zeros elsewhere (identity when rows is None)."""
        if rows is None:
            return values
        return values.new_zeros(batch, *values.shape[1:]).index_copy(0, rows, values)

    @staticmethod
    def _one_item(x: torch.Tensor, image_index, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, P, *item] -> ([B, *item], index [B]): one item of a stacked sample (random unless given)."""
        b, n_items = x.shape[0], x.shape[1]
        if image_index is None:
            index = torch.randint(n_items, (b,), device=x.device, generator=generator)
        else:
            index = torch.as_tensor(image_index, device=x.device).expand(b)
        return x[torch.arange(b, device=x.device), index], index

    # -- pretraining -----------------------------------------------------------------------------
    def forward(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                mask_ratio: float | None = None, generator: torch.Generator | None = None,
                image_index: int | torch.Tensor | None = None,
                hidden: dict[str, torch.Tensor] | None = None, predict_missing: bool = True) -> MAEOutput:
        """Masked reconstruction. ``hidden`` ({name: [B] bool}, optional): present samples whose
        modality is hidden from the encoders entirely, as if missing, but still scored by the loss
        (see :func:`draw_hidden_modalities`): this trains the decoder to impute a whole modality.
        ``predict_missing=False`` (training): ``pred`` of a missing sample is left at zero, since
        the loss never reads it; imputation needs the default."""
        mask_ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        decoder_input, targets, masks, used_images, presents, inputs, seens = [], {}, {}, {}, {}, {}, {}
        for name in self.names:
            spec, kind = self.specs[name], self.kinds[name]
            p = present[name].to(device=x[name].device, dtype=torch.bool).reshape(-1)
            seen = p if hidden is None or name not in hidden else p & ~hidden[name].to(p.device).reshape(-1)
            xm = x[name]
            if kind.stacked:
                if tuple(xm.shape[1:]) != spec.shape:
                    raise ValueError(f"modality {name!r}: expected samples of shape {spec.shape}, got {tuple(xm.shape[1:])}")
                xm, used_images[name] = self._one_item(xm, image_index, generator)
            xm = self.prepare_input(name, xm, p, shape=kind.item_shape(spec))
            target = kind.patchify(spec, xm)
            mask = draw_mask(target.shape[0], spec.n_tokens, mask_ratio, seen, generator)
            rows = self.rows_to_compute(seen)
            tokens = self.input_adapters[name](target if rows is None else target[rows])
            keep = mask.keep if rows is None else mask.keep[rows]
            visible = torch.gather(tokens, 1, keep[:, :, None].expand(-1, -1, tokens.shape[2]))
            states = self._scatter_rows(self.decoder_embed(self.encoders[name](visible)), rows, target.shape[0])
            decoder_input.append(assemble_decoder_tokens(states, mask.restore, seen, self.mask_token))
            targets[name], masks[name], presents[name] = target, mask, p
            inputs[name], seens[name] = xm, seen
        seq = torch.cat(decoder_input, dim=1)
        seq = seq + (self.decoder_pos + self.modality_embed[self.slot_modality]).to(seq.dtype)
        for block in self.decoder_blocks:
            seq = block(seq)
        seq = self.decoder_norm(seq)
        preds, losses, counted = {}, {}, {}
        for name, part in zip(self.names, torch.split(seq, self.decoder_slots, dim=1)):
            rows = None if predict_missing else self.rows_to_compute(presents[name])
            tokens = part[:, 1:] if rows is None else part[rows, 1:]
            preds[name] = self._scatter_rows(self.output_adapters[name](tokens), rows, part.shape[0])
            if name in self.cross_linear:
                linear = self.cross_linear_prediction(name, inputs, seens).to(preds[name].dtype)
                preds[name] = preds[name] + (linear if rows is None else linear * presents[name][:, None, None])
            counted[name] = masks[name].masked & presents[name][:, None]
            losses[name] = masked_mse(preds[name], targets[name], counted[name], self.value_mask(name))
        return MAEOutput(loss=torch.stack(list(losses.values())).sum(), losses=losses, pred=preds,
                         target=targets, masked={n: m.masked for n, m in masks.items()}, counted=counted,
                         image_index=used_images)

    # -- imputation ------------------------------------------------------------------------------
    def reconstruct(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Deterministic full reconstruction in input space, ``{name: [B, *spec.shape]}`` float.

        Eval mode, no gradient, nothing masked but the missing modalities (trap 3.3). With a stacked
        modality of P items (images) the model is run once per item index p (item p of every sample
        is the visible one): the stacked modality's reconstruction is [B, P, *item] (pass p gives
        item p), the other modalities' reconstructions are averaged over the P passes, so each uses
        all items. A missing stacked modality gets the same reconstruction in every pass.
        """
        stacked = [n for n in self.names if self.kinds[n].stacked]
        n_passes = max([self.kinds[n].items_per_sample(self.specs[n]) for n in stacked], default=1)
        items: dict[str, list[torch.Tensor]] = {n: [] for n in stacked}
        sums: dict[str, torch.Tensor] = {}
        with eval_mode(self):
            for p in range(n_passes):  # one pass at a time: 10 passes of slides and volumes add up to GBs
                pred = self.forward(x, present, mask_ratio=0.0, image_index=(p if stacked else None)).pred
                for name in self.names:
                    spec, kind = self.specs[name], self.kinds[name]
                    if kind.stacked:
                        if p < kind.items_per_sample(spec):
                            items[name].append(kind.unpatchify(spec, pred[name].float()))
                    else:
                        sums[name] = pred[name].float() + sums[name] if name in sums else pred[name].float()
                del pred
        return {name: (torch.stack(items[name], dim=1) if name in items
                       else self.kinds[name].unpatchify(self.specs[name], sums[name] / n_passes))
                for name in self.names}

    def impute(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: [B, *spec.shape]}`` float: the input where present, the reconstruction where missing.

        Deterministic (see :meth:`reconstruct`); uint8 inputs (images) come back as float in [0, 1] scale.
        """
        recon = self.reconstruct(x, present)
        filled = {}
        for name in self.names:
            p = present[name].to(device=recon[name].device, dtype=torch.bool).reshape(-1)
            xm = self.prepare_input(name, x[name], p)
            filled[name] = torch.where(p.reshape(-1, *([1] * (xm.dim() - 1))), xm, recon[name].to(xm.dtype))
        return filled

    # -- encoding for fine-tuning ----------------------------------------------------------------
    def encode(self, x: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
               names: list[str] | None = None) -> dict[str, Encoded]:
        """Unmasked encoder states per modality (gradients flow; the caller decides what is frozen).

        CLS + N tokens [B, 1 + N, width]; a stacked kind (image): every one of the P items is encoded
        and their CLS outputs averaged into one token [B, 1, width] (paper, WSI fine-tuning).
        ``pad`` marks missing samples (all their tokens); their states are zero (see :meth:`rows_to_compute`).
        """
        out = {}
        for name in names or self.names:
            spec, kind = self.specs[name], self.kinds[name]
            p = present[name].to(device=x[name].device, dtype=torch.bool).reshape(-1)
            rows = self.rows_to_compute(p)
            # select before converting: a batch of slides as float is ~8 MB a patient
            xm, pm = (x[name], p) if rows is None else (x[name][rows], p[rows])
            xm = self.prepare_input(name, xm, pm)
            if kind.stacked:
                b, n_items = xm.shape[:2]
                xm = xm.reshape(b * n_items, *kind.item_shape(spec))
            states = self.encoders[name](self.input_adapters[name](kind.patchify(spec, xm)))
            if kind.stacked:
                states = states[:, 0].reshape(b, n_items, states.shape[-1]).mean(1, keepdim=True)
            states = self._scatter_rows(states, rows, p.shape[0])
            out[name] = Encoded(states=states, pad=(~p)[:, None].expand(-1, states.shape[1]))
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
