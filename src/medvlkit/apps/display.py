"""What the command line prints: one function per kind of output, rendering what the library returned.

Nothing here computes a number; every value comes from a task's result.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

console = Console()
err_console = Console(stderr=True)


def print_models(presets: list, status: dict[str, str]) -> None:
    """The named backbones as a table, then how to fetch each one that is not on this machine, one per line (never
    cut inside a table cell)."""
    table = Table(*(Column(h, overflow="fold") for h in ("name", "spec", "licence", "preprocessing",
                                                          "on this machine")), show_lines=True)
    for p in presets:
        table.add_row(*(escape(v) for v in (p.name, p.spec, p.licence, p.preprocessing, status[p.name])))
    console.print(table)
    missing = [p for p in presets if status[p.name] in ("downloads on first use", "not on this machine")]
    if missing:
        print("\nTo fetch ahead of time (e.g. for a machine that goes offline later):")
        for p in missing:
            print(f"  medvlkit download {p.name}" if p.hub_id else f"  {p.name}: {p.fetch}")
            if p.hub_id and not p.fetch.startswith("medvlkit download"):  # more to it (CONCH's tokenizer)
                print(f"    {p.name}: {p.fetch}")
    print("\nAny local copy works through its source: hf:DIR (transformers CLIP/SigLIP), openai-ckpt:FILE, "
          "open_clip:DIR, biomedclip:DIR, biovil:DIR, medclip:DIR, gloria:FILE, pmc-clip:FILE, flair:FILE, "
          "conch:DIR, unimed:FILE, bmc:FILE, ft:DIR (README, Models). Hub ids "
          "(hf:org/name[@revision], open_clip:hf-hub:org/name, biomedclip:org/name) download on first use; "
          "--offline or HF_HUB_OFFLINE=1 reads the cache only.")


def print_formats(adapters: list, prompt_sets: list[str]) -> None:
    """The dataset formats and the shipped prompt sets."""
    table = Table("format", "what it reads")
    for a in adapters:
        table.add_row(a.name, a.description)
    console.print(table)
    console.print("prompt sets: " + ", ".join(prompt_sets))


def print_dataset(ds) -> None:
    """One dataset: size, kind, and the number of images per class."""
    import numpy as np

    console.print(f"{ds.name} split={ds.split} images={len(ds)} multilabel={ds.multilabel} "
                  f"captions={'yes' if ds.texts else 'no'}" + (" patients=yes" if ds.groups is not None else ""))
    if ds.has_labels:
        for name, count in zip(ds.classnames, np.nansum(ds.labels, axis=0)):
            console.print(f"  {name}: {int(count)}")


def print_gated(result: dict) -> None:
    """How many images ``--gate`` left out of a run (they are listed in its result.json)."""
    if "gated_out" in result:
        err_console.print(f"gate: rejected {len(result['gated_out'])} images (listed in result.json)")


def print_embedded(result: dict, out_dir: Path) -> None:
    m = result["metrics"]
    rate = m["images_per_second"]
    console.print(f"{m['n_images']} embeddings ({m['n_cached']} from cache, {result['n_skipped']} skipped)"
                  f"{f', {rate:.1f} images/s' if rate else ''} -> {out_dir}")


def print_metrics(result: dict) -> None:
    """Metrics with their 95% CIs, then for two classes the decision and the confusion matrix."""
    metrics, ci = result.get("metrics") or {}, result.get("ci") or {}
    if not metrics:
        console.print("no labels in the data: predictions only")
        return
    table = Table("metric", "value", "95% CI")
    for k, v in metrics.items():
        if "/" in k or v is None or k == "n":
            continue
        lo_hi = ci.get(k)
        value = str(v) if isinstance(v, int) else f"{v:.4f}"
        table.add_row(k, value, f"[{lo_hi[0]:.4f}, {lo_hi[1]:.4f}]" if lo_hi and None not in lo_hi else "")
    console.print(table)
    print_binary(result)


def value_ci(v: float | None, ci: list | None) -> str:
    """``0.912 [0.880, 0.940]``; ``-`` for a missing value; the interval left out where there is none."""
    if v is None:
        return "-"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else "")


def _print_folded(table: Table) -> None:
    for column in table.columns:
        column.overflow = "fold"  # a number is wrapped, never cut short
    console.print(table)


def print_operating_points(result: dict) -> None:
    """Per class and target: the validation-chosen threshold and the test rates it gives, with 95% CIs."""
    points = result.get("operating_points")
    if not points:
        return
    table = Table("class", "target on validation", "threshold", "sensitivity", "specificity",
                  title=f"operating points: thresholds chosen on {escape(str(points['validation']))}, rates here "
                        "(95% CI); PPV/NPV in result.json and the report")
    for name, rows in points["classes"].items():
        for r in rows:
            thr = "none reaches it" if r["threshold"] is None else f"{r['threshold']:.3g}"  # inf: nothing positive
            table.add_row(escape(name), f"{r['target']} >= {r['level']:g}", thr,
                          *(value_ci(r.get(k), (r.get("ci") or {}).get(k)) for k in ("sensitivity", "specificity")))
    _print_folded(table)
    for name, why in points.get("not_scored", {}).items():
        console.print(f"operating points of {escape(name)} not scored: {why}")


def subgroup_notes(column: str, an: dict) -> list[str]:
    """The lines under a subgroup table, as plain text (the terminal and the report escape them their own way):
    subgroups too small to score, images without a value, the largest gap with its paired CI."""
    notes = []
    if an.get("too_small"):
        notes.append(f"not scored (under {an.get('min_size')} images): " + ", ".join(
            f"{k} ({v})" for k, v in an["too_small"].items()))
    if an.get("n_unknown"):
        notes.append(f"{an['n_unknown']} image(s) without a {column} value: in no subgroup")
    gap = an.get("gap")
    if gap:
        notes.append(f"largest {gap['metric']} gap: {gap['high']} minus {gap['low']} = "
                     f"{value_ci(gap['value'], gap.get('ci'))} (paired bootstrap 95% CI)")
    return notes


def print_subgroups(result: dict) -> None:
    """Per metadata column: each subgroup's size and metrics with CIs, the subgroups too small to score, and the
    largest gap with its paired CI."""
    for column, an in (result.get("subgroups") or {}).items():
        keys = list(next(iter(an["groups"].values()))["metrics"])
        table = Table("subgroup", "n", *keys, title=f"subgroups by {escape(column)} (95% CI)")
        for name, g in an["groups"].items():
            table.add_row(escape(name), str(g["n"]),
                          *(value_ci(g["metrics"].get(k), (g.get("ci") or {}).get(k)) for k in keys))
        _print_folded(table)
        for note in subgroup_notes(column, an):
            console.print(escape(note))


def print_prompt_sensitivity(result: dict) -> None:
    """Each wording's metrics with CIs, the spread, the best and worst, the ensemble's rank, and classes whose
    prompts point the wrong way."""
    ps = result.get("prompt_sensitivity")
    if not ps:
        return
    keys = list(ps["variants"][0]["metrics"])
    table = Table("wording", *keys, title="prompt sensitivity: the same images under each wording (95% CI)")
    for r in ps["variants"]:
        table.add_row(escape(r["name"]), *(value_ci(r["metrics"].get(k), r["ci"].get(k)) for k in keys))
    _print_folded(table)
    console.print("spread (max - min over single wordings): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                                           ps["spread"].items()))
    console.print(f"best: {escape(ps['best'])}; worst: {escape(ps['worst'])}; the ensemble ranks "
                  f"{ps['ensemble_rank']} of {ps['n_variants']}")
    for cls, where in ps.get("inverted", {}).items():
        aucs = [w["auroc"] for w in where]
        n_inv = sum(w["verdict"] == "inverted" for w in where)
        console.print(f"[bold]class {escape(cls)}: its prompts score it LOWER on its own images than on the others in "
                      f"{len(where)} of {ps['n_variants']} wordings[/bold] (AUROC {min(aucs):.3f} to {max(aucs):.3f}; "
                      f"{n_inv} with the whole CI below 0.5; each in result.json)")


def print_conformal(result: dict) -> None:
    """Prediction sets: empirical coverage against the promised level and mean set size, per true class."""
    conf = result.get("conformal")
    if not conf:
        return
    table = Table("true class", "n", "coverage", "mean set size",
                  title=f"prediction sets ({conf['mode']}, level {conf['level']:g}): coverage and size (95% CI)")
    for name, row in [("all", conf), *conf["per_class"].items()]:
        table.add_row(escape(name), str(row["n"]), *(value_ci(row.get(k), (row.get("ci") or {}).get(k))
                                                     for k in ("coverage", "mean_set_size")))
    _print_folded(table)
    if conf.get("same_images_as_fit"):
        console.print("[bold]these are the images the rule was fitted on: their coverage is no guarantee[/bold]")


def print_predictions(predictions_csv: Path, shown: int = 10, top: int = 3) -> None:
    """Each image's top classes with their probabilities, for the first ``shown`` images of a run's
    ``predictions.csv`` (the file the run wrote: the same numbers), then how many more there are; an image outside
    the prompt set's domain is flagged."""
    import csv

    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    classes = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    table = Table("image", f"top {min(top, len(classes))} (probability)")
    for row in rows[:shown]:
        probs = sorted(((float(row[f"prob_{c}"]), c) for c in classes if row.get(f"prob_{c}")), reverse=True)
        flag = "  [outside the prompt set's domain]" if row.get("in_domain") == "0" else ""
        answer = ", ".join(f"{escape(c)} {p:.3f}" for p, c in probs[:top]) + flag
        table.add_row(escape(Path(row["file"]).name), answer)
    console.print(table)
    if len(rows) > shown:
        console.print(f"... and {len(rows) - shown} more, see {predictions_csv}")


