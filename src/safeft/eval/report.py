"""``report.md`` and ``report.html`` (with PNG plots) for one run or several side by side.

Every score table names the judge that produced it and what its rate measures
(``non_refusal_rate`` for the keyword judge, ``harmful_rate`` for a harm judge,
``compliance_rate`` for a judge trained on human compliance labels), with the judge's measured
agreement with human labels where known; ASR cells read ``rate [95 % CI] (n)``, followed by the
unjudged and degenerate (empty / repetitive / gibberish) counts and the worst case when there are
any. Old results files (``asr`` only, no ``measures``) still render.
Model responses are never copied into reports (they may be harmful text): read
``judged.jsonl`` for them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from safeft.data.records import read_utf8
from safeft.eval.metrics import LATE_REFUSAL_WORDS, rate_of
from safeft.eval.plots import attack_order, plot_asr, plot_overrefusal_vs_asr, plot_refusal_curve

ASR_NOTE = (
    "ASR = compliant / judged responses, named by what the judge measures: non_refusal_rate "
    "(keyword judge: the answer does not refuse; says nothing about harm), harmful_rate (a harm "
    "judge), compliance_rate (a judge trained on human compliance labels). Unjudged and degenerate "
    "answers (empty, repetitive, gibberish) are excluded and counted apart; the worst case treats "
    "them all as successes. Intervals: 95% Wilson score."
)


def load_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no results.json (run `safeft eval --out {run_dir}` first)")
    try:
        return json.loads(read_utf8(path, "a safeft eval results.json"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def run_labels(runs: list[dict], names: list[str] | None = None) -> list[str]:
    labels = [r.get("model", {}).get("display") or r.get("model", {}).get("name", "model") for r in runs]
    if names:
        labels = [n or lab for n, lab in zip(names, labels, strict=False)] + labels[len(names) :]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _after_content(summary: dict) -> str:
    """``"k of n"`` refusals after some words of answer, or ``–`` when the judge reports no position."""
    if "refusal_after_content" not in summary:
        return "–"
    return f"{summary['refusal_after_content']} of {summary['refusal']}"


def _cell(value: float | None, ci: list[float] | None, n: int | None) -> str:
    if value is None:
        return f"– (n={n or 0})"
    return f"{_pct(value)} [{_pct(ci[0])}, {_pct(ci[1])}] (n={n})" if ci else f"{_pct(value)} (n={n})"


def tables(runs: list[dict], labels: list[str]) -> list[tuple[str, list[str], list[list[str]], str]]:
    """(title, header, rows, note) for each table of the report."""
    out = []
    out.append(
        (
            "Runs",
            [
                "run",
                "model",
                "adapter",
                "backend",
                "fingerprint",
                "judge",
                "measures",
                "judge agreement with people",
                "suite",
                "limit",
                "seed",
                "max new",
            ],
            [
                [
                    lab,
                    r["model"].get("name", ""),
                    r["model"].get("adapter") or "–",
                    r["model"].get("backend", ""),
                    r["model"].get("fingerprint", ""),
                    _judge_text(r),
                    _measures(r),
                    _agreement_text(r),
                    str(r["config"].get("suite", "")),
                    str(r["config"].get("limit")),
                    str(r["config"].get("seed")),
                    str(r["config"].get("generation", {}).get("max_new_tokens", "")),
                ]
                for r, lab in zip(runs, labels, strict=True)
            ],
            "",
        )
    )
    keys = attack_order(runs)
    if keys:
        rows = []
        for key in keys:
            row = [key]
            for r in runs:
                s = r.get("attacks", {}).get(key)
                if not s:
                    row.append("–")
                    continue
                cell = _cell(rate_of(s), s["ci95"], s["n"])
                apart = [f"unjudged {s['unjudged']}"] if s.get("unjudged") else []
                apart += [f"{k} {v}" for k, v in (s.get("degenerate_by_kind") or {}).items() if v]
                if apart:
                    cell += f", {', '.join(apart)} (worst case {_pct(s.get('asr_worst_case'))})"
                if s.get("refusal_after_content"):  # DeRTa's mid-answer switch, after part of an answer
                    words = s["refusal_after_content_words"]
                    cell += f"; {_after_content(s)} refusals after >= {words} words of answer"
                if s.get("mean_score") is not None:
                    lo, hi = s["mean_score_ci95"]
                    cell += (
                        f"; mean {s.get('score_name', 'score')} {s['mean_score']:.3f} [{lo:.3f}, {hi:.3f}]"
                    )
                row.append(cell)
            rows.append(row)
        measured = "; ".join(
            f"{lab}: {_measures(r)} by {r.get('judge', {}).get('name', '?')}, {_agreement_text(r)}"
            for r, lab in zip(runs, labels, strict=True)
        )
        out.append(
            ("Attack success rate (lower is safer)", ["attack", *labels], rows, f"{measured}. {ASR_NOTE}")
        )
    curve_rows = []
    for r, lab in zip(runs, labels, strict=True):
        for p in r.get("refusal_curve", []):
            curve_rows.append(
                [lab, p["set"], str(p["k"]), _cell(p["refusal_rate"], p["ci95"], p["n"]), p["judge"]]
            )
    if curve_rows:
        out.append(
            (
                "Refusal-position curve (prefill-harmful-k; higher is safer)",
                ["run", "set", "k", "refusal rate", "judge"],
                curve_rows,
                "k = whitespace words of a known harmful answer pre-filled at the start of the reply.",
            )
        )
    over_rows = []
    for r, lab in zip(runs, labels, strict=True):
        for set_name, groups in r.get("over_refusal", {}).items():
            for cat, s in groups.items():
                over_rows.append(
                    [
                        lab,
                        set_name,
                        cat,
                        _cell(s["refusal_rate"], s["ci95"], s["n"]),
                        s["judge"],
                        str(s.get("unjudged", 0)),
                        str(s.get("degenerate", 0)),
                        _after_content(s),
                    ]
                )
    if over_rows:
        out.append(
            (
                "Refusal rate on over-refusal sets",
                ["run", "set", "category", "refusal rate", "judge", "unjudged", "degenerate", "mid-answer"],
                over_rows,
                "XSTest: `safe` prompts should be answered (lower is better); "
                "`unsafe` contrast prompts should be refused (higher is better). Mid-answer: refusals after "
                f">= {LATE_REFUSAL_WORDS} words of answer, of all refusals (DeRTa's transition inside a "
                "benign answer; judges that report where the refusal stood, e.g. keyword).",
            )
        )
    task_rows = []
    for r, lab in zip(runs, labels, strict=True):
        for task, s in r.get("tasks", {}).items():
            task_rows.append(
                [
                    lab,
                    task,
                    _cell(s["accuracy"], s["ci95"], s["n"]),
                    str(s["unparsed"]),
                    str(s["shots"]),
                    s["parser"],
                ]
            )
    if task_rows:
        out.append(
            (
                "Task accuracy (exact parsers)",
                ["run", "task", "accuracy", "unparsed", "shots", "parser"],
                task_rows,
                "Unparsable answers count as wrong.",
            )
        )
    return out


def _measures(run: dict) -> str:
    """What the run's judge rate measures (old results files: ``asr``)."""
    judge = run.get("judge", {})
    if judge.get("measures"):
        return judge["measures"]
    first = next(iter(run.get("attacks", {}).values()), {})
    return first.get("measures", "asr (not recorded)")


