"""``medvlkit report``: result JSONs of several runs -> a Markdown table, a CSV, and one self-contained HTML
page (confusion matrices, ROC curves per class, reliability diagrams, retrieval grids, the heatmap grids of explain
runs; images inlined)."""

from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medvlkit.apps.display import subgroup_notes
from medvlkit.engine.plots import confusion_matrix_png, decision_curve_png, forest_png, reliability_png, roc_png
from medvlkit.engine.results import headline_keys, read_result
from medvlkit.errors import MedvlkitError


@dataclass
class Run:
    """One run folder: its result.json and, when present, its predictions.csv."""

    name: str
    folder: Path
    result: dict

    @property
    def predictions(self) -> Path | None:
        p = self.folder / "predictions.csv"
        return p if p.is_file() and "classnames" in self.result else None


def load_runs(folders: list[Path]) -> list[Run]:
    """Read ``result.json`` of each folder; a run is named by its folder's name, with as many parent folders as make
    the names unique (an ``eval`` sweep's ``<model>/<dataset>/<task>`` folders share their last parts)."""
    paths = [Path(f) for f in folders]
    for folder in paths:
        if not (folder / "result.json").is_file():
            raise MedvlkitError(f"{folder}: no result.json (pass run folders written by medvlkit commands)")
    if not paths:
        raise MedvlkitError("no run folders given")
    return [Run(name, folder, read_result(folder / "result.json")) for name, folder in zip(_unique_names(paths), paths)]


def _unique_names(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that no other path shares (a repeated path gets primes)."""
    parts = [p.resolve().parts for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts) and len({p[-depth:] for p in parts}) < len(set(parts)):
        depth += 1
    names, seen = [], set()
    for p in parts:
        name = "/".join(p[-depth:])
        while name in seen:
            name += "'"
        seen.add(name)
        names.append(name)
    return names


def _fmt(v, ci=None) -> str:
    if v is None:
        return "-"
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def headline_rows(runs: list[Run]) -> list[list[str]]:
    """One row per run: name, task, dataset, model, then 'metric value [CI]' for its task's headline metrics."""
    rows = []
    for r in runs:
        res = r.result
        keys = res.get("headline") or headline_keys(res)  # results written before the field: derived
        cells = [f"{k} {_fmt(res['metrics'].get(k), res.get('ci', {}).get(k))}" for k in keys
                 if k in res.get("metrics", {})]
        rows.append([r.name, res.get("task", ""), str(res.get("dataset", "")), str(res.get("model", "")),
                     "; ".join(cells)])
    return rows


def write_tables(runs: list[Run], out: Path) -> None:
    """report.md (headline table) and report.csv (every scalar metric of every run)."""
    lines = ["| run | task | dataset | model | metrics (95% CI) |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in headline_rows(runs)]
    grids = [r.result for r in runs if r.result.get("task") == "fewshot_grid"]
    if grids:
        from medvlkit.tasks.adapt import fewshot_markdown

        lines += ["", "## Few-shot adaptation: test AUROC, mean (SD over seeds); best method per shot count in bold",
                  "", fewshot_markdown(grids).rstrip("\n")]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    keys = sorted({k for r in runs for k, v in r.result.get("metrics", {}).items() if isinstance(v, (int, float))})
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", "task", "dataset", "model", *keys])
        for r in runs:
            m = r.result.get("metrics", {})
            w.writerow([r.name, r.result.get("task"), r.result.get("dataset"), r.result.get("model"),
                        *[m.get(k, "") for k in keys]])


def _img(png: bytes, alt: str, wide: bool = False) -> str:
    cls = ' class="wide"' if wide else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _thumb(path: str, size: int = 110) -> str:
    from medvlkit.data.io import read_image

    try:
        im = read_image(path).convert("RGB")
    except MedvlkitError:
        return '<div class="missing">unreadable</div>'
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _predictions(run: Run):
    from medvlkit.engine.results import read_predictions

    if run.predictions is None:
        return None
    pred = read_predictions(run.predictions)
    return pred if pred.labels is not None and pred.multilabel is not None else None


def run_section(run: Run) -> str:
    """The HTML of one run: its metrics and every plot its files allow."""
    res = run.result
    parts = [f'<section><h2>{html.escape(run.name)}</h2><p class="meta">{html.escape(res.get("task", ""))} · '
             f'{html.escape(str(res.get("dataset", "")))} · {html.escape(str(res.get("model", "")))} · '
             f'{html.escape(res.get("created_at", ""))}</p>']
    metrics = {k: v for k, v in res.get("metrics", {}).items() if "/" not in k}
    if metrics:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v, res.get('ci', {}).get(k))}</td></tr>"
                       for k, v in metrics.items())
        parts.append(f'<table class="metrics"><tr><th>metric</th><th>value [95% CI]</th></tr>{rows}</table>')
    plots = []
    if res.get("confusion_matrix") and res.get("classnames"):
        plots.append(_img(confusion_matrix_png(res["confusion_matrix"], res["classnames"]), "confusion matrix"))
    pred = _predictions(run)
    if pred is not None:
        known = ~np.all(np.isnan(pred.labels), axis=1)  # rows without any truth say nothing
        labels, log_probs = pred.labels[known], pred.log_probs[known]
        plots.append(_img(roc_png(labels, log_probs, pred.classnames), "ROC curves"))
    if res.get("reliability"):
        plots.append(_img(reliability_png(res["reliability"]), "reliability diagram"))
    elif pred is not None:
        from medvlkit.tasks.calibrate import confidence_and_correct, reliability

        curve = reliability(*confidence_and_correct(labels, np.exp(log_probs), pred.multilabel))
        plots.append(_img(reliability_png({"model": curve}), "reliability diagram"))
    for name, curve in (res.get("decision_curve") or {}).items():
        plots.append(_img(decision_curve_png(curve, name), f"decision curve {name}"))
    if plots:
        parts.append('<div class="plots">' + "".join(plots) + "</div>")
    if res.get("operating_points"):
        parts.append(operating_points_table(res["operating_points"]))
    if res.get("conformal"):
        parts.append(conformal_table(res["conformal"]))
    if res.get("prompt_sensitivity"):
        parts.append(prompt_sensitivity_section(res["prompt_sensitivity"]))
    for column, analysis in (res.get("subgroups") or {}).items():
        parts.append(subgroup_section(column, analysis))
    if res.get("confusion_matrices"):
        parts.append(_per_class_confusion(res["confusion_matrices"], res.get("threshold_source", "0.5")))
    for ex in res.get("examples", []):
        cells = "".join(f'<figure class="{"hit" if t["correct"] else ""}">{_thumb(t["file"])}'
                        f'<figcaption>{t["score"]:.3f}</figcaption></figure>' for t in ex["top"])
        if "answer_rank" in ex and not any(t["correct"] for t in ex["top"]):
            cells += (f'<figure class="answer">{_thumb(ex["answer"])}<figcaption>right image: rank '
                      f'{ex["answer_rank"]}</figcaption></figure>')
        parts.append(f'<div class="query"><p>“{html.escape(ex["query"][:300])}”</p>'
                     f'<div class="grid">{cells}</div></div>')
    if res.get("task") == "explain" and res.get("images"):
        parts.append(explain_grid(run))
    if res.get("task") == "audit":
        parts.append(audit_section(run))
    if res.get("task") == "fewshot_grid":
        parts.append(fewshot_section(run))
    return "".join(parts) + "</section>"


