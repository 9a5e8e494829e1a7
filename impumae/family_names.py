"""The names of the model families, in the one place every layer reads them.

The search (``impumae.engine``) fits and selects families, the export (``impumae.export``) saves
and loads the selected one, the report labels them: the export sits below the engine, so the names
cannot live in ``engine/families.py`` (which re-exports them). How a family is fitted stays in
``impumae.engine.families``; how it is exported, in ``impumae.export``.
"""
from __future__ import annotations

IMPUMAE = "impumae"
SKSURV_FAMILIES = ("linear", "coxnet", "coxph", "rsf", "gbsa")
FAMILIES = (IMPUMAE, *SKSURV_FAMILIES)
ENSEMBLE = "ensemble"         # not searched: the top configurations averaged (impumae.engine.ensemble)
FAMILY_PARAM = "family"       # the searched choice, and the key of a conditional parameter's family
LABELS = {IMPUMAE: "impuTMAE", "linear": "Cox elastic net (searched penalty)", "coxnet": "CoxNet",
          "coxph": "CoxPH", "rsf": "RSF", "gbsa": "GBSA", ENSEMBLE: "Ensemble of the top configurations"}
