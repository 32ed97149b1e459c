"""Every CPU variant of params.yaml on a tiny 2-layer config of each family (GPT-2, BERT, Llama), trained on the
default data: accuracy and the number of quantized modules per family x variant, in one process (no DVC, no
MLflow), for the "any classifier" closing note. With --pairs, the same on a sentence-pair dataset
(`benchmarks/make_agnews_pairs.py`) through `data.text_pair`.

    python benchmarks/family_study.py --out benchmarks/families/agnews.json
    python benchmarks/family_study.py --source data/raw/agnews_pairs --text-pair text_pair --out benchmarks/families/pairs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILY_FIELDS = {  # 2 layers, 128 wide, like the default GPT-2 (n_embd 128, 4 heads, MLP 512)
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}),
    "bert": ("BertConfig", {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512,
                            "max_position_embeddings": 128}),
    "llama": ("LlamaConfig", {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "max_position_embeddings": 128}),
}


def main() -> None:
    import transformers
    import yaml

    from ptqflow.config import DataParams, EvalParams, ModelParams, TrainParams, load_section
    from ptqflow.data import prepare
    from ptqflow.evaluate import evaluate_variant
    from ptqflow.machine import environment
    from ptqflow.modeling import checked_tokenizer
    from ptqflow.quantize import quantize_variant, unavailable
    from ptqflow.stats import compare_predictions
    from ptqflow.train import finetune
    from tests.families import TOKENIZER_FILES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data/raw/ag_news")
    parser.add_argument("--text-pair", default=None)
    parser.add_argument("--tokenizer", default="models/base/gpt2", help="the shared GPT-2 tokenizer folder")
    parser.add_argument("--families", default="gpt2,bert,llama")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    train = load_section(TrainParams, "train", params)
    cpu = torch.device("cpu")
    variants = {n: v for n, v in params["variants"].items() if v.get("compile", "none") == "none" and not unavailable(n, v, cpu)}
    results: dict = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "environment": environment(cpu),
                     "source": args.source, "text_pair": args.text_pair, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in args.families.split(","):
            cls, fields = FAMILY_FIELDS[family]
            base = tmp / family / "base"
            getattr(transformers, cls)(vocab_size=50257, **fields).save_pretrained(str(base))
            for name in TOKENIZER_FILES:
                if (Path(args.tokenizer) / name).is_file():
                    (base / name).write_bytes((Path(args.tokenizer) / name).read_bytes())
            model_params = ModelParams(base=str(base))
            data_params = DataParams(source=args.source, text_pair=args.text_pair, max_length=params["data"]["max_length"])
            prepared = tmp / family / "prepared"
            prepare(data_params, checked_tokenizer(model_params, data_params.max_length), prepared)
            t0 = time.perf_counter()
            trained = finetune(model_params, train, prepared, tmp / family / "model", tmp / family / "ckpt")
            rows, preds = {}, {}
            for name, raw in variants.items():
                meta = quantize_variant(name, raw, tmp / family / "model", tmp / family / name, cpu)
                m, p = evaluate_variant(name, raw, tmp / family / name, prepared, EvalParams(device="cpu"))
                preds[name] = p
                rows[name] = {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], "size_MiB": m["size_on_disk"]["MiB"],
                              "quantized_modules": meta.get("quantized_modules", meta.get("quantized_tensors")),
                              "quantized_embeddings": meta.get("quantized_embeddings", 0), "runtime_dtype": m["runtime_dtype"]}
            base_p = preds["fp32"]
            for name in rows:
                st = compare_predictions(base_p["actual"].to_numpy(), base_p["predicted"].to_numpy(), preds[name]["predicted"].to_numpy())
                rows[name].update(delta_accuracy=st["delta_accuracy"], mcnemar_p=st["mcnemar_p"])
            results["families"][family] = {"val_accuracy": trained["val_accuracy"], "n_parameters": trained["n_parameters"],
                                           "wall_s": round(time.perf_counter() - t0, 1), "variants": rows}
            print(family, {n: (round(r["accuracy"], 4), r["quantized_modules"]) for n, r in rows.items()}, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