AUDIT_PAIRS_SHOWN = 24


def fewshot_section(run: Run) -> str:
    """A few-shot grid: its curve (``fewshot.png``) and mean (SD) per method and shot count."""
    png = run.folder / "fewshot.png"
    figure = _img(png.read_bytes(), "few-shot curve") if png.is_file() else ""
    return figure + fewshot_html([run.result])


def fewshot_html(grids: list[dict]) -> str:
    """:func:`medvlkit.tasks.adapt.fewshot_table` as an HTML table (the best method per shot count in bold)."""
    from medvlkit.tasks.adapt import fewshot_table

    shots, rows = fewshot_table(grids)
    head = "".join(f"<th>{'zero-shot' if k == 0 else f'{k} shots'}</th>" for k in shots)
    body = ""
    for r in rows:
        cells = ""
        for k in shots:
            mean, sd, best = r["cells"].get(k, (None, None, False))
            text = "" if mean is None else f"{mean:.3f}" if k == 0 else f"{mean:.3f} ({sd:.3f})"
            cells += f"<td>{'<b>' + text + '</b>' if best else text}</td>"
        body += (f"<tr><td>{html.escape(str(r['dataset']))}</td><td>{html.escape(str(r['model']))}</td>"
                 f"<td>{html.escape(r['method'])}</td>{cells}</tr>")
    return (f'<table class="metrics"><tr><th>dataset</th><th>model</th><th>method</th>{head}</tr>{body}</table>'
            '<p class="meta">test AUROC, mean (SD over seeds); the best method per shot count in bold; 95% CIs of '
            "each fit in grid.csv</p>")


