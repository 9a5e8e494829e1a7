"""Nested cross-validation's statistics: coverage of the out-of-fold predictions, pooling them on
one grid, metrics per outer fold and pooled, selection stability, the selection rules compared on the
same predictions, and the summary's table.

Pure functions of the outer folds' saved predictions and summaries (``impumae.engine.nested``
runs the outer folds and calls them): no Ray, no Tune, no MLflow, so the report and tests use them
without starting anything.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from impumae.engine.selection import one_se_family
from impumae import families as model_families
from impumae.survival.metrics import bootstrap_ci, interpolate_survival

if TYPE_CHECKING:
    from impumae.engine.search import SearchOptions

METRICS = ("c_index", "ibs", "cs_score", "c_index_harrell")


def outer_name(repeat: int, outer_fold: int) -> str:
    return f"r{repeat}-outer{outer_fold}"


def check_coverage(outers: list[dict], anchor_ids: np.ndarray, repeat: int) -> None:
    """Every patient with the anchor modality has exactly one OOF prediction in ``repeat``."""
    counts = Counter(pid for o in outers for pid in o["predictions"]["patient_id"])
    twice = sorted(p for p, c in counts.items() if c > 1)
    missing = sorted(set(map(str, anchor_ids)) - set(counts))
    extra = sorted(set(counts) - set(map(str, anchor_ids)))
    if twice or missing or extra:
        raise RuntimeError(f"repeat {repeat}: out-of-fold predictions do not cover the anchor patients once each: "
                           f"{len(twice)} twice (e.g. {twice[:3]}), {len(missing)} missing (e.g. {missing[:3]}), "
                           f"{len(extra)} without the anchor modality (e.g. {extra[:3]})")


def pooled_predictions(outers: list[dict]) -> dict:
    """One repeat's OOF predictions on the common grid (the union of the outer folds' grids)."""
    grid = np.unique(np.concatenate([o["predictions"]["grid"] for o in outers]))
    surv = np.concatenate([interpolate_survival(o["predictions"]["survival"], o["predictions"]["grid"], grid)
                           for o in outers])
    def pick(key: str) -> np.ndarray:
        return np.concatenate([o["predictions"][key] for o in outers])
    return {"grid": grid, "survival": surv, "patient_id": pick("patient_id"), "time": pick("time").astype(float),
            "event": pick("event").astype(int), "outer": np.concatenate([[o["outer"]] * len(o["predictions"]["time"])
                                                                        for o in outers])}


def selection_stability(outers: list[dict]) -> dict:
    """How often each value of each configuration key (subset, family, ...) and each fixed epoch was
    chosen. A key counts only among the outer folds whose configuration has it: a parameter of one
    family is reported among the outer folds that chose that family, not as a ``null`` choice of the
    others."""
    keys = sorted({k for o in outers for k in o["config"]})
    counts = {k: Counter(json.dumps(o["config"][k], default=str) for o in outers if k in o["config"]) for k in keys}
    counts["fixed_epoch"] = Counter(str(o["fixed_epoch"]) for o in outers)
    return {k: dict(c.most_common()) for k, c in counts.items()}


def per_outer_rows(entries: list[dict]) -> list[dict]:
    """Per outer fold, a model's anchor-condition outer-test metrics (``entries``: the outer folds'
    scorings of one model: the selected one's, or one family's)."""
    rows = []
    for o in entries:
        res = o["holdout"].get("anchor", {})
        rows.append({"outer": o["outer"], "repeat": o["split"]["repeat"], "n": res.get("n"),
                     "events": res.get("events"), "config": o["config"], "fixed_epoch": o["fixed_epoch"],
                     **{m: res[m] for m in METRICS if m in res}})
    return rows


def over_outer_folds(per_outer: list[dict]) -> dict:
    """Mean ± SD (ddof 1) of each metric over the outer folds that have it."""
    out = {}
    for m in METRICS:
        values = np.array([row[m]["estimate"] for row in per_outer if m in row], float)
        out[m] = {"mean": float(values.mean()) if len(values) else float("nan"),
                  "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n_outer": len(values)}
    return out


def pooled_metrics(entries: list[dict], anchor_ids: np.ndarray, repeat: int, opts: SearchOptions) -> tuple[dict, dict]:
    """(pooled OOF metrics with bootstrap CIs, the pooled predictions) of one repeat's outer folds."""
    check_coverage(entries, anchor_ids, repeat)
    p = pooled_predictions(entries)
    ci = bootstrap_ci(p["survival"], p["grid"], p["time"], p["event"], p["time"], p["event"],
                      n_boot=opts.n_boot, seed=opts.seed)
    return ({"repeat": repeat, "n": len(p["time"]), "events": int(p["event"].sum()),
             **{m: {"estimate": v[0], "low": v[1], "high": v[2]} for m, v in ci.items()}}, p)


