"""The `ptqflow` command: `assets` fetches the inputs, `table` prints the comparison, `bench` times variants,
`predict` labels texts, `serve` / `loadtest` run the package behind MLflow's scoring server, `ui` opens MLflow."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from .errors import PtqflowError, run_cli


def _assets(args: argparse.Namespace) -> None:
    from .assets import fetch_assets

    from .assets import default_mirror

    from .assets import MODELS, ModelAsset, parse_model_asset

    models = [ModelAsset(MODELS[0].hub_id, args.model_dir, weights=False), *MODELS[1:], *map(parse_model_asset, args.model)]
    for line in fetch_assets(args.mirror or default_mirror(), args.data_dir, tuple(models)):
        print(line)


def _hub_check(args: argparse.Namespace) -> None:
    from .assets import require_hub

    require_hub(", ".join(args.what), "run the default (offline) configuration with `make run`, or copy the "
                "weights and data to local folders and point model.pretrained / data.source at them")
    print(f"Hugging Face Hub reachable for {', '.join(args.what)}")


def _source(args: argparse.Namespace) -> str:
    return f"variant set {args.set!r}" if getattr(args, "set", None) else args.params


def _variants_of(args: argparse.Namespace) -> dict:
    """The variants of `--set NAME` (composed from conf/, as `dvc exp run -S variants=NAME` would), else of the
    params file."""
    from .config import load_params

    if getattr(args, "set", None):
        from .variant_sets import compose

        variants = compose(args.set).get("variants") or {}
    else:
        variants = load_params(args.params).get("variants") or {}
    if not variants:
        raise PtqflowError(f"{_source(args)}: no variants")
    return variants


def _bench(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .benchmark import Protocol, add_speeds, bench_markdown, run_bench
    from .errors import PtqflowError
    from .io import write_json, write_text
    from .modeling import pick_device

    variants = _variants_of(args)
    chosen = args.variants.split(",") if args.variants else list(variants)
    unknown = [v for v in chosen if v not in variants]
    if unknown:
        raise PtqflowError(f"--variants: {', '.join(unknown)} not in {_source(args)} (known: {', '.join(variants)})")
    if args.baseline not in chosen:
        raise PtqflowError(f"--baseline {args.baseline!r} is not among the timed variants ({', '.join(chosen)})")
    if args.half and args.half != "auto" and args.half not in chosen:
        raise PtqflowError(f"--half {args.half!r} is not among the timed variants ({', '.join(chosen)})")
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    overrides = {}
    for item in args.override:
        key, _, value = item.partition("=")
        if not key or not value:
            raise PtqflowError(f"--override {item!r}: expected KEY=VALUE, e.g. num_hidden_layers=12")
        overrides[key] = int(value) if value.lstrip("-").isdigit() else (float(value) if _is_float(value) else value)
    if args.from_config and not (Path(args.from_config) / "config.json").is_file():
        raise PtqflowError(f"--from-config {args.from_config}: no config.json there (e.g. models/base/gpt2 after `ptqflow assets`)")
    if not args.from_config and not Path(args.artifacts).is_dir():
        raise PtqflowError(f"{args.artifacts}: no pipeline artifacts (run `make run`, or use --from-config DIR)")
    try:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        raise PtqflowError(f"--batch-sizes {args.batch_sizes!r}: expected comma-separated integers, e.g. 16,64") from None
    protocol = Protocol(
        rounds=args.rounds if args.rounds is not None else (10 if gpu else 5),
        warmup=args.warmup if args.warmup is not None else (3 if gpu else 1),
        iters=args.iters if args.iters is not None else (10 if gpu else 3),
        seed=args.seed,
    )
    if protocol.rounds < 3 or protocol.iters < 1 or protocol.warmup < 0:
        raise PtqflowError("--rounds must be >= 3, --iters >= 1 and --warmup >= 0")
    bench = run_bench({v: variants[v] for v in chosen}, batch_sizes, args.seq_len, protocol, device, args.baseline,
                      artifacts_dir=None if args.from_config else args.artifacts, config_dir=args.from_config,
                      overrides=overrides, threads=args.threads)
    half = args.half
    if half == "auto":
        from .benchmark import fastest_half

        half = fastest_half(bench, [v for v in chosen if variants[v].get("scheme") == "cast"
                                    and variants[v].get("compile", "none") in ("none", False)])
    add_speeds(bench, args.baseline, half or None)
    write_json(f"{args.out}.json", bench)
    write_text(f"{args.out}.md", bench_markdown(bench))
    print(bench_markdown(bench))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .config import ReportParams, load_params, load_section
    from .errors import PtqflowError
    from .io import read_json
    from .report import format_table

    report = load_section(ReportParams, "report", load_params(args.params))
    path = Path(args.comparison)
    if not path.is_file():
        raise PtqflowError(f"{path}: missing (run `make run` or `dvc repro report`)")
    comparison = read_json(path)
    measured = comparison.get("measured") or {}
    print(f"variant set: {comparison.get('variant_set') or 'not named'}; measured {measured.get('date') or '(date not recorded)'} "
          f"on {measured.get('device') or comparison.get('device')}")
    print(format_table(list(comparison["variants"].values()), report.size_unit, comparison["baseline"]))
    profiles = comparison.get("profiles") or {}
    what = ("; ".join(f"{k}: " + ("one row per call" if p["batch_size"] == 1 else f"calls of {p['batch_size']}")
                      + f", {p['statistic']}" for k, p in profiles.items()) if profiles else f"batch {comparison.get('batch_size')}")
    print(f"speed: interleaved benchmark on {comparison.get('device')} ({what})")
    rec = comparison.get("recommendation") or {}
    if rec:
        fastest = rec.get("fastest_by_profile") or {"": rec["fastest"]}
        print(f"recommended: smallest acceptable {rec['smallest']}; fastest acceptable "
              + ", ".join(f"{v} ({k})" if k else v for k, v in fastest.items()))
    for name, why in comparison.get("skipped", {}).items():
        print(f"{name}: skipped on the machine that evaluated it: {why}")


def _predict(args: argparse.Namespace) -> None:
    if not args.texts and not args.csv:
        raise PtqflowError("predict: give texts as arguments or --csv FILE")
    if args.texts and args.csv:
        raise PtqflowError("predict: give texts or --csv, not both")
    from .predict import load_packaged, predict_csv

    if args.csv:
        src = Path(args.csv)
        if not src.is_file():
            raise PtqflowError(f"{src}: no such file")
    model = load_packaged(args.model, args.device)
    if args.csv:
        out = Path(args.out or src.with_suffix(".pred.csv"))
        n = predict_csv(model, src, out, args.column)
        print(f"predict: {n} rows -> {out} ({model.meta['variant']})")
        return
    for text, label in zip(args.texts, model.predict(args.texts)):
        print(f"{label}\t{text}")


def _variants(args: argparse.Namespace) -> None:
    import torch

    from .machine import assume_cpu, cpu_info
    from .quantize import resolve, unavailable

    variants = _variants_of(args)
    device = torch.device(args.device)
    flags = args.cpu_flags.replace(",", " ").split() if args.cpu_flags is not None else None
    label = "the CPU of --cpu-flags"
    if args.cpu_kind:
        from .machine import CPU_KINDS

        if args.cpu_kind not in CPU_KINDS:
            raise PtqflowError(f"--cpu-kind {args.cpu_kind!r}: not a known kind (known: {', '.join(CPU_KINDS)})")
        label, flags = CPU_KINDS[args.cpu_kind]
    with assume_cpu(flags, label) if flags is not None else contextlib.nullcontext():
        info = cpu_info()
        print(f"{device.type}: {info['model']} [{' '.join(info['flags']) or 'no listed flags'}]" if device.type == "cpu" else "cuda")
        skipped = 0
        for name, raw in variants.items():
            scheme, _ = resolve(name, raw)
            why = unavailable(name, raw, device)
            skipped += bool(why)
            print(f"{name:28s} {scheme.name:26s} {'skipped: ' + why if why else 'runs'}")
    print(f"{len(variants) - skipped} of {len(variants)} variants run; the skipped ones' stages only write why")


def _package_params(args: argparse.Namespace):
    from .config import PackageParams, load_params, load_section

    return load_section(PackageParams, "package", load_params(args.params))


def _serve(args: argparse.Namespace) -> None:
    import time

    from .serve import HOST, SERVE_DIR, free_port, model_uri_for, served
    from .tracking import tracking_uri

    pkg = _package_params(args)
    uri = args.model_uri or model_uri_for(args.variant, pkg.registered_model, pkg.max_rows)
    port = args.port or free_port()
    print(f"serve: starting `mlflow models serve -m {uri} --env-manager local` on http://{HOST}:{port} ...", flush=True)
    with served(uri, args.variant, port, env={"MLFLOW_TRACKING_URI": tracking_uri()}, log_dir=SERVE_DIR) as server:
        print(f"serve: ready at {server.url}/invocations (log: {server.log}); try:\n"
              f"  curl -s -X POST {server.url}/invocations -H 'Content-Type: application/json' "
              "-d '{\"dataframe_split\": {\"columns\": [\"text\"], \"data\": [[\"Stocks rallied on Friday\"]]}}'\n"
              f"Ctrl-C stops it.", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            print("serve: stopped")
            return
    raise PtqflowError(f"the server exited on its own (log: {server.log})")


def _loadtest(args: argparse.Namespace) -> None:
    import contextlib
    import time

    import mlflow
    import torch

    from .io import write_json, write_text
    from .machine import command_line, environment
    from .serve import SERVE_DIR, LoadPlan, compare_servers, loadtest, markdown, model_uri_for, probe, sample_texts, served
    from .tracking import tracking_uri

    pkg = _package_params(args)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        raise PtqflowError(f"--clients {args.clients!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if not names or args.baseline not in names:
        raise PtqflowError(f"--baseline {args.baseline!r} must be one of --variants ({args.variants})")
    if args.rounds < 1 or args.max_seconds <= 0 or min(clients) < 1:
        raise PtqflowError("--rounds and --clients must be >= 1 and --max-seconds > 0")
    plan = LoadPlan(clients=clients, rounds=args.rounds, max_seconds=args.max_seconds)
    texts = sample_texts(args.texts, args.seed)
    uris = {n: model_uri_for(n, pkg.registered_model, pkg.max_rows) for n in names}
    print(f"loadtest: {len(names)} servers, at most {plan.bound_s(len(names)) / 60:.1f} minutes of load", flush=True)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(served(uri, n, env={"MLFLOW_TRACKING_URI": tracking_uri()}, log_dir=SERVE_DIR))
                   for n, uri in uris.items()]
        probed = probe(servers[0].url, texts[:4], pkg.max_rows) if args.probe else []
        record = loadtest(servers, texts, plan, progress=lambda line: print(line, flush=True))
    record.update(environment=environment(torch.device("cpu")), mlflow=mlflow.__version__, command=command_line(),
                  date=time.strftime("%Y-%m-%d"), baseline=args.baseline, servers=uris, texts=len(texts),
                  plan={"clients": list(plan.clients), "payloads": plan.payloads, "rounds": plan.rounds, "max_seconds": plan.max_seconds,
                        "requests_per_client": plan.requests_per_client, "min_requests": plan.min_requests},
                  ratios=compare_servers(record["results"], args.baseline), probe=probed, probe_server=names[0])
    write_json(f"{args.out}.json", record)
    write_text(f"{args.out}.md", markdown(record))
    print(markdown(record))
    errors = sum(r["errors"] for phases in record["results"].values() for rounds in phases.values() for r in rounds)
    bad = [p["request"] for p in probed if not (p["ok"] and p["good_after"] and not p["traceback_in_body"])]
    if errors or bad:
        raise PtqflowError(f"loadtest: {errors} failed requests under load; bad requests mishandled: {', '.join(bad) or 'none'}")


def _ui(args: argparse.Namespace) -> None:
    """`mlflow ui` on the project's store, with the address of the ptqflow experiment's runs table."""
    import subprocess

    from .serve import mlflow_executable
    from .tracking import EXPERIMENT, tracking_uri

    uri = tracking_uri()
    experiment = None
    if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).is_file():
        import mlflow

        mlflow.set_tracking_uri(uri)
        found = mlflow.MlflowClient().get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else None
    base = f"http://127.0.0.1:{args.port}"
    runs = f"{base}/#/experiments/{experiment}/runs" if experiment else f"{base} (no '{EXPERIMENT}' experiment yet: run the pipeline)"
    print(f"mlflow ui: the ptqflow runs table is at {runs}\n  (MLflow opens on its GenAI home; if an experiment shows "
          "GenAI pages, switch the sidebar's 'GenAI / Model training' toggle to Model training). Ctrl-C stops it.", flush=True)
    if args.print_only:
        return
    try:
        subprocess.run([mlflow_executable(), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)])
    except KeyboardInterrupt:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptqflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("assets", help="copy AG News, the GPT-2 tokenizer/config and the pretrained all-MiniLM-L6-v2 "
                       "from a mirror, else the Hub")
    p.add_argument("--mirror", default=None, help="folder with data/ag_news/ and models/<name>/ (default: $PTQFLOW_MIRROR, "
                   "else ../shared beside the project)")
    p.add_argument("--data-dir", default="data/raw/ag_news", help="where AG News goes (default: %(default)s)")
    p.add_argument("--model-dir", default="models/base/gpt2", help="where the GPT-2 tokenizer + config go (default: %(default)s)")
    p.add_argument("--model", action="append", default=[], metavar="HUB_ID=DIR",
                   help="also bring this model (weights, tokenizer, config) into DIR: from the mirror's models/<name>/, else "
                   "the Hub (e.g. gpt2=models/base/gpt2-pretrained); repeatable")
    p.set_defaults(func=_assets)
    p = sub.add_parser("hub-check", help="fail fast, in one line, when the Hugging Face Hub cannot be reached")
    p.add_argument("what", nargs="*", default=["gpt2", "fancyzhx/ag_news"], help="what needs the Hub (for the message)")
    p.set_defaults(func=_hub_check)
    p = sub.add_parser("bench", help="time variants interleaved in one process at several batch sizes; JSON + markdown table",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--params", default="params.yaml", help="parameter file (its `variants`)")
    p.add_argument("--set", default=None, metavar="NAME", help="take the variants of a named set (conf/variants/NAME.yaml: "
                   "default, all, hurts, gpu, reference) instead of the params file")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all in the params file or set)")
    p.add_argument("--batch-sizes", default="1,16,64", help="comma-separated batch sizes")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per row")
    p.add_argument("--rounds", type=int, default=None, help="rounds, each visiting every variant once in a fresh random order (default: 10 on GPU, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed passes per visit (default: 3 on GPU, 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed passes per visit (default: 10 on GPU, 3 on CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of the visiting orders")
    p.add_argument("--threads", type=int, default=None, help="CPU threads, fixed for the run (default: torch's default)")
    p.add_argument("--baseline", default="fp32", help="speedups are against this variant (paired by round)")
    p.add_argument("--half", default="auto", help="a second speedup column against this variant; auto = the faster "
                   "half-precision cast here; '' for none")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run")
    p.add_argument("--artifacts", default="models/quantized", help="pipeline artifacts, one folder per variant")
    p.add_argument("--from-config", default=None, metavar="DIR",
                   help="instead of artifacts: the architecture this folder's config.json names, fresh weights (e.g. models/base/gpt2)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a field of that config (its own names, e.g. num_hidden_layers=12), with --from-config")
    p.add_argument("--out", default="benchmarks/bench", help="output path without extension (.json and .md)")
    p.set_defaults(func=_bench)
    p = sub.add_parser("variants", help="where each variant of the params file runs: on this machine, or on a CPU with "
                       "other flags (--cpu-flags), and why the others are skipped")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument("--set", default=None, metavar="NAME", help="the variants of a named set (conf/variants/NAME.yaml) instead")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the device the stages would run on (default: %(default)s)")
    p.add_argument("--cpu-flags", default=None, metavar="FLAGS",
                   help="plan for another CPU: its /proc/cpuinfo flags (space or comma separated), e.g. "
                   "'avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16' for an AMX Xeon")
    p.add_argument("--cpu-kind", default=None, metavar="KIND",
                   help="plan for one of the CPU kinds this project was measured on: avx2, avx512-vnni-bf16, amx (their flags: "
                   "machine.CPU_KINDS)")
    p.set_defaults(func=_variants)
    p = sub.add_parser("table", help="print the comparison table (one row per variant) from metrics/comparison.json")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    p.add_argument("--comparison", default="metrics/comparison.json", help="the report stage's comparison (default: %(default)s)")
    p.set_defaults(func=_table)
    p = sub.add_parser("predict", help="labels for texts from a packaged model (the package stage's models/recommended)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("texts", nargs="*", help="texts to classify (one label per line, tab, the text)")
    p.add_argument("--model", default="models/recommended", help="packaged model folder")
    p.add_argument("--csv", default=None, help="instead of texts: a CSV with a text column; writes a copy with a label column")
    p.add_argument("--column", default="text", help="the CSV's text column")
    p.add_argument("--out", default=None, help="output CSV (default: <input>.pred.csv)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run")
    p.set_defaults(func=_predict)
    p = sub.add_parser("serve", help="serve the packaged model with MLflow's scoring server (mlflow models serve, local "
                       "environment) on 127.0.0.1 until Ctrl-C", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", default="recommended", help="recommended (the registered model's latest version, else "
                   "models/recommended) or a variant the report compared (packaged on the fly)")
    p.add_argument("--model-uri", default=None, help="serve this MLflow model URI instead (models:/NAME/VERSION, a folder)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--params", default="params.yaml", help="parameter file (its package section)")
    p.set_defaults(func=_serve)
    from .serve import LoadPlan  # its defaults are the flags' (standard library only: --help stays quick)

    p = sub.add_parser("loadtest", help="serve variants side by side and load them: 1 / 4 / 16 closed-loop clients, single "
                       "rows and batches, bounded; then the malformed requests; JSON + markdown",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", default="recommended,fp32", help="comma-separated: recommended and/or variants the report compared")
    p.add_argument("--baseline", default="fp32", help="the ratios of requests per second are against this one")
    p.add_argument("--clients", default=",".join(map(str, LoadPlan.clients)), help="concurrent clients per phase, comma-separated")
    p.add_argument("--rounds", type=int, default=LoadPlan.rounds, help="rounds, each running every phase on every server in a "
                   "fresh seeded order")
    p.add_argument("--max-seconds", type=float, default=LoadPlan.max_seconds, help="the longest one phase may run")
    p.add_argument("--texts", type=int, default=64, help="seeded test rows the requests are made of")
    p.add_argument("--seed", type=int, default=0, help="seed of the rows and the orders")
    p.set_defaults(probe=True)  # before the flag, whose own default is SUPPRESS: --help says no "(default: True)"
    p.add_argument("--no-probe", dest="probe", action="store_false", default=argparse.SUPPRESS,
                   help="skip the malformed requests (sent after the load otherwise)")
    p.add_argument("--params", default="params.yaml", help="parameter file (its package section)")
    p.add_argument("--out", default="benchmarks/serve/loadtest", help="output path without extension (.json and .md)")
    p.set_defaults(func=_loadtest)
    p = sub.add_parser("ui", help="mlflow ui on the project's store, printing the address of the ptqflow runs table",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--port", type=int, default=5000, help="port")
    p.add_argument("--print-only", action="store_true", help="print the address and exit")
    p.set_defaults(func=_ui)
    return parser


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every stage script shares: the parameter file and switching MLflow off."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="parameter file")
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow (also: PTQFLOW_TRACKING=0)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_cli(lambda: args.func(args))
