"""The evaluation report: the metrics table as CSV, a markdown summary and recall@k plots.

`write_report(table, out_dir)` takes the long table `twotower.evaluate.evaluate` returns (one row
per scorer, slice, metric and k) and writes, atomically each:

    metrics.csv       the table itself (intervals and differences included)
    report.md         every metric of every scorer at every k on all targets, each with its 95%
                      bootstrap interval over users when the table has one (`value (low–high)`);
                      then recall@k per slice (warm / cold items, head / tail by popularity),
                      with intervals likewise; the cold-start table (`cold_start`) at every k;
                      and ANN recall
    recall_at_k.png   recall@k against k, one line per scorer with its 95% bootstrap band,
                      one panel per slice, each on its own scale (`curves`)
    ndcg_at_k.png     the same for NDCG@k
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no display or global figure state needed
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from twotower.files import atomic_path

__all__ = ["cold_start", "curves", "headline", "markdown", "plot_curves", "write_report"]

_SUMMARY_METRICS = ("recall", "recall_capped", "ndcg", "hit_rate", "mrr", "coverage")


def markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a markdown table: the index as the first column, floats rounded."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    cells = [[str(i), *(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row)]
             for i, row in zip(frame.index, frame.itertuples(index=False), strict=True)]
    lines = ["| " + " | ".join(r) + " |" for r in [header, *cells]]
    lines.insert(1, "|" + "|".join(["---"] + ["---:"] * len(frame.columns)) + "|")
    return "\n".join(lines)


def headline(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per scorer at one k: recall and NDCG on all targets, recall per item slice."""
    rows = table[table["k"] == k]
    scorers = list(pd.unique(rows["scorer"]))
    columns = {f"recall@{k}": ("all", "recall"), f"ndcg@{k}": ("all", "ndcg")}
    for slice_name in pd.unique(rows["slice"]):
        if slice_name != "all":
            columns[f"{slice_name} recall@{k}"] = (slice_name, "recall")
    out = pd.DataFrame(index=pd.Index(scorers, name="scorer"))
    for name, (slice_name, metric) in columns.items():
        part = rows[(rows["slice"] == slice_name) & (rows["metric"] == metric)]
        out[name] = part.set_index("scorer")["value"].reindex(scorers)
    return out


def cold_start(table: pd.DataFrame, k: int, digits: int = 4) -> pd.DataFrame:
    """One row per scorer at one k: warm and cold recall@k, each `value (low–high)` with its 95%
    bootstrap interval over users when the table has one, and the ratio cold / warm."""
    rows = table[(table["k"] == k) & (table["metric"] == "recall")]
    scorers = list(pd.unique(rows["scorer"]))
    out = pd.DataFrame(index=pd.Index(scorers, name="scorer"))
    values = {}
    for slice_name in ("warm", "cold"):
        part = rows[rows["slice"] == slice_name].set_index("scorer").reindex(scorers)
        values[slice_name] = part["value"]
        if {"low", "high"} <= set(part.columns):
            out[f"{slice_name} recall@{k} (95% interval)"] = [
                _interval(v, lo, hi, digits)
                for v, lo, hi in zip(part["value"], part["low"], part["high"], strict=True)]
        else:
            out[f"{slice_name} recall@{k}"] = part["value"]
    out["cold / warm"] = [f"{c / w:.2f}" if w > 0 else "-"
                          for c, w in zip(values["cold"], values["warm"], strict=True)]
    return out


def _by_k(table: pd.DataFrame, slice_name: str, metrics: Sequence[str],
          column: str = "value") -> pd.DataFrame:
    """One row per (scorer, metric) on one slice, one column per k: `metric@k` values (or the
    table's `column`, e.g. low)."""
    rows = table[(table["slice"] == slice_name) & table["metric"].isin(metrics)]
    scorers = list(pd.unique(rows["scorer"]))  # in the order they were evaluated
    wide = rows.pivot_table(index=["scorer", "metric"], columns="k", values=column)
    present = set(zip(rows["scorer"], rows["metric"], strict=True))
    order = [(s, m) for s in scorers for m in metrics if (s, m) in present]
    wide = wide.reindex(index=order, columns=sorted(pd.unique(rows["k"])))
    wide.index = [f"{s} / {m}" if len(metrics) > 1 else s for s, m in wide.index]
    wide.index.name = "scorer / metric" if len(metrics) > 1 else "scorer"
    wide.columns = [f"@{k}" for k in wide.columns]
    return wide


def _with_intervals(table: pd.DataFrame, slice_name: str, metrics: Sequence[str],
                    digits: int = 4) -> pd.DataFrame:
    """`_by_k` with each value written `value (low–high)` where the table has its interval."""
    values = _by_k(table, slice_name, metrics)
    if not {"low", "high"} <= set(table.columns):
        return values
    low, high = (_by_k(table, slice_name, metrics, column=c) for c in ("low", "high"))
    return pd.DataFrame({c: [_interval(*v, digits) for v in zip(values[c], low[c], high[c],
                                                                strict=True)]
                         for c in values.columns}, index=values.index)


