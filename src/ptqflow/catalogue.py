"""The documentation pages that are generated from the code, so that they cannot drift from it: the variant
catalogue (one page per registry scheme: its module's docstring, its options with types, defaults and bounds from
the options dataclass, the variants of the `all` set that use it and where each runs, decided by the same code as
`ptqflow variants --cpu-flags`) and the parameter reference (every params.yaml key: type, default, the default
set's value, what it does, which stages read it, from config.py's dataclasses and dvc.yaml's params lists).

`docs/gen_pages.py` (mkdocs-gen-files) writes them at build time; nothing generated is committed.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from pathlib import Path
from typing import Any

from . import config

SECTIONS = {"data": config.DataParams, "model": config.ModelParams, "train": config.TrainParams, "eval": config.EvalParams,
            "benchmark": config.BenchmarkParams, "report": config.ReportParams, "package": config.PackageParams}


# --------------------------------------------------------------------------------------------- dataclass fields
def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else f'"{a}"' for a in typing.get_args(tp))
    if origin in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "(required)"
    return "null" if value is None else (str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str)
                                         else str(value))


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class source: the comment lines just above it and the one at the end of its line."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines[1:]:
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# ").strip())
                continue
            name = text.split(":", 1)[0].strip()
            if ":" in text and name.isidentifier() and not text.startswith(("def ", "class ", "return", "@")):
                inline = text.split("  # ", 1)[1].strip() if "  # " in text else ""
                out[name] = " ".join([*above, inline]).strip()
            above = []
    return out


def _bounds(cls: type) -> dict[str, str]:
    """What `check(ok, key, expected, value)` calls in the class's (and its bases') __post_init__ expect of a key."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        post = klass.__dict__.get("__post_init__")
        if post is None:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(post)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check" and len(node.args) >= 3
                    and isinstance(node.args[2], ast.Constant)):
                key = node.args[1]
                if isinstance(key, ast.Constant):
                    out[str(key.value).split(".")[-1]] = str(node.args[2].value)
                elif isinstance(key, (ast.JoinedStr, ast.Name)):  # a loop over names (key, or f"data.{key}"): every name it takes
                    for loop in ast.walk(tree):
                        if isinstance(loop, ast.For) and isinstance(loop.iter, ast.Tuple):
                            for elt in loop.iter.elts:
                                if isinstance(elt, ast.Constant):
                                    out.setdefault(str(elt.value), str(node.args[2].value))
    return out


