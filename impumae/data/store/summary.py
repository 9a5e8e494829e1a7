"""A short text report of a cohort store (what ``build_cohort.py`` prints after a build)."""
from __future__ import annotations

from .read import Cohort


def summarize(cohort: Cohort, n_patterns: int = 5) -> str:
    """A short text report: patients, events, splits, present per modality, common missingness patterns, size."""
    labels, present, splits = cohort.labels, cohort.present, cohort.splits
    n = len(labels)
    events = int(labels["event"].sum())
    lines = [f"cohort {cohort.url}",
             f"patients: {n}   events: {events} ({100 * events / n:.1f}%)   "
             f"holdout: {int(splits['holdout'].sum())}   folds: {splits.attrs.get('k')} ({splits.attrs.get('source')})",
             "present per modality:"]
    for m in cohort.modalities:
        spec = cohort.specs[m]
        count = int(present[m].sum())
        lines.append(f"  {m:<12} {count:>7} ({100 * count / n:5.1f}%)  {spec.kind} {spec.shape} {spec.dtype} "
                     f"[{cohort.value_types.get(m, '?')}]")
    patterns = present.apply(lambda r: "+".join(m for m in cohort.modalities if r[m]) or "(none)", axis=1)
    lines.append(f"most common missingness patterns (of {patterns.nunique()}):")
    for pattern, count in patterns.value_counts().head(n_patterns).items():
        lines.append(f"  {count:>7} ({100 * count / n:5.1f}%)  {pattern}")
    lines.append(f"bytes on disk: {cohort.bytes_on_disk():,} ({cohort.bytes_on_disk() / 2**20:.1f} MiB)")
    return "\n".join(lines)