def print_prompt_set(result: dict) -> None:
    """Which prompt set scored the images and which classes its softmax ran over."""
    over = result.get("softmax_over")
    over = ", ".join(over) if isinstance(over, list) else str(over or "")
    console.print(f"prompt set '{escape(str(result.get('prompt_set', '')))}' ({result.get('mode', '')}): softmax over "
                  f"{escape(over)}")


def print_binary(result: dict) -> None:
    """For two classes: sensitivity and specificity of the second (positive) class, the decision rule, and the
    confusion matrix."""
    names, cm, metrics = result.get("classnames") or [], result.get("confusion_matrix"), result.get("metrics") or {}
    if len(names) != 2 or not cm:
        return
    neg, pos = names

    def fmt(v) -> str:
        return "n/a (no such image)" if v is None else f"{v:.4f}"

    console.print(f"positive class {escape(pos)}: sensitivity {fmt(metrics.get(f'recall/{pos}'))}, specificity "
                  f"{fmt(metrics.get(f'recall/{neg}'))}; decision: "
                  f"{escape(str(result.get('threshold_source', 'argmax')))}")
    table = Table("true \\ predicted", escape(neg), escape(pos))
    for name, row in zip(names, cm):
        table.add_row(escape(name), str(row[0]), str(row[1]))
    console.print(table)