def _agreement_text(run: dict) -> str:
    """The judge's measured agreement with human labels, or says it is unknown."""
    agr = run.get("judge", {}).get("agreement")
    if not isinstance(agr, dict) or agr.get("accuracy") is None:
        return "agreement not measured"
    ci = agr.get("accuracy_ci95")
    ci_s = f" [{_pct(ci[0])}, {_pct(ci[1])}]" if ci else ""
    where = f" on {agr['data']}" if agr.get("data") else ""
    return f"agreement {_pct(agr['accuracy'])}{ci_s} (n={agr.get('n', '?')}{where})"


def _judge_text(run: dict) -> str:
    judge = run.get("judge", {})
    text = judge.get("name", "?")
    metrics = judge.get("metrics")
    if isinstance(metrics, dict):
        shown = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in metrics.items()
            if k in ("accuracy", "f1", "n")
        )
        if shown:
            text += f" (held-out {shown})"
    return text


def write_plots(runs: list[dict], labels: list[str], out_dir: Path) -> dict[str, Path]:
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    made = {
        "Attack success rate per attack": plot_asr(runs, labels, plot_dir / "asr_per_attack.png"),
        "Refusal-position curve": plot_refusal_curve(runs, labels, plot_dir / "refusal_position.png"),
        "Over-refusal vs. ASR": plot_overrefusal_vs_asr(runs, labels, plot_dir / "overrefusal_vs_asr.png"),
    }
    return {title: path for title, path in made.items() if path is not None}


def render_markdown(title: str, table_list, plots: dict[str, Path], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for name, header, rows, note in table_list:
        lines += [f"## {name}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines += ["", note, ""] if note else [""]
    for name, path in plots.items():
        lines += [f"## {name}", "", f"![{name}]({path.relative_to(out_dir).as_posix()})", ""]
    return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f0f3f7; }
p.note { color: #555; font-size: 0.85em; margin-top: 0; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.3em 0 1em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; }
"""


def render_html(title: str, table_list, plots: dict[str, Path], out_dir: Path) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"]
    parts.append(f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>")
    if plots:
        parts.append("<div class='plots'>")
        for name, path in plots.items():
            src = esc(path.relative_to(out_dir).as_posix())
            parts.append(
                f"<figure><img src='{src}' alt='{esc(name)}'><figcaption>{esc(name)}</figcaption></figure>"
            )
        parts.append("</div>")
    for name, header, rows, note in table_list:
        parts.append(
            f"<h2>{esc(name)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
        )
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
        if note:
            parts.append(f"<p class='note'>{esc(note)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    runs: list[dict], out_dir: str | Path, names: list[str] | None = None, title: str | None = None
) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out_dir``."""
    if not runs:
        raise ValueError("no runs to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs, names)
    title = title or ("safeft evaluation: " + " vs. ".join(labels))
    table_list = tables(runs, labels)
    plots = write_plots(runs, labels, out)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(title, table_list, plots, out), encoding="utf-8")
    page.write_text(render_html(title, table_list, plots, out), encoding="utf-8")
    return md, page
