"""Quantize and evaluate variants of a named set on a fine-tuned model and prepared data (e.g. all 7,600 test rows:
prepare with `data.max_test_samples=null`), keep the per-row predictions, then compare every variant with fp32
(paired bootstrap interval, McNemar, Holm over the family): what `quantize@` / `evaluate@` / `report` compute,
without DVC, for a study outside the committed default run.

    python benchmarks/lowbit_test_rows.py --model models/finetuned --data data/prepared-all --out /tmp/t76 \
        fp32 lowbit_rtn4 lowbit_gptq4 lowbit_awq4 lowbit_rtn3 lowbit_gptq3 ov_int4 ov_int4_awq lowbit_gptq3_emb2 lowbit_size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="variant names of the set (fp32 first: the baseline)")
    ap.add_argument("--set", default="all", help="named variant set the definitions come from")
    ap.add_argument("--model", required=True, help="fine-tuned model folder")
    ap.add_argument("--data", required=True, help="prepared data folder (validation calibrates, test scores)")
    ap.add_argument("--out", required=True, help="folder for artifacts, metrics, predictions, comparison.json")
    ap.add_argument("--max-drop", type=float, default=0.01, help="budget of the searching variants")
    ap.add_argument("--compare-only", action="store_true", help="only the comparison of what --out already holds")
    args = ap.parse_args()

    from ptqflow import console
    from ptqflow.calibration import for_model
    from ptqflow.config import EvalParams, ReportParams
    from ptqflow.evaluate import evaluate_variant
    from ptqflow.quantize import quantize_variant
    from ptqflow.comparison import compare_all
    from ptqflow.variant_sets import compose

    console.quiet()
    model, data, out = Path(args.model), Path(args.data), Path(args.out)
    every = compose(args.set)["variants"]
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    (out / "predictions").mkdir(exist_ok=True)
    for v in [] if args.compare_only else args.variants:
        started = time.time()
        meta = quantize_variant(v, every[v], model, out / "q" / v, torch.device("cpu"),
                                calibration=lambda: for_model(data, model), max_drop=args.max_drop)
        if meta.get("skipped"):
            print(f"{v}: skipped: {meta['skipped']}", flush=True)
            continue
        metrics, predictions = evaluate_variant(v, every[v], out / "q" / v, data, EvalParams(device="cpu"))
        metrics["quantize_meta"] = meta
        (out / "metrics" / f"{v}.json").write_text(json.dumps(metrics, indent=1, default=str))
        predictions.to_csv(out / "predictions" / f"{v}.csv", index=False)
        print(json.dumps({"variant": v, "accuracy": metrics["accuracy"], "MiB": round(metrics["size_on_disk"]["bytes"] / 2**20, 2),
                          "quantize_s": round(time.time() - started, 1), "runtime_dtype": meta.get("runtime_dtype")}), flush=True)
    metrics = {p.stem: json.loads(p.read_text()) for p in (out / "metrics").glob("*.json")}
    names = [v for v in args.variants if v in metrics]
    stats = compare_all(names, out / "predictions", ReportParams())
    (out / "comparison.json").write_text(json.dumps(stats, indent=1) + "\n")
    fp32 = metrics["fp32"]["size_on_disk"]["bytes"]
    print("| variant | size (MiB) | compression | accuracy | change vs fp32 (points) [95% CI] | McNemar p | Holm-adjusted p |")
    print("|---|---|---|---|---|---|---|")
    for v in names:
        m, s = metrics[v], stats.get(v) or {}
        size = m["size_on_disk"]["bytes"]
        row = f"| {v} | {size / 2**20:.2f} | {fp32 / size:.2f}x | {m['accuracy']:.4f} | "
        if v == "fp32":
            print(row + "baseline | - | - |")
            continue
        print(row + f"{100 * s['delta_accuracy']:+.2f} [{100 * s['delta_ci95_low']:+.2f}, {100 * s['delta_ci95_high']:+.2f}] | "
                    f"{s['mcnemar_p']:.3g} | {s['mcnemar_p_adjusted']:.3g} |")


if __name__ == "__main__":
    main()