def _pair_figures(pairs: list[dict]) -> str:
    """Audit pairs side by side as thumbnails, each with its split, label, file name and scores."""
    parts = []
    for p in pairs:
        caption = (f"{html.escape(p['kind'])} · corr {float(p['correlation']):.3f} · {html.escape(p['transform'])}"
                   + (" · <b>two labels</b>" if p.get("label_conflict") else ""))
        sides = "".join(f"<figure>{_thumb(p[f'file_{s}'], 150)}<figcaption>{html.escape(p[f'split_{s}'])} · "
                        f"{html.escape(p[f'label_{s}'] or '-')}<br>{html.escape(Path(p[f'file_{s}']).name)}"
                        "</figcaption></figure>" for s in ("a", "b"))
        parts.append(f"<div class='pair'>{sides}<p>{caption}</p></div>")
    return "<div class='pairs'>" + "".join(parts) + "</div>"


def audit_section(run: Run) -> str:
    """For an audit: its pairs side by side as thumbnails (cross-split and label conflicts first), the patients in
    two splits, the shortcut check and the class balance, so a person can confirm a finding at a glance."""
    from medvlkit.tasks.dataaudit import read_audit

    audit = read_audit(run.folder)
    pairs = sorted(audit.get("pairs", []), key=lambda p: (not p.get("label_conflict"), not p.get("cross_split"),
                                                          -float(p.get("correlation", 0))))
    parts = [f"<h3>pairs ({len(pairs)}; the first {min(len(pairs), AUDIT_PAIRS_SHOWN)}: label conflicts, then "
             f"across splits)</h3>{_pair_figures(pairs[:AUDIT_PAIRS_SHOWN])}"]
    plain = audit.get("plain_pairs", [])
    if plain:
        parts.append(f"<h3>look-alikes too plain to confirm ({len(plain)}; not counted, not excluded; the first "
                     f"{min(len(plain), 8)})</h3>{_pair_figures(plain[:8])}")
    leaks = audit.get("group_leaks", [])
    if leaks:
        rows = "".join(f"<tr><td>{html.escape(g['group'])}</td><td>{html.escape(', '.join(g['splits']))}</td></tr>"
                       for g in leaks[:50])
        parts.append(f"<h3>patients in two splits ({len(leaks)})</h3><table>{rows}</table>")
    shortcuts = audit.get("shortcuts") or {}
    rows = "".join(f"<tr><td>{html.escape(features)}</td><td>{html.escape(c)}</td><td>{_fmt(v['auroc'], v['ci'])}"
                   "</td></tr>" for features in ("image_properties", "file_name_pattern", "model_embedding")
                   for c, v in (shortcuts.get(features) or {}).items())
    if rows:
        parts.append("<h3>shortcut check: cross-validated AUROC of each feature set for each class</h3>"
                     f"<table><tr><th>features</th><th>class</th><th>AUROC [95% CI]</th></tr>{rows}</table>")
    seen = audit.get("seen_by_model") or {}
    if seen.get("declared"):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['n_seen']} of {v['n_images']}</td></tr>"
                       for k, v in seen.get("per_split", {}).items())
        parts.append(f"<h3>images in {html.escape(str(seen.get('model')))}'s training data</h3>"
                     f"<table><tr><th>split</th><th>seen</th></tr>{rows}</table>")
    return "".join(parts)


def explain_grid(run: Run, k: int = 4) -> str:
    """For an ``explain`` run: per class, the ``k`` images the model gives the highest and the lowest probability
    of that class, each with its heatmap overlay for the class (border green where the truth is that class)."""
    res, rows = run.result, run.result["images"]
    classes = res.get("classes", [])
    parts = [f"<p class='meta'>heatmaps: {html.escape(res.get('method', ''))}, target "
             f"{html.escape(str(res.get('target', '')))}, prompt set {html.escape(str(res.get('prompt_set', '')))}; "
             "model view: " + html.escape(str(res.get("view", ""))) + "</p>"]
    for name in classes:
        ranked = sorted(rows, key=lambda r: -r["probabilities"][name])
        for title, chosen in (("most", ranked[:k]), ("least", ranked[::-1][:k])):
            cells = "".join(
                f'<figure class="{"hit" if _is_true(r, name, res) else ""}">'
                f'{_thumb(str(run.folder / r["overlays"][name]), 150)}<figcaption>{html.escape(Path(r["file"]).name)}'
                f'<br>P = {r["probabilities"][name]:.3f}</figcaption></figure>' for r in chosen)
            parts.append(f'<div class="query"><p>{title} confident “{html.escape(name)}”</p>'
                         f'<div class="grid">{cells}</div></div>')
    return "".join(parts)


