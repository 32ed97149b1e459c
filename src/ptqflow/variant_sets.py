"""Named variant sets: which variants a run studies, composed by Hydra the way DVC composes params.yaml.

`conf/config.yaml` holds every params section but the variants; `conf/variant/<name>.yaml` defines each variant
once (a registry scheme and its options); `conf/variants/<set>.yaml` picks the variants of a set (`default`,
`all`, `hurts`, `gpu`, `reference`) and records its name as `variant_set`. With `hydra.enabled` in .dvc/config,
`dvc exp run -S variants=all` composes params.yaml from them before running (dvc.utils.hydra.compose_and_dump);
`compose` here does the same, so `make params` writes the committed params.yaml (the `default` set: what plain
`dvc repro` runs) byte for byte as DVC would, and a test checks that they agree.
"""

from __future__ import annotations

from pathlib import Path

from .errors import PtqflowError
from .io import project_root

CONF = "conf"


def conf_dir(root: str | Path | None = None) -> Path:
    """`conf/` of the project (`root`, else the current one); outside a project (no conf/ there), that of the
    checkout this package runs from."""
    found = Path(root or project_root()) / CONF
    if root is None and not found.is_dir():
        checkout = Path(__file__).resolve().parents[2] / CONF
        if checkout.is_dir():
            return checkout
    return found


def names(root: str | Path | None = None) -> list[str]:
    """The sets (files of conf/variants/), sorted."""
    return sorted(p.stem for p in (conf_dir(root) / "variants").glob("*.yaml"))


def defined(root: str | Path | None = None) -> list[str]:
    """Every variant defined in conf/variant/, sorted."""
    return sorted(p.stem for p in (conf_dir(root) / "variant").glob("*.yaml"))


def compose_text(variant_set: str = "default", overrides: list[str] | tuple[str, ...] = (), root: str | Path | None = None) -> str:
    """params.yaml's text for `variant_set` plus Hydra `overrides`, as `dvc exp run -S variants=<set>` writes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    if variant_set not in names(root):
        raise PtqflowError(f"no variant set {variant_set!r} in {conf_dir(root) / 'variants'} (known: {', '.join(names(root))})")
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir(root).resolve()), version_base=None):
        cfg = compose(config_name="config", overrides=[f"variants={variant_set}", *overrides])
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def compose(variant_set: str = "default", overrides: list[str] | tuple[str, ...] = (), root: str | Path | None = None) -> dict:
    """The composed params of `variant_set`, as a mapping."""
    import yaml

    return yaml.safe_load(compose_text(variant_set, overrides, root))


def write_params(path: str | Path, variant_set: str = "default", root: str | Path | None = None) -> str:
    """Write the composed params of `variant_set` to `path` (atomically); returns the text."""
    from .io import write_text

    text = compose_text(variant_set, root=root)
    write_text(path, text)
    return text
