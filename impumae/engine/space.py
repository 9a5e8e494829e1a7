"""Search spaces from YAML.

A space file has four sections, and an optional fifth:

```yaml
model:    {width: 64, heads: 4, decoder_depth: 1, ...}   # MAEConfig, fixed for the search
pretrain: {epochs: 30, batch_size: 32, lr: 1.0e-3, ...}  # PretrainConfig, fixed (one pretraining
                                                          #   per subset and fold, shared by trials)
finetune: {batch_size: 32, weight_decay: 1.0e-2, ...}    # FinetuneConfig defaults
search:                                                   # what Optuna samples, per trial
  lr:         {type: loguniform, low: 1.0e-4, high: 3.0e-3}
  dropout:    {type: uniform, low: 0.0, high: 0.3}
  epochs:     {type: int, low: 5, high: 20}
  imputation: {type: categorical, choices: [decoder, mask_token, drop]}
transforms: {tabular_scaling: rank_gauss}                 # optional: TransformOptions of the fold-fitted
                                                          #   transforms (standard | clip | rank_gauss; clip: 3.0);
                                                          #   absent = standard scaling (as before)
```
Types: ``uniform``, ``loguniform``, ``int``, ``categorical``.

Model families (:mod:`impumae.families`): ``family`` is a searched choice, and a parameter
that belongs to one family (or several) says so with ``family:``; it is sampled only in the trials
of that family (Optuna's define-by-run space, :class:`ConditionalSpace`). A parameter without
``family:`` is sampled in every trial. A scikit-survival family's parameters are named
``<family>_<setting>`` for a setting of ``impumae.survival.baselines.MODEL_PARAMS``:

```yaml
search:
  family: {type: categorical, choices: [impumae, linear, rsf]}
  lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3, family: impumae}
  rsf_min_samples_leaf: {type: int, low: 5, high: 30, family: rsf}
  linear_alpha_ratio: {type: loguniform, low: 0.005, high: 0.5, family: linear}
```
A space without ``family`` searches impuTMAE alone, exactly as before (a plain distributions dict).

A space can start from another and change only what differs:

```yaml
extends: default.yaml                                     # relative to this file
search:
  freeze: {type: categorical, choices: [paper, none]}     # added; a parameter named again replaces it
```
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml

from impumae.data.transforms import TransformOptions
from impumae import families as model_families
from impumae.families import PARAM as FAMILY_PARAM

SECTIONS = ("model", "pretrain", "finetune", "search", "transforms")


@dataclass
class SearchSpace:
    model: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    transforms: dict = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, path: str | Path, _chain: tuple[Path, ...] = ()) -> "SearchSpace":
        """Read a space file. ``extends: other.yaml`` (relative to this file) starts from that space:
        each section's keys here add to or replace the parent's (a whole parameter at a time)."""
        path = Path(path)
        if path.resolve() in _chain:
            raise ValueError(f"search space file {path}: 'extends' loops back to itself "
                             f"({' -> '.join(str(p) for p in (*_chain, path.resolve()))})")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"search space file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ValueError(f"search space file {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"search space file {path}: expected a mapping of sections {SECTIONS}")
        parent = raw.pop("extends", None)
        unknown = set(raw) - set(SECTIONS)
        if unknown:
            raise ValueError(f"search space file {path}: unknown section(s) {sorted(unknown)}; "
                             f"expected {SECTIONS} (and optionally 'extends')")
        base = cls.load(path.parent / parent, (*_chain, path.resolve())) if parent else cls()
        space = cls(**{k: {**getattr(base, k), **dict(raw.get(k) or {})} for k in SECTIONS},
                    source=str(path) if not parent else f"{path} (extends {base.source})")
        space.optuna_distributions()  # validate now, not in the middle of a search
        space.conditions()
        try:
            TransformOptions.from_dict(space.transforms)
        except (TypeError, ValueError) as e:
            raise ValueError(f"search space file {path}: transforms: {e}") from None
        return space

    def families(self) -> list[str]:
        """The model families the space searches (``[impumae]`` without a ``family`` parameter)."""
        spec = self.search.get(FAMILY_PARAM)
        if spec is None:
            return [model_families.DEFAULT]
        if not isinstance(spec, dict) or spec.get("type") != "categorical" or not spec.get("choices"):
            raise ValueError(f"search space {self.source}: {FAMILY_PARAM!r} must be "
                             f"{{type: categorical, choices: [...]}} of {model_families.searchable_names()}")
        unknown = [f for f in spec["choices"] if not getattr(model_families.find(str(f)), "searchable", False)]
        if unknown:
            raise ValueError(f"search space {self.source}: unknown model famil{'y' if len(unknown) == 1 else 'ies'} "
                             f"{unknown}; choose from {model_families.searchable_names()}")
        return list(spec["choices"])

    def pretraining(self) -> str:
        """Whether the space's impuTMAE trials start from the pretrained MAE: ``"searched"`` (the
        ``pretrained`` parameter has both choices), ``"on"`` (the default) or ``"off"`` (``pretrained``
        fixed to false: the pretraining ablation). The search tags its runs with it, so a report can
        tell an ablation's holdout from a search that chose no pretraining on validation."""
        spec = self.search.get("pretrained", self.finetune.get("pretrained", True))
        values = {bool(v) for v in spec["choices"]} if isinstance(spec, dict) else {bool(spec)}
        return "searched" if len(values) > 1 else ("on" if values.pop() else "off")

    def conditions(self) -> dict[str, tuple[str, ...]]:
        """``{parameter: families it is sampled for}`` of the parameters with ``family:``, checked:
        the families are searched, and each family accepts the parameter (a scikit-survival family's
        names a setting: :meth:`impumae.families.Family.check_parameter`)."""
        searched = self.families()
        out = {}
        for name, spec in self.search.items():
            if not isinstance(spec, dict) or FAMILY_PARAM not in spec:
                continue
            where = f"search space {self.source}: parameter {name!r}"
            if name == FAMILY_PARAM:
                raise ValueError(f"{where} cannot itself depend on the family")
            if FAMILY_PARAM not in self.search:
                raise ValueError(f"{where} depends on the family, but the space does not search "
                                 f"'{FAMILY_PARAM}: {{type: categorical, choices: [...]}}'")
            conditional_on = spec[FAMILY_PARAM]
            conditional_on = (conditional_on,) if isinstance(conditional_on, str) else tuple(conditional_on)
            missing = [f for f in conditional_on if f not in searched]
            if missing:
                raise ValueError(f"{where}: family {missing} is not among the searched families {searched} "
                                 f"(search '{FAMILY_PARAM}: {{type: categorical, choices: [...]}}')")
            for family in conditional_on:
                model_families.get(family).check_parameter(name, where)
            out[name] = conditional_on
        return out

    def searcher_space(self, subsets: list[str] | None = None):
        """What OptunaSearch samples: the distributions dict of :meth:`optuna_distributions` (a space
        without conditional parameters: as before), or a :class:`ConditionalSpace`; None if empty."""
        dists = self.optuna_distributions(subsets)
        conditions = self.conditions()
        if not conditions:
            return dists or None
        return ConditionalSpace(dists, conditions)

    def optuna_distributions(self, subsets: list[str] | None = None) -> dict:
        dists = {}
        for name, spec in self.search.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise ValueError(f"search space {self.source}: parameter {name!r} needs a mapping with a 'type'")
            kind = spec["type"]
            try:
                if kind == "uniform":
                    dists[name] = optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]))
                elif kind == "loguniform":
                    dists[name] = optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]), log=True)
                elif kind == "int":
                    dists[name] = optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]))
                elif kind == "categorical":
                    dists[name] = optuna.distributions.CategoricalDistribution(list(spec["choices"]))
                else:
                    raise ValueError(f"unknown type {kind!r} (uniform, loguniform, int, categorical)")
            except (KeyError, ValueError, TypeError) as e:
                raise ValueError(f"search space {self.source}: parameter {name!r}: {e}") from None
        if subsets and len(subsets) > 1:
            dists["subset"] = optuna.distributions.CategoricalDistribution(list(subsets))
        return dists


class ConditionalSpace:
    """Optuna define-by-run space (``OptunaSearch(space=callable)``): ``family`` first, then every
    parameter that has no condition or whose condition names the trial's family, in file order.
    A class (not a closure) so a searcher saved for a resumed search pickles."""

    def __init__(self, distributions: dict, conditions: dict[str, tuple[str, ...]]):
        self.distributions = distributions
        self.conditions = conditions

    def __call__(self, trial) -> None:
        family = suggest(trial, FAMILY_PARAM, self.distributions[FAMILY_PARAM])
        for name, dist in self.distributions.items():
            if name != FAMILY_PARAM and family in self.conditions.get(name, (family,)):
                suggest(trial, name, dist)

    def sample_names(self, family: str) -> list[str]:
        """The parameters a trial of ``family`` samples (``family`` included)."""
        return [n for n in self.distributions if n == FAMILY_PARAM or family in self.conditions.get(n, (family,))]


def suggest(trial, name: str, dist):
    """``trial.suggest_*`` for an Optuna distribution (the define-by-run trial Ray hands over)."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, optuna.distributions.IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)
