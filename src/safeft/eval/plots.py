"""PNG plots of one or several runs (``results.json`` dicts), one colour per run.

* :func:`plot_asr` — ASR per attack, grouped bars, Wilson 95 % intervals as error bars;
* :func:`plot_refusal_curve` — refusal rate vs. prefill length k (``prefill-harmful-k``) with a
  95 % band: a safety alignment that is only "a few tokens deep" drops towards 0 as k grows;
* :func:`plot_overrefusal_vs_asr` — over-refusal (refusal rate on benign XSTest-style prompts)
  against mean ASR over the attacks: the bottom-left corner is best.

Each function returns the path written, or ``None`` when the runs hold no data for that plot.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = plt.get_cmap("tab10").colors


def _colour(i: int):
    return COLOURS[i % len(COLOURS)]


def attack_order(runs: list[dict], with_rate_only: bool = False) -> list[str]:
    """Attack keys in first-seen order; ``with_rate_only`` drops cells with no judged response
    (e.g. all degenerate), which a report still lists but a bar plot cannot draw."""
    keys: list[str] = []
    for run in runs:
        for key, s in run.get("attacks", {}).items():
            if key not in keys and (not with_rate_only or s.get("asr") is not None):
                keys.append(key)
    return keys


def _judges(runs: list[dict]) -> str:
    """Judge names with what each one's rate measures, e.g. ``keyword: non_refusal_rate``."""
    names = set()
    for run in runs:
        judge = run.get("judge", {})
        measure = judge.get("measures")
        names.add(f"{judge.get('name', '?')}: {measure}" if measure else judge.get("name", "?"))
    return ", ".join(sorted(names))


def plot_asr(runs: list[dict], labels: list[str], path: Path) -> Path | None:
    """Bars: the rate with its 95 % CI; black ticks: the worst case (unjudged and degenerate
    answers counted as successes), drawn alone where no answer was judged."""
    keys = attack_order(runs)
    if not keys:
        return None
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(keys) * max(1, len(runs)) ** 0.5 + 2), 4.2))
    worst_x, worst_y = [], []
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        xs, ys, lo, hi = [], [], [], []
        for j, key in enumerate(keys):
            s = run.get("attacks", {}).get(key)
            if not s:
                continue
            x = j - 0.4 + width * (i + 0.5)
            worst = s.get("asr_worst_case")
            if worst is not None and worst != s.get("asr"):
                worst_x.append(x)
                worst_y.append(worst)
            if s.get("asr") is None:
                continue
            xs.append(x)
            ys.append(s["asr"])
            lo.append(max(0.0, s["asr"] - s["ci95"][0]))
            hi.append(max(0.0, s["ci95"][1] - s["asr"]))
        ax.bar(xs, ys, width * 0.95, color=_colour(i), label=label, yerr=[lo, hi], capsize=3, ecolor="#333")
    if worst_x:
        ax.scatter(worst_x, worst_y, marker="_", s=200, color="black", label="worst case", zorder=3)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("attack success rate")
    ax.set_title(f"ASR per attack (judge: {_judges(runs)}; bars: 95% Wilson CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_refusal_curve(runs: list[dict], labels: list[str], path: Path) -> Path | None:
    if not any(run.get("refusal_curve") for run in runs):
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        sets = sorted({p["set"] for p in run.get("refusal_curve", [])})
        for set_name in sets:
            pts = [p for p in run["refusal_curve"] if p["set"] == set_name and p["refusal_rate"] is not None]
            if not pts:
                continue
            ks = [p["k"] for p in pts]
            name = label if len(sets) == 1 else f"{label} / {set_name}"
            ax.plot(ks, [p["refusal_rate"] for p in pts], "o-", color=_colour(i), label=name)
            ax.fill_between(
                ks, [p["ci95"][0] for p in pts], [p["ci95"][1] for p in pts], color=_colour(i), alpha=0.15
            )
    ax.set_xlabel("k = words of a harmful answer pre-filled in the reply")
    ax.set_ylabel("refusal rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"Refusal-position curve (judge: {_judges(runs)}; band: 95% CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def over_refusal_point(run: dict) -> dict | None:
    """The benign-prompt refusal summary used as a run's over-refusal (XSTest ``safe``, else ``all``)."""
    for groups in run.get("over_refusal", {}).values():
        for category in ("safe", "all", "benign"):
            if category in groups and groups[category].get("refusal_rate") is not None:
                return groups[category]
    return None


def mean_asr(run: dict) -> float | None:
    values = [s["asr"] for s in run.get("attacks", {}).values() if s.get("asr") is not None]
    return sum(values) / len(values) if values else None


def plot_overrefusal_vs_asr(runs: list[dict], labels: list[str], path: Path) -> Path | None:
    points = [(over_refusal_point(r), mean_asr(r)) for r in runs]
    if not any(o is not None and a is not None for o, a in points):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, ((over, asr), label) in enumerate(zip(points, labels, strict=True)):
        if over is None or asr is None:
            continue
        x = over["refusal_rate"]
        xerr = [[max(0.0, x - over["ci95"][0])], [max(0.0, over["ci95"][1] - x)]]
        ax.errorbar([x], [asr], xerr=xerr, fmt="o", color=_colour(i), capsize=3, markersize=8, label=label)
        offset = (6, -12) if asr > 0.9 else (6, 6)  # keep the label inside the axes
        ax.annotate(label, (x, asr), textcoords="offset points", xytext=offset, fontsize=8)
    ax.set_xlim(-0.04, 1.04)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xlabel("over-refusal: refusal rate on benign prompts (XSTest safe)")
    ax.set_ylabel("mean ASR over attacks")
    ax.set_title(f"Over-refusal vs. ASR (judge: {_judges(runs)}; best: bottom-left)", fontsize=10, pad=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
