"""Fold-fitted preprocessing: everything that learns from data is fitted on training patients only.

``FoldTransforms.fit`` sees the training patients of one fold (never validation or holdout
patients) and fits, per modality, the transform its kind defines (``impumae.kinds``:
``kind.fit_transform``), with the steps the modality's value type implies
(``impumae.kinds.value_types``):

- ``tabular`` (:class:`impumae.kinds.tabular.TabularTransform`): ``fpkm_uq`` keeps features whose
  training standard deviation exceeds ``sd_threshold`` (0.1), then ``log1p``, then divides each
  sample by its own median; ``zscore`` also gets the filter; ``beta`` / ``binary`` / ``raw`` keep
  every feature; every feature is then scaled as the options' ``tabular_scaling`` says
  (:class:`TransformOptions`: ``standard`` = training mean and SD, the default; ``clip`` =
  standardised and clipped to +-``clip`` SDs; ``rank_gauss``; ``binary`` always ``standard``),
  NaN -> 0 (the training mean, or median under rank-gauss);
- ``clinical``: continuous columns z-scored with training mean and std, 0/1 columns kept, NaN ->
  the training mean;
- ``volume``: already z-scored at ingest; NaN -> 0;
- ``image``: kept uint8 (no fitting); the model scales each batch to [0, 1].

``inverse`` maps model-space values (e.g. decoder imputations) back to the store's input space
(see each kind's transform). A missing modality's rows become zeros: the model never looks at them
(``present`` says so). The fitted state is a plain dict (``to_dict``/``from_dict``) so it travels
with checkpoints; dicts written before the transforms were split per kind still load.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from impumae.kinds.fitted import ModalityTransform, TransformOptions
from impumae.modalities import ModalitySpec

__all__ = ["FoldTransforms", "ModalityTransform", "TransformOptions"]


def _learns(kind) -> bool:
    """Whether a kind's fold-fitted transform learns from the training values (image and volume: no)."""
    from impumae.kinds import Kind  # noqa: PLC0415
    return not (type(kind).fit_transform is Kind.fit_transform and kind.transform.fit is ModalityTransform.fit)


@dataclass
class FoldTransforms:
    """The fitted transforms of every modality of one training set."""

    transforms: dict[str, ModalityTransform] = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray], train_idx: np.ndarray,
            specs: dict[str, ModalitySpec], value_types: dict[str, str], patient_ids=None,
            sd_threshold: float = 0.1, **options) -> "FoldTransforms":
        """Fit on the rows ``train_idx`` (training patients) of every modality in ``arrays``.
        ``options``: :class:`TransformOptions` fields (``tabular_scaling``, ``clip``, ...), the
        search space's ``transforms:`` section; none = standard scaling."""
        train_idx = np.asarray(train_idx)
        chosen = TransformOptions.from_dict(options)
        fitted = {}
        for name, values in arrays.items():
            spec = specs[name]
            rows = train_idx[present[name][train_idx]]
            if not _learns(spec.kind_object):
                rows = rows[:0]  # nothing to fit: a streamed modality's training rows are not read for it
            fitted[name] = spec.kind_object.fit_transform(name, value_types.get(name, "raw"), values[rows], sd_threshold,
                                                          chosen)
        ids = [] if patient_ids is None else [str(p) for p in np.asarray(patient_ids)[train_idx]]
        return cls(fitted, ids)

    def apply(self, arrays: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.transforms[name].apply(arrays[name], present[name]) for name in arrays}

    def inverse(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model-space values -> the store's input space, per modality (see ``ModalityTransform.inverse``)."""
        return {name: self.transforms[name].inverse(v) for name, v in values.items()}

    def output_specs(self, specs: dict[str, ModalitySpec]) -> dict[str, ModalitySpec]:
        return {name: self.transforms[name].output_spec(specs[name]) for name in self.transforms}

    def to_dict(self) -> dict:
        return {"transforms": {k: t.to_dict() for k, t in self.transforms.items()}, "train_ids": list(self.train_ids)}

    @classmethod
    def from_dict(cls, d: dict) -> "FoldTransforms":
        return cls({k: ModalityTransform.from_dict(t) for k, t in d["transforms"].items()}, list(d["train_ids"]))
