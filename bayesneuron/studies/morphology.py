"""Morphology figures of a study on a reconstructed cell: each free parameter's contraction
(Laplace at the truth, or the posterior's of an ``[[infer]]`` design) painted on the sections —
per compartment, or a region's value on every section of the region — with the electrodes
marked. Presets without a reconstruction (:attr:`Preset.sections` None) get none."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayesneuron.protocol.design import row_label
from bayesneuron.studies.experiment import build_experiment
from bayesneuron.studies.output import safe_label

__all__ = ["compartment_values", "infer_morphology", "laplace_morphology", "morphology_figure"]


def laplace_morphology(study, model, lp, design, variant, out: Path) -> None:
    """For presets with a reconstructed cell: each free parameter's Laplace contraction at
    the truth painted on the morphology, electrodes marked (:func:`morphology_figure`)."""
    name = f"laplace_morphology_{safe_label(design.label)}"
    morphology_figure(
        study,
        model,
        lp.per_param(lp.contraction),
        "Laplace contraction at the truth",
        f"{study.name}: {design.label}" + (f", {variant}" if variant else ""),
        out / (f"{name}_{variant}.png" if variant else f"{name}.png"),
    )


def infer_morphology(study, out: Path, rows: list[dict], device: str = "cpu") -> list[Path]:
    """For presets with a reconstructed cell: each ``[[infer]]`` design's posterior
    contraction (``designs.csv``) painted on the morphology,
    ``<run>_morphology_<design>.png``; returns the paths written."""
    from bayesneuron.reference.presets import get_preset

    paths: list[Path] = []
    if get_preset(study.preset).sections is None:
        return paths
    for inf in study.infers:
        for d in inf.designs:
            row = next(
                (r for r in rows if r["run"] == inf.name and row_label(r) == d.label),
                None,
            )
            if row is None:
                continue
            model, _, _ = build_experiment(study, d, inf.priors or study.priors, device)
            per = {
                k: np.array([row[f"contraction_{k}_{i}"] for i in range(model.sizes[k])])
                for k in model.free
            }
            ok = str(row.get("posterior_ok", True)) == "True"
            flag = "" if ok else " — posterior NOT ok: its checks failed (not a result)"
            path = out / f"{inf.name}_morphology_{safe_label(d.label)}.png"
            title = f"{inf.name}: {d.label}{flag}"  # the figure's title: room for the flag
            if morphology_figure(study, model, per, "posterior contraction", title, path):
                paths.append(path)
    return paths


def compartment_values(model, per: dict) -> dict[str, np.ndarray] | None:
    """Each free parameter's values (``per``: site → ``[size]``) per compartment — a region's
    value on each of its compartments, NaN outside every region — or None where a parameter
    is neither per compartment nor shared by region."""
    from bayesneuron.inference.forms import PerCompartment, Shared

    morph = model.cell.morphology
    out = {}
    for form in model.parametrisation.forms:
        if form.name not in per or not isinstance(form, (PerCompartment, Shared)):
            return None
        vals = np.asarray(per[form.name], dtype=float)
        if isinstance(form, Shared):
            comp = np.full(morph.n_comp, np.nan)
            for r, reg in enumerate(form.regions):
                comp[list(reg.indices(morph))] = vals[r]
            vals = comp
        out[form.name] = vals
    return out


def morphology_figure(study, model, per: dict, what: str, title: str, path: Path) -> bool:
    """One panel per free parameter: its value (a contraction) painted on the sections (a
    section's value: the mean over its compartments), electrodes marked; nothing for a
    preset without a reconstruction (returns whether it drew)."""
    from bayesneuron import reports
    from bayesneuron.reference.presets import get_preset

    preset = get_preset(study.preset)
    comp = compartment_values(model, per)
    if preset.sections is None or comp is None:
        return False
    secs = preset.sections()
    regions = {
        f.name: [r.name for r in f.regions]
        for f in model.parametrisation.forms
        if hasattr(f, "regions")
    }
    section_of = [n.rsplit("(", 1)[0] for n in model.cell.morphology.names]
    marks = {"stim": [section_of[i] for i in model.stim_index]}
    if len(model.rec_index) < len(section_of):
        marks["rec"] = [section_of[i] for i in model.rec_index]
    xy = np.concatenate([np.asarray(s.points, dtype=float)[:, :2] for s in secs])
    aspect = float(np.clip(np.ptp(xy[:, 1]) / max(np.ptp(xy[:, 0]), 1e-9), 0.4, 2.5))
    size = (6.0 * len(comp), 4.6 * aspect + 1.4)  # panels as tall as the cell is (xy plane)
    fig, axes = reports.subplots(1, len(comp), figsize=size, squeeze=False)
    fig.set_layout_engine("constrained")  # the title sits on the panels, not above a gap
    for ax, (k, c) in zip(axes[0], comp.items()):
        vals: dict[str, list[float]] = {}
        for sec, x in zip(section_of, c):
            if np.isfinite(x):
                vals.setdefault(sec, []).append(float(x))
        reports.plot_morphology(
            secs,
            {sec: float(np.mean(v)) for sec, v in vals.items()},
            electrodes=marks,
            ax=ax,
            title=f"{k}: {what}",
            label="contraction",
        )
        if k in regions:  # the regions' own numbers (the soma and axon are small to see)
            text = "\n".join(f"{r}: {float(x):.2f}" for r, x in zip(regions[k], per[k]))
            box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "none"}
            ax.text(0.02, 0.98, text, transform=ax.transAxes, fontsize=8, va="top", bbox=box)
    fig.suptitle(title)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # equal axes leave the rest of a panel empty
    return True
