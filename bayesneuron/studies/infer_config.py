"""The ``[[infer]]`` tables of a study's config: their keys, methods and settings."""

from __future__ import annotations

from dataclasses import dataclass

from bayesneuron.protocol.design import Design

__all__ = ["DESIGN_COLUMNS", "INFER_KEYS", "METHODS", "Infer", "infer_problem"]

INFER_KEYS = {
    "name": str,
    "method": str,
    "guide": str,
    "designs": (str, list),
    "num_particles": int,
    "max_steps": int,
    "num_samples": int,
    "map_starts": int,
    "map_steps": int,
    "map_init": str,
    "warmup_steps": int,
    "num_chains": int,
    "chain_workers": int,
    "priors": str,
    "noise_sigma": float,
    "ladder": list,
    "map_windows": list,
    "map_horizons": list,
    "psis_samples": int,
    "smc_particles": int,
    "smc_kernel": str,
    "adaptive_rounds": int,
}
METHODS = ("svi", "laplace", "nuts")
DESIGN_COLUMNS = (
    "stim",
    "rec",
    "guide",
    "posterior_method",
    "posterior_ok",
    "mean_contraction",
    "min_contraction",
    "max_abs_z",
    "coverage_90",
    "logdet_fisher",
    "elbo",
    "wall_s",
)


@dataclass
class Infer:
    name: str
    method: str
    designs: list[Design]
    guide: str = "mvn"
    num_particles: int = 8
    max_steps: int = 400
    num_samples: int = 400
    map_starts: int = 4
    map_steps: int = 50
    map_init: str = "starts"
    warmup_steps: int = 200
    num_chains: int = 2
    chain_workers: int = 1  # NUTS chains side by side (processes); 1 where designs already are
    priors: str | None = None
    noise_sigma: float | None = None
    ladder: tuple[str, ...] | None = None
    map_windows: tuple[int, ...] = ()
    map_horizons: tuple[int, ...] | None = None  # None: the fit's default continuation
    psis_samples: int = 2000  # fresh draws for each method's k̂ check (importance: twice)
    smc_particles: int = 512  # per population of the "smc" rung (two populations)
    smc_kernel: str = "walk"  # its move beside the independence sampler: "walk" or "hmc"
    adaptive_rounds: int = 4  # the most rounds of the "adaptive_importance" rung

    def methods(self) -> tuple[str, ...]:
        """The posterior methods tried in turn (:mod:`bayesneuron.inference.posterior`):
        ``ladder`` if given, else by ``method`` — SVI: the guide, a flow, importance
        resampling; Laplace: the Laplace approximation; NUTS: NUTS."""
        if self.ladder:
            return tuple(self.ladder)
        if self.method == "svi":
            return tuple(dict.fromkeys((f"svi:{self.guide}", "svi:iaf", "importance")))
        return (self.method,)


def infer_problem(r: dict) -> str | None:
    """What is wrong with the values of an ``[[infer]]`` table ``r`` (keys and types already
    checked against :data:`INFER_KEYS`), or None."""
    from bayesneuron.inference.svi import GUIDES

    method = r.get("method", "svi")
    if method not in METHODS:
        return f"method {method!r} unknown; use one of {list(METHODS)}"
    if r.get("guide", "mvn") not in GUIDES:
        return f"guide {r['guide']!r} unknown; use one of {sorted(GUIDES)}"
    counts = ("num_particles", "max_steps", "num_samples", "map_starts", "map_steps")
    for key in (*counts, "num_chains", "chain_workers", "psis_samples", "adaptive_rounds"):
        if key in r and r[key] < 1:
            return f"{key} must be ≥ 1"
    if r.get("smc_particles", 2) < 2:
        return "smc_particles must be ≥ 2"
    if r.get("smc_kernel", "walk") not in ("walk", "hmc"):
        return "smc_kernel must be 'walk' or 'hmc'"
    if r.get("map_init", "starts") not in ("starts", "truth"):
        return "map_init must be 'starts' or 'truth'"
    if r.get("noise_sigma", 0) < 0 or r.get("warmup_steps", 0) < 0:
        return "noise_sigma and warmup_steps must be ≥ 0"
    for key in ("map_windows", "map_horizons"):
        if not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in r.get(key, [])
        ):
            return f"{key} must list integers ≥ 1 (output times)"
    return ladder_problem(r.get("ladder"))


def ladder_problem(ladder) -> str | None:
    """What is wrong with a ``ladder`` (a non-empty list of methods of
    :mod:`bayesneuron.inference.posterior`), or None."""
    from bayesneuron.inference.svi import GUIDES

    known = ("laplace", "importance", "adaptive_importance", "nuts", "smc")
    known += tuple(f"svi:{g}" for g in GUIDES)
    if ladder is not None and (not ladder or any(m not in known for m in ladder)):
        return f"ladder {ladder!r} must list methods among {list(known)}"
    return None
