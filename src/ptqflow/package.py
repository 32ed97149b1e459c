"""The `package` stage: the variant to ship, in a folder that loads on its own, with a model card.

`models/recommended/` holds
- `model/`: the variant's artifact as its runtime loads it: a Hugging Face folder (`fp32`, `cast`:
  `AutoModelForSequenceClassification.from_pretrained`), an ONNX graph + external data (`ort_*`:
  `onnxruntime.InferenceSession`), an OpenVINO IR (`ov_*`: `openvino.Core().compile_model`), or, for schemes whose saved form only ptqflow's registry reads
  (`int8_scratch`, `int8_dynamic`, `torchao`, `bnb_*`), that artifact with `ptqflow.json`; `loader` says which;
- `tokenizer/`: the tokenizer it was trained with (from models/finetuned);
- `README.md`: a model card with its Table 1 row, the accuracy change with CI and McNemar p, latency and
  speedup with CI, the machine and versions;
- `package.json`: variant, scheme, options, loader, labels, max_length, where it came from.

Which variant: `package.variant` = `smallest` or `fastest` (the report's acceptable picks; `fastest` is the fastest
on the first traffic profile), `fastest:<profile>` (the fastest acceptable variant for that traffic profile, e.g.
`fastest:batch`), or a variant name. package.json and the model card say which profile the pick is for.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from .errors import PtqflowError
from .inputs import MAX_ROWS
from .io import atomic_dir, read_json, write_json, write_text

PICKS = ("smallest", "fastest")


def choose(comparison: dict, pick: str) -> tuple[str, str | None]:
    """(the variant `pick` names, the traffic profile it was picked for): the report's smallest / fastest acceptable
    one (fastest: the first profile's), the fastest for a named profile (`fastest:batch`), or a variant it compared."""
    rec = comparison["recommendation"]
    primary = rec.get("primary_profile")
    if pick in PICKS:
        return rec[pick], primary if pick == "fastest" else None
    if pick.startswith("fastest:"):
        profile = pick.split(":", 1)[1]
        by = rec.get("fastest_by_profile") or {}
        if profile not in by:
            raise PtqflowError(f"package.variant {pick!r}: the report timed no profile {profile!r} (profiles: "
                               f"{', '.join(by) or 'none'}; benchmark.profiles)")
        return by[profile], profile
    if pick not in comparison["variants"]:
        skipped = comparison.get("skipped", {})
        if pick in skipped:
            raise PtqflowError(f"package.variant {pick!r} was skipped on this machine ({skipped[pick]}); nothing to package")
        known = ", ".join([*PICKS, *(f"fastest:{p}" for p in rec.get("fastest_by_profile") or {}), *comparison["variants"]])
        raise PtqflowError(f"package.variant {pick!r} is not a variant the report compared (known: {known})")
    return pick, None


def package(pick: str, comparison_path: Path, artifacts_dir: Path, finetuned_dir: Path, eval_dir: Path,
            prepared_meta: dict, out_dir: Path, max_rows: int = MAX_ROWS) -> dict:
    """Write `out_dir` (atomically) for the chosen variant, with the tokenizer the model was fine-tuned with (saved
    beside it in `finetuned_dir`: the pretrained model's own, or model.base's for a scratch model); returns package.json."""
    if not comparison_path.is_file():
        raise PtqflowError(f"{comparison_path}: missing (run: dvc repro report)")
    comparison = read_json(comparison_path)
    variant, profile = choose(comparison, pick)
    artifact = artifacts_dir / variant
    if not (artifact / "ptqflow.json").is_file():
        raise PtqflowError(f"{artifact}: no quantized artifact (run: dvc repro quantize@{variant})")
    qmeta = read_json(artifact / "ptqflow.json")
    details = read_json(eval_dir / f"{variant}.json")
    from .modeling import load_tokenizer
    from .quantize import SCHEMES

    loader = SCHEMES[qmeta["scheme"]].loader
    tokenizer = load_tokenizer(finetuned_dir)
    from transformers import AutoConfig

    from .modeling import check_tokenizer

    check_tokenizer(tokenizer, AutoConfig.from_pretrained(str(finetuned_dir)))
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(artifact, tmp / "model")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        meta = {
            "variant": variant, "pick": pick, "profile": profile, "scheme": qmeta["scheme"], "options": qmeta["options"],
            "loader": loader,
            "labels": details.get("confusion_matrix", {}).get("labels") or prepared_meta.get("classes"),
            **({"model_labels": list(prepared_meta["label_mapping"])} if prepared_meta.get("label_mapping") else {}),
            "max_length": prepared_meta.get("max_length"), "text_pair": prepared_meta.get("text_pair"), "max_rows": max_rows,
            "row": comparison["variants"][variant], "baseline": comparison["baseline"],
            "environment": details.get("environment"), "benchmark_device": comparison.get("device"),
        }
        write_json(tmp / "package.json", meta)
        write_text(tmp / "README.md", model_card(meta, comparison))
    return meta


def compile_note(mode: str, loader: str) -> list[str]:
    """The model card's line on the compile mode it was measured with (none: no line). ptqflow's loader applies
    the mode itself (registry.compile_model); a model loaded by transformers needs the same call."""
    from .quantize.registry import CUDA_GRAPH_MODES

    if mode == "none":
        return []
    graphs = mode in CUDA_GRAPH_MODES
    first = "the first call per input shape compiles" + (" and captures a CUDA graph" if graphs else "")
    if loader == "ptqflow":
        on = "`load_packaged(folder, device='cuda')`" if graphs else "`load_packaged`"
        return [f"Measured with `compile: {mode}`, which {on} applies ({first})."]
    if mode == "cuda-graph":
        return ["Measured as one CUDA graph per input shape: `model = ptqflow.runtimes.cuda_graph.GraphedModel(model)` after "
                f"loading ({first}; call under `torch.inference_mode()` with the inputs on the GPU)."]
    return [f"Measured through `torch.compile(mode='{mode}')`: call `model.compile(mode='{mode}')` after loading ({first})."]


def model_card(meta: dict, comparison: dict) -> str:
    """The model card: what the model is, how to load it, and the numbers that chose it."""
    from .report import format_table

    row, st = meta["row"], meta["row"].get("stats") or {}
    env = meta.get("environment") or {}
    how = {
        "transformers": "```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
                        "model = AutoModelForSequenceClassification.from_pretrained('models/recommended/model', dtype='auto')\n"
                        "tokenizer = AutoTokenizer.from_pretrained('models/recommended/tokenizer')\n```",
        "onnxruntime": "```python\nimport onnxruntime\nsession = onnxruntime.InferenceSession('models/recommended/model/model.onnx')\n"
                       "# inputs: input_ids, attention_mask (int64, [batch, sequence]); output: logits\n```",
        "openvino": "```python\nimport openvino\ncompiled = openvino.Core().compile_model('models/recommended/model/model.xml', 'CPU',\n"
                    "    {'INFERENCE_PRECISION_HINT': 'f32'})  # the hint it was measured with: package.json options / runtime\n"
                    "# inputs: input_ids, attention_mask[, token_type_ids] (int64, [batch, sequence]); output: logits\n```",
        "ptqflow": f"Its saved form is read by ptqflow's registry only (scheme `{meta['scheme']}`):\n"
                   "```python\nfrom ptqflow.predict import load_packaged\nmodel = load_packaged('models/recommended')\n```",
    }[meta["loader"]]
    delta = (f"{st['delta_accuracy'] * 100:+.2f} points [95% CI {st['delta_ci95_low'] * 100:+.2f}, "
             f"{st['delta_ci95_high'] * 100:+.2f}], McNemar p = {st['mcnemar_p']:.3g}") if st else "it is the baseline"
    speed = "; ".join(_speed_line(name, p, meta["baseline"], comparison) for name, p in (row.get("profiles") or {}).items()) or "not timed"
    return "\n".join([
        f"# {meta['variant']} — " + (f"the fastest acceptable variant for the `{meta['profile']}` traffic profile"
                                      if meta.get("profile") else
                                      f"the {meta['pick'] if meta['pick'] in PICKS else 'chosen'} acceptable variant"),
        "",
        f"Scheme `{meta['scheme']}` with options `{meta['options']}`; runs as: {row.get('runtime_dtype')}.",
        *compile_note(row.get("compile", "none"), meta["loader"]),
        f"Labels: {', '.join(map(str, meta['labels'] or []))}; inputs truncated to {meta['max_length']} tokens.",
        "",
        "## Load it",
        "",
        how,
        "",
        "or `ptqflow predict --model models/recommended \"some text\"`.",
        "",
        "## What it costs and saves",
        "",
        f"- accuracy {row['accuracy']:.4f}, change vs {meta['baseline']}: {delta}",
        f"- size {row['size']:.2f} {row.get('size_unit', 'MiB')}, {row['compression']:.2f}x smaller than {meta['baseline']}",
        f"- speed per traffic profile: {speed}; interleaved benchmark on {meta.get('benchmark_device')}",
        "",
        format_table([row], row.get("size_unit", "MiB"), meta["baseline"]),
        "",
        "## Measured on",
        "",
        f"{env.get('device_name', '?')}; torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}.",
        "",
    ])


def _speed_line(name: str, p: dict, baseline: str, comparison: dict) -> str:
    """'`online` (one row per call): 4.26 ms per call (p99 6.10), 3.91x vs fp32 [95% CI 3.80, 4.02] (faster)'."""
    info = (comparison.get("profiles") or {}).get(name) or {}
    calls = "" if not info else (" (one row per call)" if info.get("batch_size") == 1 else f" (calls of {info['batch_size']})")
    if p.get("median_ms") is None or p.get("speedup") is None:
        return f"`{name}`: not timed"
    figure = (f"{p['rows_per_s']:.0f} rows/s" if p["statistic"] == "throughput"
              else f"{p['median_ms']:.2f} ms per call (p99 {p['p99_ms']:.2f})")
    lo, hi = p["speedup_ci95"]
    return f"`{name}`{calls}: {figure}, {p['speedup']:.2f}x vs {baseline} [95% CI {lo:.2f}, {hi:.2f}] ({p['speed_verdict']})"


EXAMPLE_TEXT = "Stocks rallied after the central bank held interest rates steady."
RUNTIME_PACKAGES = ("torch", "transformers", "onnxruntime", "openvino", "bitsandbytes", "torchao", "safetensors", "pandas", "numpy")


def pyfunc_model(folder: Path) -> dict:
    """The MLflow pyfunc model of a package folder, as `mlflow.pyfunc.log_model` / `save_model` take it: logged from
    code (pyfunc_model.py; ptqflow travels as code_paths, nothing is pickled), the folder as its artifact, a
    signature and an input example, the runtime packages pinned to this environment's versions."""
    from importlib.metadata import PackageNotFoundError, version

    import pandas as pd
    from mlflow.models import infer_signature

    from .predict import load_packaged

    example = pd.DataFrame({"text": [EXAMPLE_TEXT]})
    signature = infer_signature(example, load_packaged(folder).predict([EXAMPLE_TEXT]))
    pins = []
    for pkg in RUNTIME_PACKAGES:
        try:
            pins.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            pass
    here = Path(__file__).resolve().parent
    return {"python_model": str(here / "pyfunc_model.py"), "artifacts": {"package": str(folder)}, "code_paths": [str(here)],
            "signature": signature, "input_example": example, "pip_requirements": pins}


@contextlib.contextmanager
def _quiet_signature_hint():
    """MLflow suggests type hints on predict() to infer a signature: we pass one."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method", category=UserWarning)
        yield


def save_mlflow_model(folder: Path, out_dir: Path) -> Path:
    """The package as an MLflow model folder (`mlflow models serve -m <out_dir>` serves it), without the registry."""
    import mlflow

    with _quiet_signature_hint():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        mlflow.pyfunc.save_model(path=str(out_dir), **pyfunc_model(folder))
    return out_dir


def register(folder: Path, name: str, run_id: str, parent_id: str) -> str:
    """Log `folder` as an MLflow pyfunc model from code (`pyfunc_model`) under the active run, and register it as a
    new version of `name`, tagged with the runs it came from. Returns one line saying which version."""
    import mlflow

    with _quiet_signature_hint():
        info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **pyfunc_model(folder))
    client = mlflow.MlflowClient()
    number = info.registered_model_version
    meta = read_json(folder / "package.json")
    for key, value in {"source_run": run_id, "pipeline_run": parent_id, "variant": meta["variant"], "scheme": meta["scheme"],
                       "loader": meta["loader"]}.items():
        client.set_model_version_tag(name, str(number), key, str(value))
    return f"package: registered {name} version {number} (run {run_id})"