def summarise_model(entries: list[dict], splits: list[dict], anchor_ids: np.ndarray, opts: SearchOptions) -> tuple[dict, dict | None]:
    """One model's nested numbers (the selected one's, or one family's; ``entries``: its scorings,
    one per outer fold where it was scored): per outer fold, mean ± sd over outer folds, and per
    repeat whose every outer fold scored it the pooled OOF metrics; a repeat with an outer fold
    missing is listed in ``incomplete_repeats`` (its missing outer folds in ``missing_outer_folds``).
    Returns (that summary, the first pooled repeat's predictions or None)."""
    per_outer = per_outer_rows(entries)
    have = {o["outer"] for o in entries}
    pooled, incomplete, missing, first = [], [], [], None
    for repeat in sorted({s["repeat"] for s in splits}):
        names = [outer_name(s["repeat"], s["outer_fold"]) for s in splits if s["repeat"] == repeat]
        absent = [n for n in names if n not in have]
        if absent:
            incomplete.append(repeat)
            missing += absent
            continue
        row, p = pooled_metrics([o for o in entries if o["split"]["repeat"] == repeat], anchor_ids, repeat, opts)
        pooled.append(row)
        first = p if first is None else first
    return {"per_outer": per_outer, "over_outer_folds": over_outer_folds(per_outer), "pooled": pooled,
            "complete": not incomplete, "incomplete_repeats": incomplete, "missing_outer_folds": missing}, first


def family_order(names) -> list[str]:
    """Families in the registry's order (:func:`impumae.families.order`; others after, sorted)."""
    return model_families.order(names)


RULE_LABELS = {"best": "best mean validation CS-score", "one_se": "one-standard-error rule across families",
               "family_ensemble": "average of every family's best configuration",
               "family_ensemble_3": "average of the top 3 families' best configurations",
               "family_ensemble_2": "average of the top 2 families' best configurations"}


def rule_choice(by_family: dict[str, dict], rule: str, n_inner_folds: int) -> list[str]:
    """The families whose outer-test predictions a selection rule would have used in one outer fold,
    from each family's best configuration's inner validation mean and SD (``by_family``: the
    outer fold's family scorings)."""
    rows = {f: {"family": f, "mean_val_cs_score": e["mean_val_cs_score"], "std_val_cs_score": e["std_val_cs_score"]}
            for f, e in by_family.items()}
    ranked = sorted(rows, key=lambda f: -rows[f]["mean_val_cs_score"])
    if rule == "best":   # the engine's 'best' takes complete trials only: not a family ASHA cut short
        complete = [f for f in ranked if not by_family[f].get("stopped_early")]
        return (complete or ranked)[:1]
    if rule == "one_se":
        return [one_se_family(rows, n_inner_folds)]
    k = int(rule.rsplit("_", 1)[1]) if rule[-1].isdigit() else len(ranked)
    return ranked[:k]


def rule_comparison(outers: list[dict], splits: list[dict], anchor_ids: np.ndarray, opts) -> dict:
    """What each selection rule would have scored, from the same nested run: in every outer fold the
    rule picks from the families' inner-validation scores (never the outer test), and its outer test
    predictions are that family's (an ensemble: the mean of the chosen families' survival curves on
    their shared grid); then pooled over outer folds like any model. Only when every family was
    scored in every outer fold. ``{rule: {"pooled": [...], "chosen": {outer: families}}}``."""
    families = {f for o in outers for f in o.get("by_family", {})}
    if len(families) < 2 or any(set(o.get("by_family", {})) != families for o in outers):
        return {}
    scores = [e.get("mean_val_cs_score") for o in outers for e in o["by_family"].values()]
    if any(v is None or not np.isfinite(v) for v in scores):   # summaries that predate the validation scores
        return {}
    n_inner = opts.folds or 0
    out = {}
    for rule in ("best", "one_se", "family_ensemble_2", "family_ensemble_3", "family_ensemble"):
        entries, chosen = [], {}
        for o in outers:
            picks = rule_choice(o["by_family"], rule, n_inner)
            chosen[o["outer"]] = picks
            first = o["by_family"][picks[0]]["predictions"]
            surv = np.mean([interpolate_survival(o["by_family"][f]["predictions"]["survival"],
                                                 o["by_family"][f]["predictions"]["grid"], first["grid"])
                            for f in picks], axis=0)
            entries.append({"outer": o["outer"], "split": o["split"], "predictions": {**first, "survival": surv}})
        pooled = []
        for repeat in sorted({s["repeat"] for s in splits}):
            row, _ = pooled_metrics([e for e in entries if e["split"]["repeat"] == repeat], anchor_ids, repeat, opts)
            pooled.append(row)
        out[rule] = {"label": RULE_LABELS[rule], "pooled": pooled, "chosen": chosen}
    return out


def _ci_cell(v) -> str:
    return f"{v['estimate']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" if isinstance(v, dict) else "-"


