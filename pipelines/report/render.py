"""Seaborn rendering of the figure specs to PNG bytes (Agg backend, fixed style)."""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .model import DPI, FigureSpec


def _plt():
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="paper", style="ticks", palette="colorblind")
    return plt, sns


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_right(sns, ax) -> None:
    if ax.get_legend() is not None:
        sns.move_legend(ax, "center left", bbox_to_anchor=(1.02, 0.5), title=None, frameon=False)


def render_fig7(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    kw = dict(data=spec.data, x="epoch", hue="row", hue_order=spec.options["order"], errorbar="sd")
    sns.lineplot(y="teacher_entropy", ax=ax[0], legend=False, **kw)
    for v in spec.options["log_k"]:
        ax[0].axhline(v, ls="--", color="0.3", lw=1)
        ax[0].annotate(f"ln K = {v:.2f}", (0, v), xytext=(2, -10), textcoords="offset points", fontsize=7)
    sns.lineplot(y="kl", ax=ax[1], **kw)
    ax[0].set(ylabel="teacher entropy (nats)", title="target entropy h(Pt)")
    ax[1].set(ylabel="KL(Pt ‖ Ps) (nats)", title="KL(teacher ‖ student)")
    _legend_right(sns, ax[1])
    _integer_epochs(*ax)
    fig.suptitle(spec.title, y=1.03)
    return fig


def render_sweep(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    n = spec.data["source"].nunique()
    sns.pointplot(data=spec.data, x="x", y="knn", hue="source", order=spec.options["order"], errorbar="sd",
                  dodge=0.3 if n > 1 else False, linestyle="none", markers=["o", "s", "D"][:n], capsize=0.15, ax=ax)
    if spec.options.get("random_init") is not None:
        ax.axhline(float(spec.options["random_init"]), ls=":", color="0.4", lw=1, label="random init (k-NN)")
        ax.legend()
    ax.set(xlabel=spec.options["xlabel"], ylabel="top-1 (%)", title=spec.title)
    _legend_right(sns, ax)
    return fig


def _errorbars(ax, frame: pd.DataFrame, x: str, y: str, colors: dict, err: bool) -> None:
    for _, r in frame.iterrows():
        xe = (0.0 if pd.isna(r.get(f"{x}_sd")) else r[f"{x}_sd"]) if err else None
        ye = (0.0 if pd.isna(r.get(f"{y}_sd")) else r[f"{y}_sd"]) if err else None
        ax.errorbar(r[x], r[y], xerr=xe, yerr=ye, fmt="o" if err else "s", color=colors[r["row"]],
                    capsize=3, label=r["label"])


def render_cost(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    order = spec.options["order"]
    g = spec.data.groupby("row", sort=False)
    ours = g[["knn", "time", "mem"]].mean().join(g[["knn", "time", "mem"]].std(ddof=1).add_suffix("_sd"))
    ours = ours.reindex(order).join(g["label"].first()).reset_index()
    paper = spec.options["paper"].dropna(subset=["linear"])
    colors = dict(zip(spec.options["paper"]["row"], sns.color_palette("colorblind", len(spec.options["paper"]))))
    fig, ax = plt.subplots(2, 2, figsize=(9, 6.5))
    time_label = spec.options.get("time_label", "time per epoch (s)")
    for j, (x, px, xl, pxl) in enumerate((("time", "time_h", time_label, "training time (h)"),
                                          ("mem", "mem_gb", "peak memory (MB)", "memory per GPU (GB)"))):
        _errorbars(ax[0, j], ours, x, "knn", colors, True)
        ax[0, j].set(xlabel=xl, ylabel="ours: k-NN top-1 (%)", title="ours (mean ± sd over seeds)")
        if not paper.empty and paper[px].notna().any():
            _errorbars(ax[1, j], paper.dropna(subset=[px]), px, "linear", colors, False)
        ax[1, j].set(xlabel=pxl, ylabel="paper: linear top-1 (%)", title="paper")
    handles, labels = ax[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=min(len(labels), 4),
               frameon=False)
    fig.suptitle(spec.title)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    return fig


def render_curves(spec: FigureSpec, results: Path):
    plt, sns = _plt()
    facets = spec.options["facets"]
    fig, ax = plt.subplots(len(facets), 2, figsize=(10, 2.6 * len(facets)), squeeze=False)
    for i, (study, title, order) in enumerate(facets):
        d = spec.data[spec.data["study"] == study]
        kw = dict(data=d, x="epoch", hue="row", hue_order=order, errorbar="sd")
        sns.lineplot(y="loss_lnk", ax=ax[i, 0], legend=False, **kw)
        sns.lineplot(y="ent_lnk", ax=ax[i, 1], **kw)
        ax[i, 1].axhline(1.0, ls="--", color="0.5", lw=0.8)
        ax[i, 0].set(title=f"{title.split(':')[0]}: loss / ln K", ylabel="loss / ln K")
        ax[i, 1].set(title=f"{title.split(':')[0]}: teacher entropy / ln K", ylabel="h(Pt) / ln K")
        _legend_right(sns, ax[i, 1])
        _integer_epochs(ax[i, 0], ax[i, 1])
    fig.suptitle(spec.title, y=1.0)
    fig.subplots_adjust(hspace=0.55, wspace=0.25, top=1 - 0.35 / len(facets))
    return fig


def render_attention(spec: FigureSpec, results: Path):
    plt, _ = _plt()
    images = [plt.imread(results / p) for p in spec.data["path"]]
    heights = [im.shape[0] / im.shape[1] for im in images]
    fig, ax = plt.subplots(len(images), 1, figsize=(8, 8 * sum(heights) + 0.8), squeeze=False,
                           gridspec_kw={"height_ratios": heights})
    for a, im, p in zip(ax[:, 0], images, spec.data["path"]):
        a.imshow(im)
        a.set_title(Path(p).name, fontsize=8)
        a.axis("off")
    fig.suptitle(spec.title)
    return fig


def _outline(ax, mask: np.ndarray, color: str) -> None:
    if 0 < mask.sum() < mask.size:   # contour needs both levels
        ax.contour(mask, levels=[0.5], colors=color, linewidths=0.8)


def uint8_array(d: dict) -> np.ndarray:
    """An array saved by pipelines.cell.save_attention_maps: {"shape", "uint8": base64 bytes}."""
    return np.frombuffer(base64.b64decode(d["uint8"]), dtype=np.uint8).reshape(d["shape"])


def render_attention_maps(spec: FigureSpec, results: Path):
    """Per image, one line per row (model): the image with its object outlined, then each head's
    attention (patch grid, nearest-upsampled) with its threshold-mass mask outlined and its Jaccard."""
    plt, _ = _plt()
    maps = [json.loads((results / p).read_text()) for p in spec.data["path"]]
    for m in maps:
        m["images"], m["objects"] = uint8_array(m["images"]), uint8_array(m["objects"])
    n_img = min([spec.options["n_images"]] + [len(m["images"]) for m in maps])
    heads = max(len(m["attention"][0]) for m in maps)
    fig, ax = plt.subplots(n_img * len(maps), heads + 1, figsize=(1.25 * (heads + 1), 1.3 * n_img * len(maps)),
                           squeeze=False)
    for i in range(n_img):
        for j, (m, label) in enumerate(zip(maps, spec.data["label"])):
            line, up = ax[i * len(maps) + j], np.ones((m["patch_size"],) * 2)
            line[0].imshow(m["images"][i])
            _outline(line[0], m["objects"][i].astype(float), "w")
            line[0].set_title(f"{label}, image {i}", fontsize=6)
            for h in range(len(m["attention"][i])):
                line[h + 1].imshow(np.kron(np.asarray(m["attention"][i][h]), up), cmap="inferno")
                _outline(line[h + 1], np.kron(np.asarray(m["masks"][i][h], dtype=float), up), "c")
                line[h + 1].set_title(f"head {h}: J {m['jaccard_per_head'][h]:.1f} %", fontsize=6)
            for a in line:
                a.axis("off")
    fig.suptitle(spec.title, fontsize=8)
    fig.tight_layout()
    return fig


RENDERERS = {"fig7": render_fig7, "sweep": render_sweep, "cost": render_cost, "curves": render_curves,
             "attention": render_attention, "attention_maps": render_attention_maps}


def render_png(spec: FigureSpec, results: Path) -> bytes:
    """PNG bytes of one figure; no timestamp or software metadata, so reruns are byte-identical."""
    plt, _ = _plt()
    fig = RENDERERS[spec.kind](spec, results)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
