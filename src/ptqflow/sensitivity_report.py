"""The report's sections on what the calibrating and searching schemes found: where the activation outliers are
(the statically calibrated variants' input ranges), which projections quantization hurts (the sensitivity tables
and heatmaps of sensitivity.py), and what each accuracy-budgeted or size search kept (ptqflow's `budget: auto`,
the size searches, NNCF's accuracy control). Markdown only; the numbers are the variants' own records."""

from __future__ import annotations


def outlier_lines(details: dict[str, dict], top: int = 5) -> list[str]:
    """Where the activation outliers are: for each variant that calibrated static activation scales, the
    projections whose calibrated input range max |x| is largest (one outlier channel sets a per-tensor scale
    for every channel of that tensor), against the median range of all its projections."""
    import statistics

    out = []
    for name, m in details.items():
        ranges = (m.get("quantization") or {}).get("input_absmax") or {}
        if not ranges:
            continue
        median = statistics.median(ranges.values())
        worst = sorted(ranges.items(), key=lambda kv: -kv[1])[:top]
        out.append(f"- `{name}`: largest calibrated input ranges max|x| (median of its {len(ranges)} projections "
                   f"{median:.3g}): " + ", ".join(f"`{n}` {v:.3g} ({v / median:.1f}x)" for n, v in worst))
    return ["Activation ranges of the statically calibrated variants (where the outlier dimensions are):", "", *out, ""] if out else []


def sensitivity_section(details: dict[str, dict], figures: dict[str, str], top: int = 8) -> list[str]:
    """Per variant that scored its projections (sensitivity.py): the most sensitive ones, the heatmap, and the
    budgeted search's outcome (what stayed in float, the share of MACs still in 8 bits)."""
    out = []
    for name, m in details.items():
        q = m.get("quantization") or {}
        sens = (q.get("sensitivity") or {}).get("by_projection")
        if not sens:
            continue
        rows = sorted(sens.items(), key=lambda kv: -kv[1]["kl"])[:top]
        out += [f"### `{name}`", "",
                f"Each projection quantized alone, everything else in float, on the first {q['sensitivity']['rows']} "
                f"validation rows (never test rows); ranked by KL(float || quantized) of the logits.", "",
                "| projection | layer | KL | NMSE of logits | Δacc (validation) |", "|---|---|---|---|---|",
                *[f"| `{p}` | {v['layer']} | {v['kl']:.3g} | {v['nmse']:.3g} | {v['delta_accuracy'] * 100:+.2f} pts |" for p, v in rows], ""]
        budget = q.get("budget")
        if budget:
            tried = ", ".join(_tried(t) for t in budget["tried"])
            bound = (f", its one-sided {budget['confidence']:.0%} bound {budget['validation_drop_bound'] * 100:.2f}"
                     if "validation_drop_bound" in budget else "")
            where = (f"{len(budget['fallback'])} raised to {budget['ladder'][1]} "
                     f"({', '.join(f'`{k}`' for k in budget['fallback']) or 'none'}), {len(budget['float'])} to float "
                     f"({', '.join(f'`{k}`' for k in budget['float']) or 'none'})" if budget.get("fallback") is not None and
                     len(budget.get("ladder", [])) > 2 else
                     f"{budget['k']} projection(s) kept in float ({', '.join(f'`{k}`' for k in budget['kept']) or 'none'})")
            out += [f"Budgeted search (`budget: auto`, max drop {budget['max_drop'] * 100:.2f} points on {budget['rows']} "
                    f"validation rows): {where}, validation drop "
                    f"{budget['validation_drop'] * 100:.2f} points{bound}; {q.get('mac_share_8bit', 0):.1%} of the body's "
                    f"projection multiply-accumulates run in low bits. Drops measured (points): {tried}.", ""]
            out += _formats_table(q.get("formats"))
        if name in figures:
            out += [f"![sensitivity {name}]({figures[name]})", ""]
    searches = budget_rows(details)
    if searches:
        out += ["### Accuracy-budgeted searches side by side", "",
                "Each keeps the operations that cost the most validation accuracy in float until the validation drop is "
                "within its budget; the test set then judges the result in Table 1.", "",
                "| variant | method | budget (points) | validation rows | kept in float | MACs in low bits | search time (s) |",
                "|---|---|---|---|---|---|---|", *searches, ""]
    return (["## Sensitivity: which projections quantization hurts", "", *out]) if out else []