def _is_true(row: dict, name: str, result: dict) -> bool:
    """Whether an explained image's truth is class ``name``: by the dataset's class name (truth is recorded per
    dataset class); free texts are no class."""
    truth = row.get("truth")
    return isinstance(truth, dict) and not result.get("free_text") and truth.get(name) == 1


def operating_points_table(points: dict) -> str:
    """Per class and target: the threshold chosen on validation, the validation rate reached, and the test
    sensitivity, specificity, PPV and NPV it gives (95% CIs); classes not scored listed with the reason."""
    rows = []
    for name, targets in points.get("classes", {}).items():
        for r in targets:
            ci = r.get("ci") or {}
            at_prev = (f"<td>{_fmt(r.get('ppv_at_prevalence'))} / {_fmt(r.get('npv_at_prevalence'))}</td>"
                       if "prevalence" in r else "")
            thr = "none reaches it" if r["threshold"] is None else f"{r['threshold']:.4g}"  # inf: nothing positive
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(r['target'])} &ge; {r['level']:g}</td>"
                        f"<td>{thr}</td><td>{_fmt(r['val_' + r['target']])}</td>"
                        + "".join(f"<td>{_fmt(r[k], ci.get(k))}</td>" for k in ("sensitivity", "specificity", "ppv",
                                                                                "npv")) + at_prev + "</tr>")
    prev = next((r["prevalence"] for t in points.get("classes", {}).values() for r in t if "prevalence" in r), None)
    head = ("<tr><th>class</th><th>target (on validation)</th><th>threshold (probability)</th><th>validation rate"
            "</th><th>test sensitivity</th><th>test specificity</th><th>test PPV</th><th>test NPV</th>"
            + (f"<th>PPV / NPV at prevalence {prev:g}</th>" if prev is not None else "") + "</tr>")
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in points.get("not_scored", {}).items())
    return (f"<h3>operating points: thresholds chosen on {html.escape(str(points.get('validation')))} "
            f"({points.get('n_validation')} predictions), rates on this run's data (95% CI)</h3>"
            f"<table>{head}{''.join(rows)}</table>" + (f"<p class='meta'>not scored:</p><ul>{skipped}</ul>"
                                                       if skipped else ""))


def prompt_sensitivity_section(ps: dict) -> str:
    """The AUROC of each wording as a forest plot (the ensemble first), the table of metrics with CIs, the spread,
    the ensemble's rank, and classes whose prompts point the wrong way."""
    variants = ps.get("variants", [])
    rows = [(r["name"][:48], r["metrics"].get("auroc"), *(r["ci"].get("auroc") or (None, None))) for r in variants
            if r["metrics"].get("auroc") is not None]
    plot = _img(forest_png(rows, "AUROC", "AUROC by prompt wording"), "prompt sensitivity", wide=True) if rows else ""
    keys = list(variants[0]["metrics"]) if variants else []
    body = "".join(f"<tr><td>{html.escape(r['name'])}</td>" + "".join(
        f"<td>{_fmt(r['metrics'].get(k), r['ci'].get(k))}</td>" for k in keys) + "</tr>" for r in variants)
    spread = ", ".join(f"{html.escape(k)} {v:.3f}" for k, v in ps.get("spread", {}).items())
    warn = "".join(f"<p><b>class {html.escape(c)}: its prompts score it lower on its own images than on the others "
                   f"in {len(where)} of {ps.get('n_variants')} wordings:</b></p><ul>" + "".join(
                       f"<li>{html.escape(w['wording'])}: {w['verdict']}, AUROC {w['auroc']:.3f}</li>" for w in where)
                   + "</ul>" for c, where in ps.get("inverted", {}).items())
    return (f"<h3>prompt sensitivity: {ps.get('n_variants')} wordings of the same prompt set</h3>"
            f"<div class='plots'>{plot}</div><table><tr><th>wording</th>"
            f"{''.join(f'<th>{html.escape(k)}</th>' for k in keys)}</tr>{body}</table>"
            f"<p class='meta'>spread (max - min over single wordings): {spread}; best: "
            f"{html.escape(str(ps.get('best')))}; worst: {html.escape(str(ps.get('worst')))}; the ensemble ranks "
            f"{ps.get('ensemble_rank')} of {ps.get('n_variants')}</p>{warn}")