def fields(cls: type) -> list[dict]:
    """[{name, type, default, doc, bounds}] of an options / params dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    comments, bounds = _comments(cls), _bounds(cls)
    return [{"name": f.name, "type": _type_text(hints[f.name]), "default": _default_text(f), "doc": comments.get(f.name, ""),
             "bounds": bounds.get(f.name, "")} for f in dataclasses.fields(cls)]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------------- parameter reference
def stages_reading(dvc_yaml: dict) -> dict[str, list[str]]:
    """params key (section, or section.key) -> the dvc.yaml stages that list it in their `params`."""
    out: dict[str, list[str]] = {}
    for name, stage in (dvc_yaml.get("stages") or {}).items():
        body = stage.get("do", stage)
        for p in body.get("params", []) or []:
            key = p if isinstance(p, str) else next(iter(p))
            key = key.replace(".${key}", "").replace("${key}", "")
            out.setdefault(key, []).append(f"{name}@<variant>" if "foreach" in stage else name)
    return out


def _mapped_dataclass(cls: type, name: str) -> list[type]:
    """The dataclass a field maps names to (`dict[str, ProfileParams]`), if it is such a mapping."""
    import typing

    tp = typing.get_type_hints(cls).get(name)
    if typing.get_origin(tp) is dict:
        value = typing.get_args(tp)[1]
        return [value] if dataclasses.is_dataclass(value) else []
    return []


def parameter_reference(params: dict, dvc_yaml: dict) -> str:
    """Markdown: every section and key of params.yaml with its type, default, the default set's value, what it
    does and which stages read it (a change re-runs those stages and everything downstream)."""
    readers = stages_reading(dvc_yaml)
    out = ["# Parameter reference", "",
           "Generated from `src/ptqflow/config.py` (types, defaults, bounds, descriptions) and `dvc.yaml` (which stage "
           "reads what) when the site is built. Values are validated when a stage starts: an unknown key, a wrong type "
           "or an out-of-range value stops it with one line naming the key. Change a value with "
           "`dvc exp run -S section.key=value`, or in `conf/config.yaml` then `make params`.", ""]
    for section, cls in SECTIONS.items():
        given = params.get(section) or {}
        who = sorted(set(readers.get(section, []) + [s for k, v in readers.items() if k.startswith(section + ".") for s in v]))
        out += [f"## `{section}`", "", f"Read by: {', '.join(f'`{s}`' for s in who) or 'no stage'}.", "",
                "| key | type | default | default set | what it does | accepted |", "|---|---|---|---|---|---|"]
        for f in fields(cls):
            value = given.get(f["name"], "(default)")
            value = "null" if value is None else (str(value).lower() if isinstance(value, bool) else value)
            out.append(f"| `{section}.{f['name']}` | {_cell(f['type'])} | `{_cell(f['default'])}` | `{_cell(value)}` | "
                       f"{_cell(f['doc'])} | {_cell(f['bounds'])} |")
            for inner in _mapped_dataclass(cls, f["name"]):  # a mapping of named entries (benchmark.profiles): their keys
                for g in fields(inner):
                    out.append(f"| `{section}.{f['name']}.<name>.{g['name']}` | {_cell(g['type'])} | `{_cell(g['default'])}` | "
                               f"(per entry) | {_cell(g['doc'])} | {_cell(g['bounds'])} |")
        unknown = sorted(set(given) - {f["name"] for f in fields(cls)})
        if unknown:
            out += ["", f"Not a key of `{cls.__name__}` (the stage would stop): {', '.join(unknown)}"]
        out.append("")
    out += ["## `variants`", "",
            f"Read by: {', '.join(f'`{s}`' for s in sorted(set(readers.get('variants', []))))}; each `variants.<name>` by its own "
            "`quantize@<name>` and `evaluate@<name>`.", "",
            "A mapping of variant name to `scheme:` (a registry scheme) plus that scheme's options: see the "
            "[variant catalogue](../variants/index.md). Which variants run is chosen by a named set "
            "(`conf/variants/<set>.yaml`, `dvc exp run -S variants=<set>`).", "",
            "## `variant_set`", "", f"Read by: {', '.join(f'`{s}`' for s in readers.get('variant_set', []))}. The name of the "
            "set params.yaml was composed from, shown in the report and by `ptqflow table`.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- variant catalogue
def where_it_runs(variant: str, raw: dict) -> dict[str, str | None]:
    """CPU kind -> why the variant is skipped there (None: it runs), decided by registry.unavailable under each
    kind's flags (machine.CPU_KINDS), as `ptqflow variants --cpu-flags` does."""
    import torch

    from .machine import CPU_KINDS, assume_cpu
    from .quantize import unavailable

    out = {}
    for kind, (model, flags) in CPU_KINDS.items():
        with assume_cpu(flags, model):
            out[kind] = unavailable(variant, raw, torch.device("cpu"))
    return out