def aggregate_rows(model: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(label, n, events, C-index, IBS, CS-score) of a model's nested summary (the selected one's or
    a family's): mean ± sd over outer folds, each pooled repeat, and the repeats left incomplete."""
    folds = model["over_outer_folds"]
    rows = [(f"mean ± sd over {folds['c_index']['n_outer']} outer folds", "", "",
             *(f"{folds[m]['mean']:.3f} ± {folds[m]['sd']:.3f}" for m in ("c_index", "ibs", "cs_score")))]
    rows += [(f"pooled out-of-fold, repeat {p['repeat']}", str(p["n"]), str(p["events"]),
              *(_ci_cell(p[m]) for m in ("c_index", "ibs", "cs_score"))) for p in model["pooled"]]
    rows += [(f"repeat {r}: incomplete (not scored in {', '.join(model.get('missing_outer_folds', []))})",
              "", "", "-", "-", "-") for r in model.get("incomplete_repeats", [])]
    return rows


def format_nested(summary: dict) -> str:
    lines = [f"# Nested CV {summary.get('nested', '')}: {summary['repeats']} x {summary['outer_folds']} outer folds",
             "", f"Out-of-fold population: {summary['oof_population']}. {summary['pooling']}. Intervals: percentile "
                 f"bootstrap 95% CIs over patients ({summary.get('n_boot', '?')} resamples). C-index: Antolini's, "
                 "tied predictions counting 1/2.", "",
             "| outer fold | n | events | C-index [95% CI] | IBS [95% CI] | CS-score [95% CI] | epoch | configuration |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary["per_outer"]:
        cfg = ", ".join(f"{k}={v}" for k, v in row["config"].items())
        lines.append(f"| {row['outer']} | {row['n']} | {row['events']} | {_ci_cell(row.get('c_index'))} | "
                     f"{_ci_cell(row.get('ibs'))} | {_ci_cell(row.get('cs_score'))} | {row['fixed_epoch']} | {cfg} |")
    lines += [f"| {label} | {n} | {events} | {c} | {ibs} | {cs} | | |"
              for label, n, events, c, ibs, cs in aggregate_rows(summary)]
    if summary.get("by_family"):
        lines += ["", ("Every family: each outer fold also refitted the best configuration of each family (highest "
                       "mean validation CS-score, validation folds only) and scored its outer test split once."), "",
                  "| family | selected in | | n | events | C-index | IBS | CS-score |", "|---|---|---|---|---|---|---|---|"]
        for family, model in summary["by_family"].items():
            lines += [f"| {model_families.label(family)} | {model.get('selected_in', '')} | {label} | {n} | {events} | "
                      f"{c} | {ibs} | {cs} |" for label, n, events, c, ibs, cs in aggregate_rows(model)]
        stopped = {family: model["stopped_early_in"] for family, model in summary["by_family"].items()
                   if model.get("stopped_early_in")}
        if stopped:
            lines += ["", "Stopped early: in these outer folds early stopping (ASHA) ended every trial of the family "
                          "before all inner folds, so its best stopped trial (mean over the folds it ran) was "
                          "refitted and scored: " + "; ".join(f"{model_families.label(f)}: {', '.join(o)}"
                                                             for f, o in stopped.items()) + "."]
    if summary.get("rules"):
        lines += ["", (f"Selection rules compared on the same run (the engine used `{summary.get('selection_rule', 'best')}`): "
                       "in each outer fold the rule picks from the families' inner-validation scores, and its outer "
                       "test predictions are the chosen family's (an ensemble: the mean of the chosen families' "
                       "survival curves); pooled like every row above."), "",
                  "| rule | pooled C-index | pooled IBS | pooled CS-score | chosen per outer fold |", "|---|---|---|---|---|"]
        for rule, entry in summary["rules"].items():
            p = entry["pooled"][0]
            chosen = "; ".join("+".join(f) for f in entry["chosen"].values())
            lines.append(f"| {entry['label']} (`{rule}`) | {_ci_cell(p['c_index'])} | {_ci_cell(p['ibs'])} | "
                         f"{_ci_cell(p['cs_score'])} | {chosen} |")
    if summary.get("failures"):
        lines += ["", "Failed (each failure cost only its own configuration or family):", ""]
        lines += [f"- {outer}: {what}: {cause}" for outer, failed in summary["failures"].items()
                  for what, cause in failed.items()]
    lines += ["", ("Selection stability (times chosen over outer folds; a family's parameters among the outer "
                   "folds that chose it):"), ""]
    lines += [f"- {k}: " + ", ".join(f"{v} ({n})" for v, n in counts.items()) for k, counts in summary["selection"].items()]
    return "\n".join(lines)


def _model_metrics(model: dict, prefix: str = "") -> dict:
    """A model's nested numbers as MLflow metrics (``outer_mean_*``, ``outer_sd_*``, ``oof_*`` of the
    first pooled repeat), names prefixed by ``prefix``."""
    folds = model["over_outer_folds"]
    out = ({f"{prefix}outer_mean_{m}": v["mean"] for m, v in folds.items()}
           | {f"{prefix}outer_sd_{m}": v["sd"] for m, v in folds.items()})
    if model["pooled"]:
        pooled = model["pooled"][0]
        out |= ({f"{prefix}oof_{m}": pooled[m]["estimate"] for m in METRICS}
                | {f"{prefix}oof_{m}_ci_low": pooled[m]["low"] for m in METRICS}
                | {f"{prefix}oof_{m}_ci_high": pooled[m]["high"] for m in METRICS})
    return out