def subgroup_section(column: str, an: dict) -> str:
    """A forest plot of the gap metric per subgroup (the whole set first), the table of every metric with CIs, the
    subgroups too small to score, and the largest gap with its paired CI."""
    groups = an.get("groups", {})
    metric = (an.get("gap") or {}).get("metric") or "auroc"
    rows = [(f"{name} (n={g['n']})", g["metrics"].get(metric), *((g.get("ci") or {}).get(metric) or (None, None)))
            for name, g in groups.items() if g["metrics"].get(metric) is not None]
    plot = _img(forest_png(rows, metric, f"{metric} by {column}"), f"forest plot {column}", wide=True) if rows else ""
    keys = list(next(iter(groups.values()))["metrics"]) if groups else []
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{g['n']}</td>" + "".join(
        f"<td>{_fmt(g['metrics'].get(k), (g.get('ci') or {}).get(k))}</td>" for k in keys) + "</tr>"
        for name, g in groups.items())
    notes = [html.escape(n) for n in subgroup_notes(column, an)]
    return (f"<h3>subgroups by {html.escape(column)}</h3><div class='plots'>{plot}</div><table><tr><th>subgroup"
            f"</th><th>n</th>{''.join(f'<th>{html.escape(k)}</th>' for k in keys)}</tr>{body}</table>"
            + "".join(f"<p class='meta'>{n}</p>" for n in notes))


def conformal_table(conf: dict) -> str:
    """Prediction sets: coverage (promised: the level) and mean set size, overall and per true class, with CIs."""
    rows = [("all", conf)] + list(conf.get("per_class", {}).items())
    body = "".join(f"<tr><td>{html.escape(name)}</td><td>{r['n']}</td>"
                   f"<td>{_fmt(r.get('coverage'), (r.get('ci') or {}).get('coverage'))}</td>"
                   f"<td>{_fmt(r.get('mean_set_size'), (r.get('ci') or {}).get('mean_set_size'))}</td></tr>"
                   for name, r in rows)
    warn = ("<p><b>measured on the images the rule was fitted on: no guarantee</b></p>"
            if conf.get("same_images_as_fit") else "")
    return (f"<h3>prediction sets: split conformal, {html.escape(str(conf.get('mode')))}, promised coverage "
            f"{conf.get('level')} (95% CI); empty sets {_fmt(conf.get('empty_sets'))}</h3>{warn}"
            f"<table><tr><th>true class</th><th>n</th><th>coverage</th><th>mean set size</th></tr>{body}</table>")


def _per_class_confusion(matrices: dict, threshold_source: str) -> str:
    """Per-pathology 2x2 tables [[TN, FP], [FN, TP]] of a multi-label run."""
    cells = "".join(
        f"<table class='cm2'><tr><th colspan=3>{html.escape(name)}</th></tr><tr><td></td><th>pred -</th>"
        f"<th>pred +</th></tr><tr><th>true -</th><td>{m[0][0]}</td><td>{m[0][1]}</td></tr><tr><th>true +</th>"
        f"<td>{m[1][0]}</td><td>{m[1][1]}</td></tr></table>" for name, m in matrices.items())
    return (f"<p class='meta'>per-class confusion at threshold: {html.escape(str(threshold_source))}</p>"
            f"<div class='cms'>{cells}</div>")


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px} h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.meta{color:#666;font-size:12px} .plots img{margin:4px;border:1px solid #eee;max-width:380px}
.plots img.wide{max-width:760px}
.grid{display:flex;gap:6px} figure{margin:0;text-align:center;font-size:11px;border:2px solid transparent}
figure.hit{border-color:#2a9d4a} figure.answer{border-color:#d08a00;margin-left:18px}
.query p{font-size:13px;margin:10px 0 4px} .cms{display:flex;flex-wrap:wrap;gap:8px}
.pairs{display:flex;flex-wrap:wrap;gap:14px} .pair{border:1px solid #ddd;padding:4px} .pair figure{display:inline-block}
.pair p{font-size:12px;margin:2px 0}"""


def write_report(folders: list[Path], out: Path) -> Path:
    """Merge run folders into ``out/report.md``, ``out/report.csv`` and ``out/report.html``."""
    runs = load_runs(folders)
    out.mkdir(parents=True, exist_ok=True)
    write_tables(runs, out)
    head = "".join(f"<tr>{''.join(f'<td>{html.escape(c)}</td>' for c in row)}</tr>" for row in headline_rows(runs))
    body = (f"<h1>medvlkit report: {len(runs)} run(s)</h1><table><tr><th>run</th><th>task</th><th>dataset</th>"
            f"<th>model</th><th>metrics (95% CI)</th></tr>{head}</table>")
    if grids := [r.result for r in runs if r.result.get("task") == "fewshot_grid"]:
        body += "<h2>Few-shot adaptation</h2>" + fewshot_html(grids)
    body += "".join(map(run_section, runs))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>medvlkit report</title><style>{CSS}</style>" \
           f"</head><body>{body}</body></html>"
    (out / "report.html").write_text(page)
    return out / "report.html"