def print_search(rows: list[dict]) -> None:
    table = Table("rank", "score", Column("image", overflow="fold"), "label", Column("caption", overflow="fold"))
    for r, row in enumerate(rows, 1):
        table.add_row(str(r), f"{row['score']:.4f}", escape(row.get("name") or row["file"]),
                      escape(row.get("label", "")), escape(row.get("caption", "")[:200]))
    console.print(table)


def print_cells(cells: list) -> None:
    """A sweep's cells: status and the first two headline metrics (or why the cell did not run)."""
    table = Table("model", "dataset", "task", Column("prompts", no_wrap=True, min_width=17), "status",
                  Column("headline / why", overflow="fold"))
    for c in cells:
        values = [(k, v) for k, v in c.headline.items() if isinstance(v, float)][:2]
        detail = ", ".join(f"{k} {v:.4f}" for k, v in values) or c.error
        table.add_row(escape(c.model), escape(Path(c.data).name), c.task, escape(c.prompts or "-"), c.status,
                      escape(detail))
    console.print(table)


def print_demo(rows: list, metrics: dict) -> None:
    table = Table("expected", "P(med)", "gate", "modality", "P(pneu)")
    table.columns.insert(0, Column("image", no_wrap=True, min_width=26))
    for r in rows:
        table.add_row(Path(r.file).name, r.expected or "?", f"{r.p_medical:.2f}",
                      "medical" if r.medical else "non-medical",
                      f"{r.modality} ({r.p_modality:.2f})" if r.medical else "-",
                      "n/a" if r.p_pneumonia is None else f"{r.p_pneumonia:.2f}")
    console.print(table)
    if metrics:
        console.print(f"bundled images: gate {metrics['gate_correct']}/{metrics['n_known']} right, modality "
                      f"{metrics['modality_correct']}/{metrics['n_medical']} right")
    console.print("P(pneu): the pneumonia prompt set describes chest X-rays, so it is applied only to images the gate "
                  "accepts and the model reads as chest X-rays (n/a: outside its domain). The three films are "
                  "Kermany et al.'s test images (CC BY 4.0); lite never trained on them.")


