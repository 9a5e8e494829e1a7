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
        try:
            TransformOptions.from_dict(space.transforms)
        except (TypeError, ValueError) as e:
            raise ValueError(f"search space file {path}: transforms: {e}") from None
        return space

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
