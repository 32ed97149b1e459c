"""The documentation generated from the code cannot drift: the catalogue lists every registry scheme and every
variant of the `all` set, the parameter reference every key of params.yaml, a new scheme or option appears
without editing a page; every command the getting-started page shows exists; the README stays one screen.
(`make test` also builds the whole site with `mkdocs build --strict`.)"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import yaml

from ptqflow import catalogue, variant_sets
from ptqflow.quantize import SCHEMES, Scheme, register

from .conftest import ROOT


@pytest.fixture(scope="module")
def pages():
    return catalogue.pages(ROOT)


def test_catalogue_lists_every_scheme_and_every_variant_of_the_all_set(pages):
    index = pages["variants/index.md"]
    for name in SCHEMES:
        assert f"[`{name}`]({name}.md)" in index and f"variants/{name}.md" in pages
    every = variant_sets.compose("all", root=ROOT)["variants"]
    assert set(every) == set(variant_sets.defined(ROOT))  # the all set names every variant file of conf/variant/
    for variant, raw in every.items():
        assert f"| `{variant}` | [`{raw['scheme']}`]" in index
        assert f"| `{variant}` |" in pages[f"variants/{raw['scheme']}.md"]
    # where it runs comes from the stages' own decision: bf16 is skipped on the AVX2 kind and runs on the others
    page = pages["variants/cast.md"]
    row = next(line for line in page.splitlines() if line.startswith("| `bf16` |"))
    assert row.count("skipped: bfloat16 is emulated") == 1 and row.count("| runs") == 2


def test_parameter_reference_lists_every_key_of_params_yaml_and_its_stages(pages):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    ref = pages["reference/parameters.md"]
    for section in catalogue.SECTIONS:
        for key in params[section]:
            assert f"| `{section}.{key}` |" in ref, (section, key)
    assert "Read by: `finetune`." in ref and "`evaluate@<variant>`" in ref and "## `variant_set`" in ref


def test_a_new_scheme_and_option_appear_in_the_catalogue_without_editing_a_page():
    @dataclass
    class FakeOptions:
        wobble: int = 3  # how much it wobbles

        def __post_init__(self) -> None:
            from ptqflow.config import check

            check(1 <= self.wobble <= 9, "wobble", "an integer in 1..9", self.wobble)

    fake = Scheme("fake_scheme_for_docs", FakeOptions, lambda *a: {}, lambda *a: None, "a scheme that only a test registers")
    register(fake)
    try:
        page = catalogue.scheme_page("fake_scheme_for_docs", {"fake_v": {"scheme": "fake_scheme_for_docs", "wobble": 4}})
        assert "| `wobble` | int | `3` | how much it wobbles | an integer in 1..9 |" in page
        assert "| `fake_v` | wobble: 4 | runs | runs | runs |" in page
        index = catalogue.catalogue_index({}, {})
        assert "[`fake_scheme_for_docs`](fake_scheme_for_docs.md) | a scheme that only a test registers" in index
    finally:
        del SCHEMES["fake_scheme_for_docs"]


def test_committed_params_yaml_is_the_composed_default_set():
    """params.yaml is what `dvc exp run -S variants=default` writes from conf/ (`make params` after editing conf/)."""
    assert (ROOT / "params.yaml").read_text() == variant_sets.compose_text("default", root=ROOT)
    for name in variant_sets.names(ROOT):
        composed = variant_sets.compose(name, root=ROOT)
        assert composed["variant_set"] == name and "fp32" in composed["variants"]  # every set has the baseline
    assert variant_sets.compose("hurts", root=ROOT)["variants"]["int8_static_cpu"]["sensitivity"] is True
    assert variant_sets.compose("default", root=ROOT)["variants"]["int8_static_cpu"]["sensitivity"] is False


def test_every_command_of_the_getting_started_page_exists():
    text = (ROOT / "docs" / "getting-started.md").read_text() + (ROOT / "README.md").read_text()
    shown = re.findall(r"`(make [^`]+)`", text) + re.findall(r"^(make [^#\n]+)", text, flags=re.M)  # inline and in code blocks
    targets = {c.split()[1] for c in shown if not c.split()[1].isupper() and "=" not in c.split()[1]}
    help_text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    known = {line.split("\t")[0] for line in help_text.splitlines()}
    assert targets and targets <= known | {"help"}, targets - known
    commands = set(re.findall(r"`ptqflow ([a-z][a-z-]*)", text))
    out = subprocess.run([sys.executable, "-m", "ptqflow", "--help"], capture_output=True, text=True).stdout
    assert commands and all(c in out for c in commands), commands


def test_readme_is_one_screen_and_links_into_the_docs(pages):
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150 and "make run" in readme and "make test" in readme
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links
    for link in links:  # a page of docs/, or one the site generates from the code
        assert (ROOT / link).is_file() or link.removeprefix("docs/") in pages, link