def _count(record: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in record.get("count", {}).items() if v)


def _tried(t: dict) -> str:
    """One measured configuration of a budgeted search: how many were raised (from which format), drop, bound."""
    what = f"{t['raised']} raised from {t['rung']}" if "raised" in t else f"{t['kept']} kept"
    return f"{what}: {t['drop'] * 100:+.2f}" + (f" (bound {t['bound'] * 100:+.2f})" if "bound" in t else "")


def _formats_table(formats: dict | None) -> list[str]:
    """Per format a search ended with: projections, share of the body's multiply-accumulates, weight bytes."""
    if not formats:
        return []
    return ["| format | projections | MACs | weight bytes |", "|---|---|---|---|",
            *[f"| {fmt} | {f['projections']} | {f.get('mac_share', 0):.1%} | {f.get('weight_bytes', f.get('bytes', 0)):,} |"
              for fmt, f in formats.items()], ""]


def budget_rows(details: dict[str, dict]) -> list[str]:
    """One table row per variant that searched for an accuracy budget: ptqflow's `budget: auto` (int8_static), its
    size search (`embeddings: auto`, bnb_nf4) and NNCF's accuracy control (ov_int8_accuracy_control)."""
    rows = []
    for name, m in details.items():
        q = m.get("quantization") or {}
        if q.get("budget"):
            b = q["budget"]
            kept = (f"{len(b['float'])} (W8A8: {len(b['fallback'])})" if b.get("fallback") and "float" in b else str(len(b["kept"])))
            rows.append(f"| `{name}` | ptqflow `budget: auto` ({b.get('confidence', 0.5):.0%} one-sided bound) | "
                        f"{b['max_drop'] * 100:.2f} | {b['rows']} | {kept} | {q.get('mac_share_8bit', 0):.1%} | "
                        f"{b.get('seconds', '-')} |")
        elif q.get("size_search"):
            z = q["size_search"]
            chosen = ", ".join(f"{k} x{v['projections']}" for k, v in (q.get("formats") or {}).items())
            also = "; ".join(f"{m}: {_count(r)}" for m, r in z["by_method"].items())
            rows.append(f"| `{name}` | ptqflow size search: projections on the ladder {' -> '.join(z['ladder'])} ({also}); "
                        f"kept **{z['method']}**, embeddings {q.get('embeddings', 'keep')} | {z['by_method'][z['method']]['max_drop'] * 100:.2f} | "
                        f"{z['by_method'][z['method']]['rows']} | {chosen} | - | {q.get('quantize_seconds', '-')} |")
        elif q.get("embedding_search"):
            e = q["embedding_search"]
            tries = ", ".join(f"{t['candidate']} {t['drop'] * 100:+.2f} (bound {t['bound'] * 100:+.2f})" for t in e["tried"])
            rows.append(f"| `{name}` | ptqflow size search: embedding tables at the fewest bits that fit ({tries}): "
                        f"**{e['chosen'] or 'none, tables float'}** | {e['max_drop'] * 100:.2f} | {e['rows']} | tables at "
                        f"{e['chosen'] or 'float'} | - | {e.get('seconds', '-')} |")
        elif q.get("accuracy_control"):
            a = q["accuracy_control"]
            rows.append(f"| `{name}` | NNCF `quantize_with_accuracy_control` (point estimate) | {a['max_drop'] * 100:.2f} | "
                        f"{a['validation_rows']} | {len(a['reverted_to_float'])} | {q.get('mac_share_8bit', 0):.1%} | "
                        f"{q.get('search_seconds', '-')} |")
    return rows

