"""Figures the chapters show: one function per figure kind, each returning a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = {"neutral": "#7f7f7f", "happy": "#e6a817", "angry": "#c0392b", "sad": "#2e6da4"}


def _colors(labels: Sequence[str]) -> list[str | tuple[float, float, float]]:
    fallback = sns.color_palette("tab10", len(labels))
    return [PALETTE[lbl] if lbl in PALETTE else fallback[i] for i, lbl in enumerate(labels)]


def spectrograms(feats: np.ndarray, titles: Sequence[str], hop_seconds: float) -> plt.Figure:
    """Log-mel spectrograms side by side (one matched set: same sentence and voice, four emotions)."""
    fig, axes = plt.subplots(1, len(feats), figsize=(3.2 * len(feats), 2.6), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, f, title in zip(axes, feats, titles, strict=True):
        ax.imshow(f, origin="lower", aspect="auto", cmap="magma",
                  extent=(0, f.shape[-1] * hop_seconds, 0, f.shape[0]))
        ax.set_title(title)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("mel bin")
    fig.tight_layout()
    return fig


def prosody_distributions(tables: Mapping[str, pd.DataFrame], labels: Sequence[str]) -> plt.Figure:
    """Violin plots of the rendered prosody per emotion, one row per corpus."""
    cues = [("pitch", "pitch (0-100)"), ("range", "pitch range"), ("rate", "rate (wpm)"), ("volume", "volume")]
    fig, axes = plt.subplots(len(tables), len(cues), figsize=(3.3 * len(cues), 2.6 * len(tables)), squeeze=False)
    for r, (name, df) in enumerate(tables.items()):
        clips = df.drop_duplicates("clip_id") if "clip_id" in df else df
        for c, (col, title) in enumerate(cues):
            ax = axes[r, c]
            sns.violinplot(data=clips, x="label", y=col, hue="label", order=list(labels), hue_order=list(labels),
                           palette=_colors(labels), ax=ax, cut=0, inner="quartile", legend=False)
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel("")
            ax.set_ylabel("")
    fig.tight_layout()
    return fig


def training_curves(log: pd.DataFrame) -> plt.Figure:
    """The letter-binding warm-up (steps to mastery per number of listed options) and the task's loss and
    accuracy per epoch, with the held-out accuracy per reliability level."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    warm = log[log["stage"] == "warmup"]
    if len(warm):
        axes[0].plot(warm["options"], warm["step"], marker="o")
        axes[0].set_xticks(sorted(warm["options"].unique()))
    axes[0].set(title="warm-up: letter binding on text", xlabel="options listed",
                ylabel="cumulative steps to mastery")
    task = log[log["stage"] == "task"]
    axes[1].plot(task["epoch"], task["train_acc"], marker=".", label="train accuracy")
    for col in [c for c in task.columns if str(c).startswith("acc_")]:
        held = task.dropna(subset=[col])
        axes[1].plot(held["epoch"], held[col], marker="o", label=f"held-out, {col[4:]} audio, no hint")
    axes[1].axhline(0.25, color="grey", lw=0.8, ls=":", label="chance")
    axes[1].set(title="task: projector + decoder learn the answer", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    axes[1].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


def reliability_curve(table: pd.DataFrame) -> plt.Figure:
    """Share of conflicting-hint answers that follow the audio vs the text, and accuracy without a hint, per
    level of the audio-reliability dial (clearest left)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    x = np.arange(len(table))
    series = (("conflict_follows_audio", "conflict: follows the audio", "tab:blue"),
              ("conflict_follows_text", "conflict: follows the text", "tab:orange"),
              ("accuracy_none", "no hint: accuracy", "tab:green"))
    for col, label, color in series:
        if col in table:
            ax.plot(x, table[col], marker="o", label=label, color=color)
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(x, [f"{lvl}\n(intensity {inten:g})" for lvl, inten in zip(table.index, table["intensity"],
                                                                            strict=True)])
    ax.set(ylim=(0, 1.02), ylabel="share of items", xlabel="audio reliability (clearest left)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def layer_ablation(table: pd.DataFrame, base: float) -> plt.Figure:
    """Accuracy with each layer's gates zeroed alone (bars) against the unedited model and chance."""
    fig, ax = plt.subplots(figsize=(7.0, 3.2))
    names = [n for n in table.index if n != "base"]
    vals = [float(table.loc[n, "accuracy"]) for n in names]
    colors = ["tab:red" if n.startswith("all") else "tab:blue" for n in names]
    ax.bar(range(len(names)), vals, color=colors)
    ax.axhline(base, color="black", lw=1, label=f"unedited ({base:.2f})")
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(names)), [n.replace(" zeroed", "").replace("all but first layer", "layers 1-")
                                      for n in names], rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="accuracy (A, clear audio, no hint)", title="gates zeroed at every position")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion_matrices(mats: Mapping[str, pd.DataFrame]) -> plt.Figure:
    """Row-normalised confusion matrices side by side."""
    fig, axes = plt.subplots(1, len(mats), figsize=(4.2 * len(mats), 3.6), squeeze=False)
    for ax, (name, m) in zip(axes[0], mats.items(), strict=True):
        sns.heatmap(m, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="Blues", cbar=False, ax=ax, square=True)
        ax.set_title(f"corpus {name}")
    fig.tight_layout()
    return fig


