"""The model families, registered by name; the one place that tells a model or an artifact's family.

A third family is a module with a ``ModelFamily`` subclass and one ``register`` call below: the chain, the
backends, validation and the benchmark reach it only through the interface in ``base``.
"""

from __future__ import annotations

from fastvar.family.base import ModelFamily, ResolvedExport, SamplingDefaults
from fastvar.family.hart import HARTFamily
from fastvar.family.infinity import InfinityFamily
from fastvar.sampling import SamplingSettings

__all__ = ["ModelFamily", "ResolvedExport", "SamplingDefaults", "artifact_geometry", "artifact_schedule",
           "family", "for_artifact", "for_config", "for_model", "names", "register", "text_channels"]

_FAMILIES: dict[str, ModelFamily] = {}
_FALLBACK = "infinity"  # model names no other family claims are Infinity's (its presets name the unknown)


def register(f: ModelFamily) -> ModelFamily:
    _FAMILIES[f.name] = f
    return f


register(InfinityFamily())
register(HARTFamily())


def names() -> list[str]:
    return list(_FAMILIES)


def family(name: str) -> ModelFamily:
    """A family by its manifest name."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def for_model(model: str) -> ModelFamily:
    """The family of a model name (preset, alias, or the family's own name given with ``--ckpt``)."""
    for name, f in _FAMILIES.items():
        if name != _FALLBACK and f.owns(model):
            return f
    return _FAMILIES[_FALLBACK]


def for_config(cfg) -> ModelFamily:
    """The family whose model config ``cfg`` is (an instance of its ``config_class``)."""
    for f in _FAMILIES.values():
        if isinstance(cfg, f.config_class()):
            return f
    raise ValueError(f"no model family takes a {type(cfg).__name__}; known: {', '.join(_FAMILIES)}")


def for_artifact(art) -> ModelFamily:
    """The family an artifact's manifest records (``model.family``; manifests without one are Infinity's)."""
    return family(art.manifest.model.family)


# ---- what an artifact's family says about it --------------------------------------------------------
def artifact_schedule(art):
    """The scale schedule an artifact was exported for."""
    m = art.manifest
    return for_artifact(art).schedule(m.model.config, m.resolution, m.aspect)


def artifact_geometry(art):
    """The generation loop's per-family object factory for an artifact."""
    return for_artifact(art).geometry(art.manifest.model.config)


def text_channels(art) -> int:
    """Channels of the text states the artifact's condition graph takes."""
    return for_artifact(art).text_width(art.manifest.model.config)


def artifact_sampling(art, seed: int = 0, cfg: float | None = None, tau: float | None = None,
                      more_smooth: bool | None = None) -> SamplingSettings:
    """One row of sampling settings per image of the artifact's batch, the family's defaults where not given
    (guidance on or off as exported)."""
    return SamplingSettings.for_batch(for_artifact(art).sampling, art.manifest.batch, seed, cfg, tau, more_smooth,
                                      guided=art.manifest.guidance)
