"""Figures the chapters show: one function per figure kind, each returning a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

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
