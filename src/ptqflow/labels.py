"""Match a trained classifier's class names (`config.id2label`) to the data's, whatever order either side uses.

A trained head has one output per class, in the order it was trained with; its config names them. The data has
its own class names and ids (data.py). A model used as given (`model.init: finetuned`) is scored with the mapping
this module finds, once, in the `prepare` stage: the prepared labels are re-encoded in the model's output order,
so that for every later stage (evaluate, the calibrating and budgeted schemes, benchmark, package, predict)
`argmax(logits) == label` and `meta["classes"][k]` is the data's name of output k. Nothing else re-orders.

How output k of the model is matched to a data class, in this order:
1. `model.label_map` (model name -> data name) for the names it lists;
2. the same name;
3. the same name once case and whitespace are ignored (`" sci/tech "` = `"Sci/Tech"`);
4. generic names (`LABEL_0`, `LABEL_1`, ..., transformers' default when a head was trained without names): output
   k is the data's class id k (a warning line says so, since nothing checks it but the validation accuracy).
The result must be one-to-one and cover every data class; otherwise a `PtqflowError` names both sides.
"""

from __future__ import annotations

import re

from .errors import PtqflowError

GENERIC = re.compile(r"^LABEL_(\d+)$")


def normalized(name: str) -> str:
    """Case- and whitespace-insensitive form of a class name."""
    return " ".join(str(name).split()).casefold()


def model_labels(config) -> list[str]:
    """The model's class names in output order (config.id2label, keys as ints), checked against num_labels."""
    raw = getattr(config, "id2label", None) or {}
    try:
        by_index = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise PtqflowError(f"config.id2label {raw!r}: keys must be output indices 0..N-1") from None
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise PtqflowError(f"config.id2label {raw!r}: keys must be the output indices 0..N-1")
    count = getattr(config, "num_labels", len(by_index))
    if count != len(by_index):
        raise PtqflowError(f"config.id2label names {len(by_index)} classes but num_labels is {count}")
    return [by_index[i] for i in range(len(by_index))]


def _sides(model: list[str], data: list[str]) -> str:
    return f"model (config.id2label): {', '.join(map(repr, model))}; data: {', '.join(map(repr, data))}"


def match(model: list[str], data: list[str], label_map: dict[str, str] | None = None) -> tuple[list[int], list[str]]:
    """(order, notes): `order[k]` is the data class id of model output k; `notes` are the warning lines to print.
    Raises PtqflowError (one line naming both sides) when the two cannot be matched one-to-one."""
    label_map = dict(label_map or {})
    notes: list[str] = []
    if len(model) != len(data):
        raise PtqflowError(f"the model has {len(model)} classes and the data {len(data)}: they cannot be matched "
                           f"({_sides(model, data)})")
    unknown_keys = [k for k in label_map if k not in model]
    if unknown_keys:
        raise PtqflowError(f"model.label_map names {', '.join(map(repr, unknown_keys))}, not classes of the model "
                           f"({_sides(model, data)})")
    unknown_values = [v for v in label_map.values() if v not in data]
    if unknown_values:
        raise PtqflowError(f"model.label_map maps to {', '.join(map(repr, unknown_values))}, not classes of the data "
                           f"({_sides(model, data)})")
    generic = [GENERIC.match(name) for name in model]
    if all(generic) and not label_map and not set(model) & set(data):
        ids = [int(g.group(1)) for g in generic]
        if sorted(ids) != list(range(len(data))):
            raise PtqflowError(f"the model's generic class names are not LABEL_0..LABEL_{len(data) - 1} ({_sides(model, data)})")
        notes.append(f"the model's classes have generic names ({model[0]}, ...): output k is taken as the data's class id k "
                     f"({', '.join(f'{m} = {data[i]!r}' for m, i in zip(model, ids))}); give model.label_map if that is wrong")
        return ids, notes
    exact = {name: i for i, name in enumerate(data)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(data):
        loose.setdefault(normalized(name), []).append(i)
    order: list[int] = []
    missing: list[str] = []
    for name in model:
        if name in label_map:
            order.append(exact[label_map[name]])
        elif name in exact:
            order.append(exact[name])
        elif len(loose.get(normalized(name), [])) == 1:
            order.append(loose[normalized(name)][0])
        else:
            missing.append(name)
    if missing:
        raise PtqflowError(f"cannot match the model's class(es) {', '.join(map(repr, missing))} to the data's by name; give "
                           f"model.label_map (model name: data name) ({_sides(model, data)})")
    if len(set(order)) != len(order):
        twice = sorted({data[i] for i in order if order.count(i) > 1})
        raise PtqflowError(f"several model classes match the data's {', '.join(map(repr, twice))}; give model.label_map "
                           f"({_sides(model, data)})")
    return order, notes


def describe(order: list[int], model: list[str], data: list[str]) -> dict[str, str]:
    """{model name: data name}, for the records (reports/data.json, reports/train.json, package.json)."""
    return {model[k]: data[order[k]] for k in range(len(order))}


def in_model_order(order: list[int], data: list[str]) -> list[str]:
    """The data's class names in the model's output order: the prepared data's `classes`."""
    return [data[i] for i in order]


def relabel(ids, order: list[int]):
    """Data class ids -> the model's output indices (the inverse of `order`), element-wise over a pandas Series."""
    inverse = {data_id: k for k, data_id in enumerate(order)}
    return ids.map(inverse).astype(int)


def chance_check(correct: int, rows: int, class_counts: list[int], alpha: float = 0.01) -> tuple[bool, str]:
    """Whether a validation accuracy is above chance, and the sentence that says so.

    Chance is the larger of 1/K and the most common class's share p0 (a model that always answers one class
    scores that). With c of n rows correct, the one-sided binomial p-value is P(X >= c | X ~ Bin(n, p0)); the
    accuracy is above chance when p < alpha. A head scored against permuted labels lands at or below chance."""
    from scipy.stats import binomtest

    p0 = max(max(class_counts) / max(rows, 1), 1 / max(len(class_counts), 1))
    p = binomtest(correct, rows, p0, alternative="greater").pvalue if rows else 1.0
    text = f"validation accuracy {correct / max(rows, 1):.4f} on {rows} rows against chance {p0:.4f} (one-sided binomial p = {p:.3g})"
    return p < alpha, text
