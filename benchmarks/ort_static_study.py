"""Choose `ort_int8_static`'s defaults by measurement: every calibration method x exclusion setting on the
pipeline's own fine-tuned model and data (models/finetuned, data/prepared; run `dvc repro finetune` first),
calibrated on the validation split, scored on the test split against fp32 (McNemar, paired bootstrap).
One process, no DVC, no MLflow.

    python benchmarks/ort_static_study.py --out benchmarks/ort-cpu/static-study.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ptqflow.calibration import for_model
    from ptqflow.config import EvalParams
    from ptqflow.evaluate import evaluate_variant
    from ptqflow.machine import environment
    from ptqflow.quantize import quantize_variant
    from ptqflow.stats import compare_predictions

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/finetuned")
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    grid = {"fp32": {"scheme": "fp32"}, "ort_fp32": {"scheme": "ort_fp32"}, "ort_int8_dynamic": {"scheme": "ort_int8_dynamic"}}
    for method, act, out in itertools.product(("minmax", "entropy", "percentile"), (False, True), (False, True)):
        grid[f"static_{method}{'_actmm' if act else ''}{'_outq' if out else ''}"] = {
            "scheme": "ort_int8_static", "method": method, "activation_matmuls": act, "output_quantization": out}
    results: dict = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "environment": environment(cpu),
                     "model": args.model, "variants": {}}
    params = EvalParams(device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for name, raw in grid.items():
            t0 = time.perf_counter()
            meta = quantize_variant(name, raw, args.model, Path(tmp) / name, cpu, calibration=lambda: for_model(args.data, args.model))
            quantize_s = time.perf_counter() - t0
            metrics, preds = evaluate_variant(name, raw, Path(tmp) / name, args.data, params)
            classes = sorted(set(preds["actual"]))
            y = np.array([classes.index(c) for c in preds["actual"]])
            p = np.array([classes.index(c) for c in preds["predicted"]])
            if base is None:
                base = p
            cmp = compare_predictions(y, base, p)
            results["variants"][name] = {"options": raw, "accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
                                         **{k: cmp[k] for k in ("delta_accuracy", "delta_ci95_low", "delta_ci95_high", "mcnemar_p", "agreement")},
                                         "quantized_tensors": meta.get("quantized_tensors"), "size_MiB": metrics["size_on_disk"]["MiB"],
                                         "quantize_s": round(quantize_s, 1), "calibration": meta.get("calibration")}
            print(f"{name:32s} acc {metrics['accuracy']:.4f}  delta {100 * cmp['delta_accuracy']:+.2f} pts "
                  f"[{100 * cmp['delta_ci95_low']:+.2f}, {100 * cmp['delta_ci95_high']:+.2f}]  p={cmp['mcnemar_p']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