def print_finetuned(outcome, out_dir: Path) -> None:
    """A fine-tuning run: its best epoch and where the model is, then the test split's metrics when scored."""
    if outcome.summary is not None:
        best, s = outcome.summary["best"], outcome.summary
        console.print(f"best epoch {best['epoch']} (step {best['step']}): val score {best['score']:.4f}; "
                      f"{s['steps']} steps in {s['train_seconds']:.0f} s; model in {outcome.best_dir} "
                      f"(use --model ft:{outcome.best_dir})")
    if outcome.note:
        err_console.print(outcome.note)
    if outcome.result is not None:
        print_metrics(outcome.result)
        console.print(f"wrote {out_dir}/result.json")


def print_pretrained(summary: dict, out_dir: str) -> None:
    best = summary["best"]
    console.print(f"best epoch {best['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()
                                                              if k not in ("epoch", "step")))
    console.print(f"heads written to {out_dir}/best (use --model lite:{out_dir}/best)")


def print_export(manifest: dict, out: Path) -> None:
    """What ``medvlkit export`` wrote and how close it is to PyTorch."""
    v = manifest["verification"]
    kind = f"int8 ({manifest['quantize']})" if manifest.get("quantize") else "fp32"
    console.print(f"exported [bold]{manifest['model']}[/] to {out} ({kind}, opset {manifest['opset']}, "
                  f"embed dim {manifest['embed_dim']})")
    bound = f" (limit {v['tolerance']:g})" if v.get("tolerance") else " (int8: measured, not bounded)"
    console.print(f"ONNX Runtime vs PyTorch, max abs difference of unit embeddings{bound}: image "
                  f"{v['image_max_abs_diff']:.2e} on {v['n_images']} {v['images']}, text {v['text_max_abs_diff']:.2e} "
                  f"on {v['n_texts']} texts")
    console.print(f"use it as --model onnx:{out}")


def print_audit(audit: dict, out_dir) -> None:
    """An audit's findings in a few lines, and where the rest is."""
    s = audit["summary"]
    splits = ", ".join(f"{k} {v}" for k, v in audit["splits"].items())
    console.print(f"{audit['n_read']} of {audit['n_images']} images read ({splits})")
    console.print(f"pairs: {s['exact_pairs']} exact, {s['near_pairs']} near-duplicate, {s['augmented_pairs']} "
                  f"augmented copies; {s['cross_split_pairs']} across splits, {s['label_conflicts']} with two labels; "
                  f"{s['leaking_groups']} patients in two splits; {s['excluded_images']} images to exclude "
                  "(--exclude this folder)")
    if s.get("plain_pairs"):
        console.print(f"{s['plain_pairs']} look-alike pairs too plain to confirm (too little fine detail to tell a "
                      "copy from another image; not counted, not excluded; plain_pairs.csv)")
    if s.get("families"):
        console.print(f"{s['images_in_families']} images in {s['families']} families of copies (largest "
                      f"{audit['families'][0]['size']}; families.csv)")
    shortcuts = audit.get("shortcuts") or {}
    for features in ("image_properties", "file_name_pattern", "model_embedding"):
        scores = shortcuts.get(features) or {}
        if scores:
            console.print(f"{features.replace('_', ' ')} -> label, cross-validated AUROC: " + ", ".join(
                f"{escape(c)} {v['auroc']:.3f}" for c, v in scores.items()))
    seen = audit.get("seen_by_model") or {}
    if seen.get("declared"):
        console.print(f"in {escape(seen['model'])}'s training data: " + ", ".join(
            f"{k} {v['n_seen']} of {v['n_images']}" for k, v in seen["per_split"].items())
            + " (probe, finetune, eval, benchmark set them aside from validation and test; --allow-seen keeps them)")
    elif seen:
        console.print(escape(seen["note"]))
    if shortcuts.get("flagged"):
        console.print(f"[bold]shortcut: image properties alone predict {', '.join(shortcuts['flagged'])} "
                      f"(AUROC >= {shortcuts['threshold']})[/bold]")
    console.print(f"wrote {out_dir}/audit.json, a CSV per finding and result.json; see them with "
                  f"`medvlkit report {out_dir}`")