def item_gates(gates: np.ndarray, tokens: Sequence[str], title: str = "", max_layers: int = 8) -> plt.Figure:
    """Gate values of one item, one panel per layer: neurons × token positions (red = active)."""
    n = min(len(gates), max_layers)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 3.2), sharey=True, squeeze=False)
    lim = float(np.quantile(np.abs(gates), 0.99)) or 1.0
    for i, ax in enumerate(axes[0]):
        ax.imshow(gates[i].T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_title(f"layer {i}", fontsize=9)
        ax.set_xlabel("token position", fontsize=8)
    axes[0, 0].set_ylabel("neuron")
    audio = [i for i, t in enumerate(tokens) if "AUDIO" in t]
    if audio:
        for ax in axes[0]:
            ax.axvspan(audio[0] - 0.5, audio[-1] + 0.5, color="k", alpha=0.06)
    fig.suptitle(title + "  (shaded: audio tokens)", fontsize=10)
    fig.tight_layout()
    return fig


def layer_heatmaps(counts: Mapping[str, Mapping[str, Sequence[int]]], labels: Sequence[str]) -> plt.Figure:
    """Where each selector's neurons sit: one heatmap per selector, emotions × layers, cell = neuron count."""
    fig, axes = plt.subplots(1, len(counts), figsize=(3.6 * len(counts), 2.8), squeeze=False, sharey=True)
    for ax, (selector, by_label) in zip(axes[0], counts.items(), strict=True):
        m = pd.DataFrame([by_label.get(lbl, []) for lbl in labels], index=list(labels))
        sns.heatmap(m, annot=True, fmt="d", cmap="Greens", cbar=False, ax=ax)
        ax.set_title(selector.upper())
        ax.set_xlabel("layer")
    fig.tight_layout()
    return fig


def matrix(m: pd.DataFrame, title: str, *, center: float | None = None, fmt: str = ".2f", ax=None,  # noqa: ANN001
           cmap: str | None = None, vmin: float | None = None, vmax: float | None = None) -> plt.Axes:
    """An annotated heatmap of a labelled matrix (overlaps, effect matrices)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.8, 3.2))
    sns.heatmap(m, annot=True, fmt=fmt, cmap=cmap or ("RdBu_r" if center is not None else "viridis"),
                center=center, vmin=vmin, vmax=vmax, cbar=False, ax=ax, square=True)
    ax.set_title(title)
    return ax


def neuron_profiles(profiles: pd.DataFrame, labels: Sequence[str]) -> plt.Figure:
    """Bars of P(active) and mean activation per emotion for a few selected neurons (one column per neuron)."""
    neurons = list(dict.fromkeys(profiles["neuron"]))
    fig, axes = plt.subplots(2, len(neurons), figsize=(1.55 * len(neurons), 4.2), sharey="row", squeeze=False)
    colors = _colors(labels)
    for j, name in enumerate(neurons):
        d = profiles[profiles["neuron"] == name].set_index("emotion").loc[list(labels)]
        axes[0, j].bar(range(len(labels)), d["p_active"], color=colors)
        axes[1, j].bar(range(len(labels)), d["mean"], color=colors)
        axes[0, j].set_title(name, fontsize=7)
        for ax in axes[:, j]:
            ax.set_xticks([])
    axes[0, 0].set_ylabel("P(active)")
    axes[1, 0].set_ylabel("mean gate")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
    fig.legend(handles, list(labels), loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def _strip_random(name: object) -> str:
    text = str(name)
    return text[len("random("):-1] if text.startswith("random(") and text.endswith(")") else text


def gap_bars(comparison: pd.DataFrame, labels: Sequence[str]) -> plt.Figure:
    """Per selector and emotion: the deactivation gap with its 95 % interval, next to its random controls (mean ±
    sd over draws): uniform over all neurons and, where the comparison has it, with the same count per layer."""
    selectors = list(dict.fromkeys(comparison["selector"]))
    controls = [(c, name, color) for c, name, color in (("random_gap", "random, same size", "#cccccc"),
                                                         ("layer_random_gap", "random, same layers", "#888888"))
                if f"{c}_mean" in comparison.columns]
    width = 0.8 / (1 + len(controls))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.1 * len(labels), 3.0), sharey=True, squeeze=False)
    x = np.arange(len(selectors))
    for ax, lbl in zip(axes[0], labels, strict=True):
        d = comparison[comparison["target"] == lbl].set_index("selector").reindex(selectors)
        err = np.vstack([d["gap"] - d["gap_ci_low"], d["gap_ci_high"] - d["gap"]]).clip(min=0)
        offset = -0.4 + width / 2
        ax.bar(x + offset, d["gap"], width, yerr=np.nan_to_num(err), color=PALETTE.get(lbl, "C0"), capsize=2,
               label="selected")
        for j, (col, name, color) in enumerate(controls, start=1):
            ax.bar(x + offset + j * width, d[f"{col}_mean"], width, yerr=d[f"{col}_std"].fillna(0), color=color,
                   capsize=2, label=name)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [s.upper() for s in selectors], rotation=45, fontsize=8)
        ax.set_title(f"zeroing {lbl} neurons", fontsize=10)
    axes[0, 0].set_ylabel("gap = self − cross effect")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def mean_gaps(table: pd.DataFrame) -> plt.Figure:
    """Mean gap over emotions with its interval, one bar per ``name`` and one panel per ``budget`` (columns
    ``budget, name, gap, ci_low, ci_high``; random controls drawn grey)."""
    budgets = list(dict.fromkeys(table["budget"]))
    fig, axes = plt.subplots(1, len(budgets), figsize=(0.55 * table.groupby("budget").size().max() * len(budgets)
                                                       + 1.5, 3.2), sharey=True, squeeze=False)
    for ax, b in zip(axes[0], budgets, strict=True):
        d = table[table["budget"] == b].reset_index(drop=True)
        colors = ["#999999" if str(n).startswith("random") else "C0" for n in d["name"]]
        err = np.vstack([d["gap"] - d["ci_low"], d["ci_high"] - d["gap"]]).clip(min=0)
        ax.bar(np.arange(len(d)), d["gap"], yerr=np.nan_to_num(err), color=colors, capsize=2)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(np.arange(len(d)), [str(n) for n in d["name"]], rotation=60, ha="right", fontsize=7)
        ax.set_title(f"budget {b} per emotion", fontsize=10)
    axes[0, 0].set_ylabel("mean gap (self − cross), 95 % CI")
    fig.tight_layout()
    return fig


def dose_curves(table: pd.DataFrame, *, x: str, y: str, hue: str, xlabel: str, ylabel: str,
                facet: str = "target", low: str = "ci_low", high: str = "ci_high", logx: bool = True) -> plt.Figure:
    """One panel per ``facet`` value: ``y`` against ``x`` per ``hue``, with the 95 % interval as a band."""
    facets = list(dict.fromkeys(table[facet]))
    fig, axes = plt.subplots(1, len(facets), figsize=(3.3 * len(facets), 3.0), sharey=True, squeeze=False)
    hues = list(dict.fromkeys(table[hue]))
    base = list(dict.fromkeys(_strip_random(h) for h in hues))  # a random control shares its selector's colour
    palette = dict(zip(base, sns.color_palette("tab10", len(base)), strict=True))
    colors = {h: palette[_strip_random(h)] for h in hues}
    for ax, f in zip(axes[0], facets, strict=True):
        for h in hues:
            d = table[(table[facet] == f) & (table[hue] == h)].sort_values(x)
            if d.empty:
                continue
            style = "--" if str(h).startswith("random") else "-"
            ax.plot(d[x], d[y], style, marker="o", ms=3, color=colors[h], label=str(h))
            if low in d and d[low].notna().any():
                ax.fill_between(d[x], d[low], d[high], color=colors[h], alpha=0.15, lw=0)
        ax.axhline(0, color="k", lw=0.6)
        if logx and (table[x] > 0).all():
            ax.set_xscale("log", base=2)
        ax.set_title(f"{facet}: {f}", fontsize=10)
        ax.set_xlabel(xlabel)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return fig


_OUTCOMES = (("corrections", "baseline errors corrected"), ("damage", "correct answers broken"),
             ("delta_uar", "UAR change"), ("flip_rate_to_target", "flip rate toward the target"))


def strategy_curves(table: pd.DataFrame) -> plt.Figure:
    """Steering strategies over α on the same four outcomes (columns: corrections, damage, ΔUAR, flip rate toward
    the target), one row per steering mode; from :func:`helpers.intervene.steering.steering_experiment` (targeted =
    the mean over targets; label-free strategies have no target, so no flip rate; the oracle's target is the true
    label, so its flip rate equals its corrections)."""
    t = table[table["target"].isin(["mean", "all", "true"])]
    modes = list(dict.fromkeys(t["mode"]))
    fig, axes = plt.subplots(len(modes), len(_OUTCOMES), figsize=(3.2 * len(_OUTCOMES), 2.7 * len(modes)),
                             squeeze=False, sharex=True)
    colors: dict[str, str] = {}
    for i, mode in enumerate(modes):
        for strat, d in t[t["mode"] == mode].groupby("strategy", sort=False):
            d = d.sort_values("alpha")
            style = {"targeted": "-", "oracle": ":"}.get(strat, "--")
            color = colors.setdefault(strat, f"C{len(colors)}")
            for j, (col, _) in enumerate(_OUTCOMES):
                if d[col].notna().any():
                    axes[i, j].plot(d["alpha"], d[col], style, marker="o", ms=3, label=strat, color=color)
            if d["corrections_ci_low"].notna().any():  # intervals exist for single conditions (not the means)
                axes[i, 0].fill_between(d["alpha"], d["corrections_ci_low"], d["corrections_ci_high"], alpha=0.12,
                                        lw=0, color=color)
        for j, (_col, title) in enumerate(_OUTCOMES):
            axes[i, j].set_title(f"{mode}: {title}", fontsize=9)
            axes[i, j].axhline(0, color="k", lw=0.5)
            if len(t) and (t["alpha"] > 0).all():
                axes[i, j].set_xscale("log", base=2)
        axes[i, 0].set_ylabel("rate / Δ")
    for ax in axes[-1]:
        ax.set_xlabel("α")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def flip_by_mode(metrics: Mapping[str, Any], target: float = 0.5) -> plt.Figure:
    """Targeted steering's flip rate toward the target per steering mode against α (``metrics.json`` form:
    ``alpha`` and ``flip_rate`` {mode: [...]}), with the 0.5 line."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    alphas = list(metrics["alpha"])
    for mode, values in metrics["flip_rate"].items():
        ax.plot(alphas, [np.nan if v is None else v for v in values], marker="o", label=mode)
    ax.axhline(target, color="grey", ls=":", lw=0.8)
    if alphas and min(alphas) > 0:
        ax.set_xscale("log", base=2)
    ax.set(xlabel="α", ylabel="flip rate toward the target", ylim=(0, 1.02), title="targeted steering, per mode")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def grounding_overview(neurons: pd.DataFrame, clusters: Mapping[str, Sequence[int]]) -> plt.Figure:
    """Per neuron: the raw Δ_audio against Δ_text (log-log; the dotted line is equal raw Δs, which the raw ratio
    calls 0.5), and the distribution of the *calibrated* coefficient per cluster (each side's Δ divided by its
    layer's typical Δ; undetermined neurons left out)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    order = list(clusters)
    palette = dict(zip(order, sns.color_palette("viridis", len(order)), strict=True))
    d = neurons[(neurons["delta_audio"] > 0) | (neurons["delta_text"] > 0)]
    eps = float(max(d[["delta_audio", "delta_text"]].replace(0, np.nan).min().min(), 1e-6)) if len(d) else 1e-6
    for name in order:
        c = d[d["cluster"] == name]
        axes[0].scatter(c["delta_audio"] + eps, c["delta_text"] + eps, s=5, alpha=0.5, color=palette[name],
                        label=name)
    lims = [eps, max(float(d[["delta_audio", "delta_text"]].max().max()), 2 * eps) if len(d) else 1.0]
    axes[0].plot(lims, lims, "k:", lw=0.8)
    axes[0].set(xscale="log", yscale="log", xlabel="Δ audio (mean |change|, raw)", ylabel="Δ text (raw)",
                title="each neuron at the answer position")
    axes[0].legend(fontsize=8, markerscale=3)
    c = d.dropna(subset=["coefficient"])
    if len(c):
        sns.histplot(data=c, x="coefficient", hue="cluster", hue_order=order, palette=palette, bins=20,
                     multiple="stack", ax=axes[1], binrange=(0, 1))
    axes[1].axvline(0.5, color="k", lw=0.6, ls=":")
    axes[1].set(title="calibrated g (1 = audio, 0 = text, 0.5 = typical)", xlabel="g")
    fig.tight_layout()
    return fig


def reliability_grounding(truth: pd.DataFrame, sets: pd.DataFrame) -> plt.Figure:
    """Left: which side drives the answer per reliability level (ground truth of the dial: the share of conflict
    items answered with the audio's / the text's emotion, and each side's total effect on p(counterfactual
    emotion)). Right: the calibrated grounding coefficient of neuron sets per level (``set``, ``group``,
    ``coefficient``, ``ci_low``, ``ci_high``, ``coefficient_raw``), 0.5 = like random sets of the same layers."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    levels = list(truth.index)
    x = np.arange(len(levels))
    for col, label, style in (("conflict_follows_audio", "conflict: follows audio", "-"),
                              ("conflict_follows_text", "conflict: follows text", "-"),
                              ("effect_audio", "audio pairs: |Δ p|", "--"),
                              ("effect_text", "text pairs: |Δ p|", "--")):
        if col in truth:
            axes[0].plot(x, truth[col], style, marker="o", label=label,
                         color="tab:blue" if "audio" in col else "tab:orange")
    axes[0].set_xticks(x, levels)
    axes[0].set(ylim=(0, 1.02), xlabel="audio reliability (clearest left)", ylabel="share / Δ p",
                title="which side drives the answer")
    axes[0].legend(fontsize=7)
    names = list(dict.fromkeys(sets["set"]))
    for name in names:
        d = sets[sets["set"] == name].set_index("group").reindex(levels)
        line = axes[1].plot(x, d["coefficient"], marker="o", label=f"{name} (calibrated)")[0]
        if "ci_low" in d and d["ci_low"].notna().any():
            axes[1].fill_between(x, d["ci_low"], d["ci_high"], alpha=0.15, lw=0, color=line.get_color())
        axes[1].plot(x, d["coefficient_raw"], ":", marker=".", color=line.get_color(), label=f"{name} (raw)")
    axes[1].axhline(0.5, color="k", lw=0.6, ls=":")
    axes[1].set_xticks(x, levels)
    axes[1].set(ylim=(0, 1.02), xlabel="audio reliability (clearest left)", ylabel="g",
                title="grounding of the emotion-sensitive neurons")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def dissociation_bars(summary: Mapping[str, Mapping[str, Any]]) -> plt.Figure:
    """Double dissociation: change of text-following and of audio-following on conflict items when the most
    text-grounded or the most audio-grounded neurons are zeroed, with intervals, next to layer-matched random
    sets of the same sizes (grey ticks)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    groups = [g for g in ("text_sets", "audio_sets") if g in summary]
    width = 0.38
    for i, (key, color) in enumerate((("text_following", "tab:orange"), ("audio_following", "tab:blue"))):
        vals = [float(summary[g][key]) for g in groups]
        cis = [summary[g].get(f"{key}_ci", [np.nan, np.nan]) for g in groups]
        err = np.array([[v - c[0], c[1] - v] for v, c in zip(vals, cis, strict=True)]).T.clip(min=0)
        xs = np.arange(len(groups)) + (i - 0.5) * width
        ax.bar(xs, vals, width, yerr=np.nan_to_num(err), color=color, capsize=3, label=f"Δ {key.replace('_', '-')}")
        rnd = [summary[g].get(f"random_{key}") for g in groups]
        ax.scatter(xs, [np.nan if r is None else r for r in rnd], marker="_", s=400, color="#555555", zorder=3,
                   label="random sets, same layers" if i == 0 else None)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(np.arange(len(groups)), [f"zero the most\n{g.split('_')[0]}-grounded ESNs" for g in groups])
    ax.set(ylabel="change on conflict items")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
