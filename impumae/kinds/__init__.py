"""Modality kinds: everything that depends on what kind of data a modality holds, one object per kind.

A :class:`impumae.modalities.ModalitySpec` says *which* modality (name, shape, patch, depth); its
``kind`` names a :class:`Kind` registered here, which says *how* such data is validated, cut into
tokens, embedded and reconstructed, fitted on training patients, summarised for classical
baselines and stored. The model, the fold-fitted transforms and the store ask the kind; none of
them tests a kind's name. Built-in kinds (one module each): ``tabular``, ``volume``, ``image``,
``clinical``. A new kind is a subclass of :class:`Kind` (or of :class:`impumae.kinds.grid.GridKind`
for data cut into a regular grid of cubes or squares) passed to :func:`register`, in its own module
or in user code; no other file changes. For the kind to exist in every process (Ray workers, the
model loader, the commands), declare its module as a plugin (:mod:`impumae.plugins`).

Importing this package does not import torch (the store and the table builders use the kinds
too); the methods that build tensors or modules import it when called.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from impumae.kinds.positions import sincos_1d

if TYPE_CHECKING:
    import torch
    from torch import nn

    from impumae.kinds.fitted import ModalityTransform, TransformOptions
    from impumae.modalities import ModalitySpec


class Kind:
    """What one kind of modality is. Subclasses set the attributes and implement the methods.

    Attributes (class-level facts):

    - ``name``: the registry key, the value of ``ModalitySpec.kind``.
    - ``tokenised``: cut into tokens and encoded by the MAE (``clinical`` is not: it joins the
      survival head as a plain vector).
    - ``stacked``: a sample is a stack of items along axis 0, each tokenised on its own (``image``:
      the P tiles of a slide). Pretraining draws one item per sample, reconstruction runs once per
      item, fine-tuning averages the items' CLS states into one token.
    - ``fine_tunes_last_blocks``: under the paper's freeze policy the last encoder blocks of this
      kind stay trainable (``tabular``); other kinds' encoders are frozen.
    - store facts: ``storage_dtype`` (``float32`` or ``uint8``), ``nan_marks_missing_value`` (NaN
      inside a present sample is a missing value, kept for fold-fitted imputation; otherwise NaN is
      an error), ``has_feature_names`` (a sample is a vector of named features), ``default_compressor``
      (``"lz4"``, ``"zstd"`` or ``"none"``), ``default_value_type`` (a name of
      :mod:`impumae.kinds.value_types`).
    - ``transform``: the :class:`impumae.kinds.fitted.ModalityTransform` subclass fitted per fold.
    """

    name: str = ""
    tokenised: bool = True
    stacked: bool = False
    fine_tunes_last_blocks: bool = False
    storage_dtype: str = "float32"
    nan_marks_missing_value: bool = False
    has_feature_names: bool = False
    default_compressor: str = "lz4"
    default_value_type: str = "raw"
    transform: type["ModalityTransform"]

    # -- the spec --------------------------------------------------------------------------------
    def validate(self, spec: "ModalitySpec") -> None:
        """Raise ValueError when ``spec.shape`` / ``spec.patch`` do not suit this kind."""
        raise NotImplementedError

    def default_patch(self, spec: "ModalitySpec") -> int:
        """The patch a cohort builder gives ``spec`` when none is asked for (``--patch NAME=P``): the
        spec's own (a kind whose tokens depend on a feature count chooses from it)."""
        return spec.patch

    def n_tokens(self, spec: "ModalitySpec") -> int:
        """Tokens per sample (per item of a stacked kind); 0 when not tokenised."""
        raise NotImplementedError

    def patch_dim(self, spec: "ModalitySpec") -> int:
        """Values in one token's patch (what the output adapter reconstructs); 0 when not tokenised."""
        raise NotImplementedError

    def items_per_sample(self, spec: "ModalitySpec") -> int:
        """How many items a sample stacks (``spec.shape[0]`` for a stacked kind, else 1)."""
        return spec.shape[0] if self.stacked else 1

    def item_shape(self, spec: "ModalitySpec") -> tuple[int, ...]:
        """The shape one token grid is cut from: the sample, or one item of a stacked kind."""
        return spec.shape[1:] if self.stacked else spec.shape

    def chunk_shape(self, spec: "ModalitySpec") -> tuple[int, ...]:
        """The store's chunk of ``modalities/<m>`` [N, *shape]: one item of one patient."""
        return (1, 1, *spec.shape[1:]) if self.stacked else (1, *spec.shape)

    # -- tokens (tensors; the caller has torch) ----------------------------------------------------
    def patchify(self, spec: "ModalitySpec", x: "torch.Tensor") -> "torch.Tensor":
        """``[B, *item_shape]`` -> ``[B, n_tokens, patch_dim]``."""
        raise ValueError(f"modality {spec.name!r} of kind {self.name!r} is not tokenised")

    def unpatchify(self, spec: "ModalitySpec", patches: "torch.Tensor") -> "torch.Tensor":
        """Inverse of :meth:`patchify`: ``[B, n_tokens, patch_dim]`` -> ``[B, *item_shape]``."""
        raise ValueError(f"modality {spec.name!r} of kind {self.name!r} is not tokenised")

    def value_mask(self, spec: "ModalitySpec") -> np.ndarray | None:
        """float32 [n_tokens, patch_dim], 1 = a real value, 0 = padding the loss ignores; None = all real."""
        return None

    def positions(self, spec: "ModalitySpec", width: int) -> np.ndarray:
        """Fixed positions of the tokens, float32 [n_tokens, width] (default: 1-D sin-cos)."""
        return sincos_1d(width, np.arange(self.n_tokens(spec)))

    def input_adapter(self, spec: "ModalitySpec", width: int, config: Any) -> "nn.Module":
        """patches [B, N, patch_dim] -> tokens [B, N, width] (an ``impumae.kinds.adapters.InputAdapter``).

        ``config``: the model's ``MAEConfig`` (a kind may read its own options there).
        """
        raise ValueError(f"modality {spec.name!r} of kind {self.name!r} has no input adapter")

    def output_adapter(self, spec: "ModalitySpec", width: int, config: Any) -> "nn.Module":
        """decoder tokens [B, N, width] -> patches [B, N, patch_dim] (an ``OutputAdapter``)."""
        raise ValueError(f"modality {spec.name!r} of kind {self.name!r} has no output adapter")

    # -- data --------------------------------------------------------------------------------------
    def fit_transform(self, name: str, value_type: str, train_values: np.ndarray,
                      sd_threshold: float, options: "TransformOptions | None" = None) -> "ModalityTransform":
        """The fold-fitted transform of modality ``name``, fitted on the training rows that have it.
        ``options`` (:class:`impumae.kinds.fitted.TransformOptions`): a kind that has a choice
        (tabular scaling) reads it; by default none does."""
        return self.transform(name, self.name, value_type).fit(train_values, sd_threshold)

    def baseline_summary(self, values: np.ndarray) -> np.ndarray:
        """float64 [N, k]: what a classical baseline (CoxPH, RSF) sees of N present samples.

        ``values``: [N, *shape] as the fold-fitted transform outputs them.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<kind {self.name!r}>"

    # A kind is one registered object: copies of a model share it, pickles refer to it by name.
    def __copy__(self) -> "Kind":
        return self

    def __deepcopy__(self, memo) -> "Kind":
        return self

    def __reduce__(self):
        return get, (self.name,)


_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make ``kind`` known under ``kind.name``; returns it. Registering the same object again is a no-op."""
    if not kind.name:
        raise ValueError(f"{kind!r} has no name")
    known = _REGISTRY.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"a kind named {kind.name!r} is already registered ({type(known).__name__})")
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    """The kind registered as ``name``; ValueError naming the registered kinds otherwise. A name not
    registered yet loads the declared plugins first (:mod:`impumae.plugins`), so a kind shipped as a
    plugin is known in every process: Ray workers, the model loader, the commands."""
    if name not in _REGISTRY:
        from impumae import plugins  # noqa: PLC0415 (only when a name is not registered)
        plugins.load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown kind {name!r}; registered kinds: {', '.join(_REGISTRY)} (a kind from another "
                         "package is found through its entry point in the group 'impumae.kinds' or the "
                         "IMPUMAE_PLUGINS environment variable: impumae.plugins)") from None


def names() -> tuple[str, ...]:
    """The registered kinds, built-in first."""
    return tuple(_REGISTRY)


# The built-in kinds register themselves (imported last: they subclass Kind).
from impumae.kinds import tabular, volume, image, clinical  # noqa: E402,F401
