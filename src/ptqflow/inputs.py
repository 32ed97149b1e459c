"""What one request to the served model may hold, checked before any work: one line saying what is wrong, or the
texts to classify.

A request is a table with a `text` column (MLflow's `dataframe_split` / `dataframe_records` / `inputs`, or a list
of strings). Each row must be a non-empty string: a number, a boolean, a null or a blank string is refused (the
row and what it held are named), never classified. A request holds at most `max_rows` rows (package.max_rows,
256 by default: the server answers one request at a time, so one huge request would hold every other client; send
more as several requests). A text longer than `max_chars` characters is cut there before tokenizing (the
tokenizer then truncates it to the model's `max_length` tokens, as in training and evaluation; 64 characters per
token is far more than any tokenizer needs, so the cut never changes an answer) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import PtqflowError

MAX_ROWS = 256
CHARS_PER_TOKEN = 64


class BadRequest(PtqflowError):
    """A request the served model refuses (the server answers 400 with this one line)."""


@dataclass(frozen=True)
class Limits:
    max_rows: int = MAX_ROWS
    max_chars: int = 128 * CHARS_PER_TOKEN

    @classmethod
    def for_package(cls, meta: dict) -> "Limits":
        """The limits a package's model serves with (package.json: max_rows, max_length)."""
        return cls(int(meta.get("max_rows") or MAX_ROWS), int(meta.get("max_length") or 128) * CHARS_PER_TOKEN)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        import math

        return "null (NaN)" if isinstance(value, float) and math.isnan(value) else f"a number ({value!r})"
    return f"a {type(value).__name__}"


def column(model_input: Any) -> list:
    """The raw values of the request's text column (a DataFrame's `text`, or the items of a list)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            cols = ", ".join(map(str, model_input.columns)) or "none"
            raise BadRequest(f"the request needs a 'text' column (got columns: {cols})")
        return model_input["text"].tolist()
    if isinstance(model_input, pd.Series):
        return model_input.tolist()
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    if isinstance(model_input, str):
        return [model_input]
    raise BadRequest(f"the request must be a table with a 'text' column or a list of texts, got {type(model_input).__name__}")


def checked_texts(model_input: Any, limits: Limits = Limits()) -> tuple[list[str], int]:
    """(the texts to classify, how many were cut at `limits.max_chars`), or BadRequest naming the first bad row."""
    values = column(model_input)
    if not values:
        raise BadRequest("the request holds no rows")
    if len(values) > limits.max_rows:
        raise BadRequest(f"the request holds {len(values)} rows; at most {limits.max_rows} per request (package.max_rows): "
                         "send them as several requests")
    texts, cut = [], 0
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise BadRequest(f"row {i}: text must be a string, got {_kind(value)}")
        if not value.strip():
            raise BadRequest(f"row {i}: text is empty")
        if len(value) > limits.max_chars:
            value, cut = value[: limits.max_chars], cut + 1
        texts.append(value)
    return texts, cut
