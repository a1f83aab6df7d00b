"""Figures the chapters show: one function per figure kind, each returning a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = {"neutral": "#7f7f7f", "happy": "#e6a817", "angry": "#c0392b", "sad": "#2e6da4"}


def _colors(labels: Sequence[str]) -> list[str]:
    fallback = sns.color_palette("tab10", len(labels))
    return [PALETTE.get(lbl, fallback[i]) for i, lbl in enumerate(labels)]


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
    """Stage-1 prosody regression loss and stage-2 loss / accuracy per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    enc = log[log["stage"] == "encoder"]
    axes[0].plot(enc["epoch"], enc["mse"], marker="o")
    axes[0].set(title="stage 1: encoder regresses prosody", xlabel="epoch", ylabel="MSE (standardised)")
    dec = log[log["stage"] == "decoder"]
    axes[1].plot(dec["epoch"], dec["train_acc"], label="train accuracy")
    if "identify_acc" in dec:
        axes[1].plot(dec["epoch"], dec["identify_acc"], label="held-out accuracy (A identify)")
    axes[1].set(title="stage 2: decoder MLPs learn the answer", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    axes[1].axhline(0.25, color="grey", lw=0.8, ls=":", label="chance")
    axes[1].legend(loc="lower right", fontsize=8)
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
    """Per selector and emotion: the deactivation gap with its 95 % interval, next to random neurons (mean ± sd)."""
    selectors = list(dict.fromkeys(comparison["selector"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.1 * len(labels), 3.0), sharey=True, squeeze=False)
    x = np.arange(len(selectors))
    for ax, lbl in zip(axes[0], labels, strict=True):
        d = comparison[comparison["target"] == lbl].set_index("selector").reindex(selectors)
        err = np.vstack([d["gap"] - d["gap_ci_low"], d["gap_ci_high"] - d["gap"]]).clip(min=0)
        ax.bar(x - 0.18, d["gap"], 0.36, yerr=err, color=PALETTE.get(lbl, "C0"), capsize=2, label="selected")
        ax.bar(x + 0.18, d["random_gap_mean"], 0.36, yerr=d["random_gap_std"].fillna(0), color="#cccccc",
               capsize=2, label="random, same size")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, [s.upper() for s in selectors], rotation=45, fontsize=8)
        ax.set_title(f"zeroing {lbl} neurons", fontsize=10)
    axes[0, 0].set_ylabel("gap = self − cross effect")
    axes[0, -1].legend(fontsize=7, loc="lower right")
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


def strategy_curves(table: pd.DataFrame) -> plt.Figure:
    """Targeted vs label-free steering over α: flip rate (targeted: toward the target; label-free: corrections),
    damage to correct answers, and UAR change."""
    t = table[table["target"].isin(["mean", "all"])]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for strat, d in t.groupby("strategy", sort=False):
        d = d.sort_values("alpha")
        style = "-" if strat == "targeted" else "--"
        axes[0].plot(d["alpha"], d["flip_rate"], style, marker="o", ms=3, label=strat)
        if d["flip_ci_low"].notna().any():
            axes[0].fill_between(d["alpha"], d["flip_ci_low"], d["flip_ci_high"], alpha=0.15, lw=0)
        axes[1].plot(d["alpha"], d["damage"], style, marker="o", ms=3, label=strat)
        axes[2].plot(d["alpha"], d["uar_change"], style, marker="o", ms=3, label=strat)
    axes[0].set(title="flip rate (targeted) / corrections (label-free)", xlabel="α", ylabel="rate")
    axes[1].set(title="correct answers broken", xlabel="α", ylabel="rate")
    axes[2].set(title="UAR change", xlabel="α", ylabel="Δ UAR")
    axes[2].axhline(0, color="k", lw=0.6)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def grounding_overview(neurons: pd.DataFrame, clusters: Mapping[str, Sequence[int]]) -> plt.Figure:
    """Per neuron: Δ_audio against Δ_text (log-log), and the distribution of the grounding coefficient per cluster."""
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
    axes[0].set(xscale="log", yscale="log", xlabel="Δ audio (mean |change|)", ylabel="Δ text",
                title="each neuron at the answer position")
    axes[0].legend(fontsize=8, markerscale=3)
    c = d.dropna(subset=["coefficient"])
    if len(c):
        sns.histplot(data=c, x="coefficient", hue="cluster", hue_order=order, palette=palette, bins=20,
                     multiple="stack", ax=axes[1], binrange=(0, 1))
    axes[1].set(title="grounding coefficient g (1 = audio, 0 = text)", xlabel="g")
    fig.tight_layout()
    return fig