def _interval(value: float, lo: float, hi: float, digits: int) -> str | float:
    """`value (low–high)`; the value alone where there is no interval (coverage, or a table
    evaluated without resampling)."""
    if pd.isna(value) or pd.isna(lo) or pd.isna(hi):
        return value
    return f"{value:.{digits}f} ({lo:.{digits}f}\N{EN DASH}{hi:.{digits}f})"


_SLICE_NOTES = {
    "all": "every target",
    "warm": "products with training interactions",
    "cold": "products without a training interaction",
    "head": "the most popular warm products",
    "tail": "the other warm products",
}
"""What each item slice of `twotower.evaluate.item_slices` holds, for the panel titles."""


def curves(table: pd.DataFrame, metric: str) -> Figure:
    """`metric`@k against k: one panel per item slice, one line per scorer, each with its 95%
    bootstrap band over users where the table has one (`low`, `high`).

    Every panel has its own y scale from 0: cold and tail values are a tenth of the others, and
    on a shared scale they would lie flat on the axis. The legend takes a cell of its own in the
    grid of panels (three across), so it hides no curve.
    """
    rows = table[table["metric"] == metric]
    slices = list(pd.unique(rows["slice"]))
    if not slices:
        raise ValueError(f"the table has no {metric!r} rows to plot")
    colour = {s: f"C{i % 10}" for i, s in enumerate(pd.unique(rows["scorer"]))}
    bands = {"low", "high"} <= set(rows.columns) and rows[["low", "high"]].notna().any(axis=None)
    across = min(3, len(slices) + 1)
    down = -(-(len(slices) + 1) // across)
    fig = Figure(figsize=(3.6 * across, 3.1 * down), layout="constrained")
    axes = fig.subplots(down, across, squeeze=False).ravel()
    for ax, slice_name in zip(axes, slices, strict=False):
        part = rows[rows["slice"] == slice_name]
        for scorer, curve in part.groupby("scorer", sort=False):
            curve = curve.sort_values("k")
            ax.plot(curve["k"], curve["value"], marker="o", markersize=3, color=colour[scorer],
                    clip_on=False)  # a scorer at 0 shows on the axis, not half under it
            if bands:
                known = curve[["low", "high"]].notna().all(axis=1)
                ax.fill_between(curve["k"][known], curve["low"][known], curve["high"][known],
                                color=colour[scorer], alpha=0.15, linewidth=0)
        ks = sorted(part["k"].unique())
        ax.set_xscale("log")
        ax.set_xticks(ks, labels=map(str, ks))
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(f"{slice_name}: {_SLICE_NOTES.get(slice_name, 'items')}\n"
                     f"({int(part['users'].max()):,} users with such a target)", fontsize=9)
        ax.set_xlabel("k")
        ax.set_ylabel(f"{metric}@k")
        ax.grid(alpha=0.3)
    key, *spare = axes[len(slices):]
    key.axis("off")
    for ax in spare:
        ax.set_visible(False)
    handles = [Line2D([], [], color=c, marker="o", markersize=3) for c in colour.values()]
    labels = list(colour)
    if bands:
        handles.append(Patch(color="grey", alpha=0.3, linewidth=0))
        labels.append("95% bootstrap interval\nover users")
    key.legend(handles, labels, loc="center", title="scorer", frameon=False)
    fig.suptitle(f"{metric}@k per item slice: the mean over users (each panel its own scale)")
    return fig


def plot_curves(table: pd.DataFrame, metric: str, path: str | os.PathLike[str]) -> Path:
    """`curves(table, metric)` written to `path` as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        curves(table, metric).savefig(tmp, format="png", dpi=110)
    return path


def write_report(
    table: pd.DataFrame, out_dir: str | os.PathLike[str], *, title: str = "Retrieval evaluation",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write metrics.csv, report.md, recall_at_k.png and ndcg_at_k.png into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.csv", "report": out / "report.md"}
    with atomic_path(paths["metrics"]) as tmp:
        table.to_csv(tmp, index=False)
    users = table.loc[table["slice"] == "all", "users"].max()
    sections = [f"# {title}", "", *notes, *([""] if notes else []),
                f"## All targets ({users:,} users)", "",
                markdown(_with_intervals(table, "all", _SUMMARY_METRICS)), ""]
    for slice_name in pd.unique(table["slice"]):
        if slice_name == "all":
            continue
        n = table.loc[table["slice"] == slice_name, "users"].max()
        sections += [f"## recall@k on {slice_name} items ({n:,} users with such a target)", "",
                     markdown(_with_intervals(table, slice_name, ["recall"])), ""]
    if {"warm", "cold"} <= set(table["slice"]):
        sections += ["## Cold start: recall@k on warm and on cold items", "",
                     "Cold items had no interaction before the split: only their content "
                     "(the image h, attributes) can place them.", ""]
        for k in sorted(pd.unique(table["k"])):
            sections += [markdown(cold_start(table, int(k))), ""]
    if (table["metric"] == "ann_recall").any():
        sections += ["## ANN index recall@k against exact search", "",
                     markdown(_by_k(table, "all", ["ann_recall"])), ""]
    with atomic_path(paths["report"]) as tmp:
        tmp.write_text("\n".join(sections))
    for metric in ("recall", "ndcg"):
        paths[f"{metric}_plot"] = plot_curves(table, metric, out / f"{metric}_at_k.png")
    return paths