def scheme_page(name: str, variants: dict[str, dict]) -> str:
    """Markdown page of registry scheme `name`: what it does (its module's docstring), its options, the variants
    of the `all` set that use it and where each runs."""
    from .machine import CPU_KINDS
    from .quantize import SCHEMES

    scheme = SCHEMES[name]
    module = inspect.getmodule(scheme.quantize)
    doc = inspect.getdoc(module) or ""
    calibrates = "some options" if callable(scheme.calibrates) else ("yes" if scheme.calibrates else "no")
    out = [f"# `{name}`", "", scheme.description + ".", "",
           f"- Module: `{module.__name__}`; options: `{scheme.options.__name__}`",
           f"- Calibrates on validation rows: {calibrates}; `compile` applies: {'yes' if scheme.compiles else 'no'}; "
           f"loads outside ptqflow with: {scheme.loader}", "", "## Options", "",
           "Besides `scheme` and `compile` (`none`, `default`, `max-autotune`, `reduce-overhead`: CUDA graphs, CUDA only; `cuda-graph`: Inductor + the whole forward as one CUDA graph per input shape, CUDA only).", "",
           "| option | type | default | what it does | accepted |", "|---|---|---|---|---|"]
    for f in fields(scheme.options):
        out.append(f"| `{f['name']}` | {_cell(f['type'])} | `{_cell(f['default'])}` | {_cell(f['doc'])} | {_cell(f['bounds'])} |")
    mine = {v: raw for v, raw in variants.items() if raw.get("scheme") == name}
    out += ["", "## Variants of the `all` set", ""]
    if mine:
        kinds = list(CPU_KINDS)
        out += ["| variant | options | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for v, raw in mine.items():
            opts = ", ".join(f"{k}: {val}" for k, val in raw.items() if k != "scheme") or "(defaults)"
            runs = where_it_runs(v, raw)
            out.append(f"| `{v}` | {_cell(opts)} | " + " | ".join("runs" if runs[k] is None else f"skipped: {_cell(runs[k])}"
                                                                for k in kinds) + " |")
    else:
        out.append("None: the scheme is available to your own variants.")
    out += ["", "## How it works", "", "```text", doc, "```", ""]
    return "\n".join(out)


def catalogue_index(variants: dict[str, dict], sets: dict[str, list[str]]) -> str:
    """The catalogue's front page: every scheme with its description, every variant of the `all` set with its
    scheme, the sets it belongs to and how many of the CPU kinds run it."""
    from .machine import CPU_KINDS
    from .quantize import SCHEMES

    out = ["# Variant catalogue", "",
           "Generated from the registry (`src/ptqflow/quantize/`) and `conf/` when the site is built. A variant is a "
           "scheme plus options, defined once in `conf/variant/<name>.yaml`; a set (`conf/variants/<set>.yaml`) picks "
           "variants. Where a variant runs is decided by the same code as `ptqflow variants --cpu-flags`, for the CPU "
           "kinds: " + "; ".join(f"**{k}** ({m}: {' '.join(f) or 'no listed flags'})" for k, (m, f) in CPU_KINDS.items()) + ".",
           "", "## Schemes", "", "| scheme | what it does |", "|---|---|"]
    out += [f"| [`{n}`]({n}.md) | {_cell(s.description)} |" for n, s in SCHEMES.items()]
    out += ["", "## Variants", "", "| variant | scheme | sets | CPU kinds that run it |", "|---|---|---|---|"]
    for v, raw in variants.items():
        runs = where_it_runs(v, raw)
        ran = [k for k, why in runs.items() if why is None]
        member = [s for s, names in sets.items() if v in names]
        out.append(f"| `{v}` | [`{raw['scheme']}`]({raw['scheme']}.md) | {', '.join(member)} | "
                   f"{', '.join(ran) if ran else 'none (GPU only)'} |")
    out += ["", "## Sets", ""] + [f"- `{s}`: {', '.join(f'`{n}`' for n in names)}" for s, names in sets.items()] + [""]
    return "\n".join(out)


def pages(root: str | Path | None = None) -> dict[str, str]:
    """Every generated page, path under docs/ -> markdown."""
    import yaml

    from . import variant_sets
    from .quantize import SCHEMES

    root = Path(root) if root else variant_sets.conf_dir().parent
    composed = {s: variant_sets.compose(s, root=root) for s in variant_sets.names(root)}
    every = composed["all"]["variants"]
    out = {"variants/index.md": catalogue_index(every, {s: list(c["variants"]) for s, c in composed.items()})}
    for name in SCHEMES:
        out[f"variants/{name}.md"] = scheme_page(name, every)
    out["reference/parameters.md"] = parameter_reference(composed["default"], yaml.safe_load((root / "dvc.yaml").read_text()))
    return out
