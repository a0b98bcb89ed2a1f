"""The front door: every guarded bad input, in one table.

Each row is one thing a user can get wrong at a public entry point, the specific exception
class it raises (from :mod:`bayesneuron.errors`, or ``StudyError``) and a fragment of the
message, which says what was wrong and, where there is one, how to fix it. The second table
does the same for the command line: a non-zero exit, one line on stderr, no traceback and
nothing half-written in ``--out``.

Add a row here when you guard a new input.
"""

import re
from functools import cache
from types import SimpleNamespace

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from bayesneuron import (
    BackwardEuler,
    Cell,
    CrankNicolson,
    Design,
    LogNormalPrior,
    Morphology,
    NeuronModel,
    PaperSodium,
    ScaledUniformPrior,
    Stimulus,
    Torchdiffeq,
    chain,
    draw_truth,
    fit_map,
    fit_map_designs,
    fit_svi,
    laplace,
    load_swc,
    paper_channels,
    paper_currents,
    paper_time_grid,
    run_nuts,
    simulate,
    step_current,
    synthetic_data,
)
from bayesneuron.cli import main
from bayesneuron.errors import (
    ChannelError,
    DataError,
    DesignError,
    FitError,
    MorphologyError,
    ParameterError,
    SolverError,
    StimulusError,
)
from bayesneuron.studies.config import StudyError, load_study

NAN, INF = float("nan"), float("inf")
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@cache
def _world():
    """A small 3-compartment cell, 2 traces, 6 output times (as tests/test_fit.py's small())."""
    cell = Cell(chain(3, ax=0.5, cm=0.45), paper_channels(), v0=-60.0)
    stim = paper_currents(n_traces=2, n_comp=3)
    t = paper_time_grid()[:6]
    solver = CrankNicolson(dt=0.02)

    def model(design=None, **kw):
        kw.setdefault("priors", ScaledUniformPrior(0.7, 1.3))
        kw.setdefault("solver", solver)
        return NeuronModel(cell, stim, t, design, **kw)

    m = model()
    truth = draw_truth(cell, seed=5)
    return SimpleNamespace(
        cell=cell, stim=stim, t=t, model=model, m=m, truth=truth, v=synthetic_data(m, truth)
    )


def _swc(w, text: str | bytes):
    path = w.tmp / "cell.swc"
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _with(v, index, value):
    v = v.clone()
    v[index] = value
    return v


def _study(tmp, text: str):
    folder = tmp / "study"
    folder.mkdir()
    (folder / "config.toml").write_text(text)
    return folder


SOMA = "1 1 0 0 0 5 -1\n"
GOOD_STUDY = '[study]\nname = "x"\n[[run]]\nprotocol = "paper"\ndesigns = ["all|all"]\n'
INFER_STUDY = '[study]\nname = "x"\n[[infer]]\ndesigns = ["all|all"]\n'

# (id, call(w), exception class, message fragment: a regular expression)
API_CASES = [
    # ------------------------------------------------------------------ morphology, SWC
    ("swc-missing-file", lambda w: load_swc(w.tmp / "nope.swc"), MorphologyError,
     r"cannot read SWC file '.*nope\.swc': No such file"),
    ("swc-six-columns", lambda w: load_swc(_swc(w, SOMA + "2 3 0 0 10 1\n")), MorphologyError,
     r"line 2: 6 columns; an SWC line needs 7 \(id type x y z radius parent\)"),
    ("swc-non-numeric", lambda w: load_swc(_swc(w, SOMA + "2 3 x 0 10 1 1\n")), MorphologyError,
     r"line 2: 'x' is not a number"),
    ("swc-non-integer-id", lambda w: load_swc(_swc(w, SOMA + "2.5 3 0 0 10 1 1\n")),
     MorphologyError, r"line 2: id '2\.5' must be an integer"),
    ("swc-cycle", lambda w: load_swc(_swc(w, SOMA + "2 3 0 0 10 1 3\n3 3 0 0 20 1 2\n")),
     MorphologyError, r"points \[2, 3\] form a cycle .* an SWC file must be a tree"),
    ("swc-missing-parent", lambda w: load_swc(_swc(w, SOMA + "2 3 0 0 10 1 7\n")),
     MorphologyError, r"line 2 \(id 2\): parent 7 does not exist in the file"),
    ("swc-several-roots", lambda w: load_swc(_swc(w, SOMA + "2 3 0 0 10 1 -1\n")),
     MorphologyError, r"has 2 roots .* give all but one of them a parent"),
    ("swc-negative-radius", lambda w: load_swc(_swc(w, SOMA + "2 3 0 0 10 -1 1\n")),
     MorphologyError, r"line 2 \(id 2\): radius -1 µm must be > 0"),
    ("swc-empty", lambda w: load_swc(_swc(w, "# only a comment\n")), MorphologyError,
     r"is empty: it has no SWC points"),
    ("swc-binary", lambda w: load_swc(_swc(w, b"\x89PNG\r\n\x1a\n\xff")), MorphologyError,
     r"not UTF-8 text; an SWC file is plain text"),
    ("tree-non-integer-parents", lambda w: Morphology.from_parents([-1, 0.5]), MorphologyError,
     r"parents must be a 1-D list of ints"),
    ("cell-morphology-not-a-morphology", lambda w: Cell("chain", paper_channels()),
     MorphologyError, r"morphology must be a bayesneuron\.Morphology, got str; build one with"),
    # ------------------------------------------------------------------ cell, channels
    ("cell-one-channel-not-a-list", lambda w: Cell(chain(3), PaperSodium()), ChannelError,
     r"channels must be a list .* wrap it in a list"),
    ("cell-duplicate-channels", lambda w: Cell(chain(3), paper_channels() + paper_channels()),
     ChannelError, r"channel names must be non-empty and distinct.*give each instance its own"),
    ("cell-unknown-parameter", lambda w: Cell(chain(3), paper_channels(), params={"g_x": 1.0}),
     ParameterError, r"unknown parameter 'g_x'; this cell has \['e_k'"),
    ("cell-parameter-wrong-shape",
     lambda w: Cell(chain(3), paper_channels(), params={"g_na": [1.0, 2.0]}),
     ParameterError, r"g_na has shape \(2,\); give a scalar or one value per compartment \(3,\)"),
    ("cell-parameter-non-numeric",
     lambda w: Cell(chain(3), paper_channels(), params={"g_na": "high"}),
     ParameterError, r"g_na = 'high' is not numeric"),
    ("cell-v0-nan", lambda w: Cell(chain(3), paper_channels(), v0=NAN), ParameterError,
     r"v0 = nan mV must be a finite number"),
    # ------------------------------------------------------------------ currents
    ("stimulus-ragged", lambda w: Stimulus([[[1.0, 2.0]], [[3.0]]], dt=0.1), StimulusError,
     r"stimulus values must be a numeric array"),
    ("stimulus-one-axis-short", lambda w: Stimulus(np.zeros((3, 10)), dt=0.1), StimulusError,
     r"shape \(3, 10\); expected \[trace, comp, time\] \(add leading axes"),
    ("stimulus-inf", lambda w: Stimulus(_with(w.stim.values, (1, 2, 3), INF), dt=0.1),
     StimulusError, r"NaN or inf \(first at index \[1, 2, 3\]\); currents must be finite"),
    ("stimulus-dt-string", lambda w: Stimulus(np.zeros((1, 3, 4)), dt="0.1"), StimulusError,
     r"bin width dt = '0\.1' ms must be finite and > 0"),
    ("stimulus-unknown-unit", lambda w: Stimulus(np.zeros((1, 3, 4)), dt=0.1, unit="pA"),
     StimulusError, r"unit 'pA' unknown; use one of"),
    ("stimulus-wrong-compartments", lambda w: simulate(w.cell, None, Stimulus(
        np.zeros((2, 5, 4)), dt=0.1)), StimulusError,
     r"5 compartments on axis -2 .* the cell has 3; expected \[trace, 3, bins\]"),
    ("step-current-dt-zero", lambda w: step_current(
        [1.0], site=0, n_comp=3, delay=1, duration=2, t_stop=5, dt=0.0), StimulusError,
     r"dt = 0\.0 ms must be a finite number > 0"),
    ("step-current-site-missing", lambda w: step_current(
        [1.0], site=3, n_comp=3, delay=1, duration=2, t_stop=5, dt=0.1), StimulusError,
     r"site 3 does not exist: the cell has 3 compartments \(0–2\)"),
    ("paper-currents-no-traces", lambda w: paper_currents(n_traces=0), StimulusError,
     r"n_traces = 0 must be an int ≥ 1"),
    # ------------------------------------------------------------------ solvers, time grid
    ("crank-nicolson-dt-zero", lambda w: CrankNicolson(dt=0), SolverError,
     r"dt = 0 ms must be a finite number > 0 \(e\.g\. dt=0\.025\)"),
    ("backward-euler-dt-negative", lambda w: BackwardEuler(dt=-0.1), SolverError,
     r"dt = -0\.1 ms must be a finite number > 0"),
    ("crank-nicolson-unknown-backend", lambda w: CrankNicolson(backend="jax"), SolverError,
     r"backend = 'jax' must be one of \('auto', 'fused', 'torch'\)"),
    ("torchdiffeq-unknown-method", lambda w: Torchdiffeq("rk5"), SolverError,
     r"unknown torchdiffeq method 'rk5'; choose from \[.*'rk4'"),
    ("torchdiffeq-rtol-string", lambda w: Torchdiffeq("dopri5", rtol="tight"), SolverError,
     r"rtol = 'tight' must be a finite number > 0"),
    ("simulate-t-eval-nan", lambda w: simulate(w.cell, None, w.stim, [0.0, NAN]), SolverError,
     r"t_eval contains NaN or inf"),
    ("simulate-float16", lambda w: simulate(w.cell, None, w.stim, dtype=torch.float16),
     SolverError, r"dtype must be torch\.float64 or torch\.float32"),
    ("simulate-unknown-device", lambda w: simulate(w.cell, None, w.stim, device="tpu"),
     SolverError, r"device 'tpu' is not a device; use 'cpu', 'cuda'"),
    ("simulate-cuda-without-cuda", lambda w: simulate(w.cell, None, w.stim, device="cuda"),
     SolverError, r"CUDA is not available here .* use device='cpu'", NO_CUDA),
    # ------------------------------------------------------------------ parameters
    ("params-wrong-shape", lambda w: simulate(w.cell, {"g_na": torch.ones(4)}, w.stim),
     ParameterError, r"g_na has shape \(4,\); expected \[sample…, 3\] \(one value per"),
    ("params-inf", lambda w: simulate(w.cell, {"g_k": [1.0, INF, 1.0]}, w.stim),
     ParameterError, r"g_k contains NaN or inf; parameters must be finite"),
    ("params-non-numeric", lambda w: simulate(w.cell, {"g_na": "high"}, w.stim),
     ParameterError, r"g_na = 'high' is not numeric"),
    ("params-not-a-mapping", lambda w: simulate(w.cell, [100.0, 90.0, 80.0], w.stim),
     ParameterError, r"params must be a mapping name → values"),
    ("params-sample-dims-clash", lambda w: simulate(
        w.cell, {"g_na": torch.ones(4, 3), "g_k": torch.ones(5, 3)}, w.stim), ParameterError,
     r"sample dims that do not broadcast together"),
    ("params-vs-stimulus-batch", lambda w: simulate(
        w.cell, {"g_na": torch.ones(4, 3)}, Stimulus(torch.zeros(5, 2, 3, 4), dt=0.1)),
     ParameterError, r"parameter sample dims \(4,\) do not broadcast against the stimulus"),
    # ------------------------------------------------------------------ model, design, priors
    ("design-compartment-missing", lambda w: w.model(Design(rec=[7])), DesignError,
     r"recorded compartment 7 does not exist: the cell has 3 compartments \(0–2"),
    ("design-empty", lambda w: Design(stim=[]), DesignError,
     r"stimulates no compartment: give at least one site, or None/'all'"),
    ("design-label-malformed", lambda w: Design.from_label("[0,|]"), DesignError,
     r"site list '\[0,' is malformed; write 'all', '\[0,-1\]'"),
    ("design-label-float-site", lambda w: Design.from_label("[0.5]|all"), DesignError,
     r"site '0\.5' in '\[0\.5\]' must be an int index or a compartment name"),
    ("design-not-a-design", lambda w: w.model("all|all"), DesignError,
     r"design must be a bayesneuron\.Design, got str"),
    ("model-stimulus-wrong-compartments", lambda w: NeuronModel(
        w.cell, paper_currents(n_traces=2), w.t), DataError,
     r"stimulus has shape \(2, 6, 48\); expected \[trace, 3, bins\]"),
    ("model-t-eval-decreasing", lambda w: NeuronModel(w.cell, w.stim, [0.0, 1.0, 0.5]),
     DataError, r"t_eval must be finite and strictly increasing"),
    ("model-sigma-zero", lambda w: w.model(sigma=0.0), ParameterError,
     r"sigma = 0\.0 mV must be finite and > 0 \(the observation noise sd\)"),
    ("model-sigma-string", lambda w: w.model(sigma="1 mV"), ParameterError,
     r"sigma = '1 mV' must be a number of mV"),
    ("model-sigma-prior-batched", lambda w: w.model(sigma=dist.HalfNormal(torch.ones(3))),
     ParameterError, r"a sigma prior must be a scalar distribution"),
    ("model-unknown-free-parameter", lambda w: w.model(free=("g_na", "g_x")), ParameterError,
     r"free parameters \['g_x'\] are not parameters of this cell; it has"),
    ("model-free-twice", lambda w: w.model(free=("g_na", "g_na")), ParameterError,
     r"free lists a parameter twice"),
    ("prior-wrong-batch-shape", lambda w: w.model(priors=dist.LogNormal(torch.zeros(5), 1.0)),
     ParameterError, r"prior of 'g_na' has batch shape \(5,\); expected \(\) or \(3,\)"),
    ("prior-base-outside-support", lambda w: w.model(priors=dist.Uniform(0.0, 10.0)),
     ParameterError, r"g_na = \[100\.0, 100\.0, 100\.0\] lies outside the support"),
    ("prior-multivariate", lambda w: w.model(
        priors=dist.MultivariateNormal(torch.zeros(3), torch.eye(3))), ParameterError,
     r"event shape \(3,\); give a univariate distribution"),
    ("prior-unknown-name", lambda w: w.model(priors="flat"), ParameterError,
     r"prior of 'g_na' is 'flat'; use LogNormalPrior\(\), ScaledUniformPrior\(\)"),
    ("prior-lognormal-sd-zero", lambda w: LogNormalPrior(sd=0.0), ParameterError,
     r"LogNormalPrior needs sd > 0"),
    ("prior-uniform-low-above-high", lambda w: ScaledUniformPrior(1.3, 0.7), ParameterError,
     r"ScaledUniformPrior needs 0 ≤ low < high"),
    ("prior-missing-for-sampling", lambda w: w.model(priors=None)(), ParameterError,
     r"have no prior: sampling needs a proper prior"),
    # ------------------------------------------------------------------ data
    ("data-wrong-shape", lambda w: w.m(torch.zeros(2, 3, 5)), DataError,
     r"shape \(2, 3, 5\); this model expects \(2, 3, 6\) = \(trace, recorded compartments"),
    ("data-nan", lambda w: w.m(_with(w.v, (1, 0, 2), NAN)), DataError,
     r"observed data contain NaN or inf \(first at index \[1, 0, 2\]\)"),
    ("data-inf", lambda w: w.m(_with(w.v, (0, 2, 5), -INF)), DataError,
     r"NaN or inf \(first at index \[0, 2, 5\]\)"),
    ("data-non-numeric", lambda w: w.m("v.npy"), DataError,
     r"observed data must be a numeric array \(2, 3, 6\)"),
    ("synthetic-truth-incomplete", lambda w: synthetic_data(w.m, {"g_na": w.truth["g_na"]}),
     ParameterError, r"truth lacks \['g_k'\]; give a value per compartment"),
    ("synthetic-negative-noise", lambda w: synthetic_data(w.m, w.truth, noise_sigma=-1.0),
     ParameterError, r"noise_sigma = -1\.0 must be finite and ≥ 0"),
    ("draw-truth-unknown-parameter", lambda w: draw_truth(w.cell, ("g_x",)), ParameterError,
     r"\['g_x'\] are not parameters of this cell"),
    # ------------------------------------------------------------------ MAP fits
    ("fit-unknown-protocol", lambda w: fit_map(w.m, w.v, protocol="adam"), FitError,
     r"protocol 'adam' unknown; use one of \('paper', 'bayesneuron'\)"),
    ("fit-zero-starts", lambda w: fit_map(w.m, w.v, n_starts=0), FitError,
     r"n_starts = 0 .* must be ints ≥ 1"),
    ("fit-max-steps-string", lambda w: fit_map(w.m, w.v, max_steps="10"), FitError,
     r"max_steps = '10' must be ints ≥ 1"),
    ("fit-not-a-model", lambda w: fit_map(w.cell, w.v), FitError,
     r"fit_map fits a bayesneuron\.NeuronModel, got Cell"),
    ("fit-data-nan", lambda w: fit_map(w.m, _with(w.v, (0, 0, 0), NAN)), DataError,
     r"NaN or inf \(first at index \[0, 0, 0\]\)"),
    ("fit-models-vs-data", lambda w: fit_map_designs([w.m], [w.v, w.v]), FitError,
     r"1 models but 2 data sets"),
    ("fit-truth-incomplete", lambda w: fit_map(w.m, w.v, truth={"g_na": w.truth["g_na"]}),
     FitError, r"truth lacks 'g_k'; give every free parameter"),
    ("fit-truth-wrong-shape", lambda w: fit_map(
        w.m, w.v, truth={**w.truth, "g_na": [1.0, 2.0]}), FitError,
     r"truth\['g_na'\] must be finite with one value per compartment \[3\]"),
    ("fit-init-wrong-shape", lambda w: fit_map(w.m, w.v, init={**w.truth, "g_k": [1.0, 2.0]}),
     FitError, r"init\['g_k'\] must be finite with shape \[3\] or \[4, 3\]"),
    ("fit-init-outside-prior", lambda w: fit_map(
        w.m, w.v, init={**w.truth, "g_na": [1e4, 100.0, 100.0]}), FitError,
     r"init\['g_na'\] has a value 10000\.0 outside .* inside the support of its prior"),
    ("fit-resume-without-checkpoint", lambda w: fit_map(w.m, w.v, resume=True), FitError,
     r"resume=True continues a checkpoint: give checkpoint=<file>"),
    ("fit-horizons-with-paper-protocol", lambda w: fit_map(
        w.m, w.v, protocol="paper", horizons=(2,)), FitError,
     r"horizons apply to protocol='bayesneuron' only"),
    # ------------------------------------------------------------------ posteriors
    ("svi-unknown-guide", lambda w: fit_svi(w.m, w.v, w.truth, guide="flow", max_steps=1),
     FitError, r"guide 'flow' unknown; use one of \['iaf', 'lowrank', 'mvn', 'normal'\]"),
    ("svi-zero-steps", lambda w: fit_svi(w.m, w.v, w.truth, max_steps=0), FitError,
     r"max_steps = 0 must be ≥ 1"),
    ("svi-init-incomplete", lambda w: fit_svi(w.m, w.v, {"g_na": w.truth["g_na"]}), FitError,
     r"the starting point lacks \['g_k'\]"),
    ("laplace-without-priors", lambda w: laplace(w.model(priors=None), w.truth), FitError,
     r"laplace needs a proper prior on every free parameter"),
    ("laplace-inferred-sigma", lambda w: laplace(w.model(sigma=dist.HalfNormal(1.0)), w.truth),
     FitError, r"infers sigma, so give params\['sigma'\]"),
    ("nuts-zero-samples", lambda w: run_nuts(w.m, w.v, w.truth, num_samples=0), FitError,
     r"num_samples = 0 must be an integer ≥ 1"),
    # ------------------------------------------------------------------ study configs
    ("study-folder-missing", lambda w: load_study(w.tmp / "nope"), StudyError,
     r"is not a study folder: .*config\.toml does not exist"),
    ("study-infer-method-mcmc", lambda w: load_study(_study(
        w.tmp, INFER_STUDY + 'method = "mcmc"\n')), StudyError,
     r"\[\[infer\]\] #1: method 'mcmc' unknown; use one of \['svi', 'laplace'"),
    ("study-infer-designs", lambda w: load_study(_study(
        w.tmp, INFER_STUDY.replace('["all|all"]', '"paper10"'))), StudyError,
     r"design list 'paper10' unknown for preset 'paper_toy'; use one of \['grid', 'paper9', "
     r"'grid25'\]"),
    ("study-unknown-preset", lambda w: load_study(_study(
        w.tmp, GOOD_STUDY + "[experiment]\npreset = 'hh_forest'\n")), StudyError,
     r"preset 'hh_forest' unknown; available: \['hh_tree', 'l23', 'paper_l23', 'paper_toy'\]"),
    ("study-hh-tree-site-missing", lambda w: load_study(_study(
        w.tmp, GOOD_STUDY.replace('designs = ', 'designs = ["[0,7]|all"] #')
        + "[experiment]\npreset = 'hh_tree'\n")), StudyError,
     r"design \[0,7\]\|all: .*7"),
    ("study-horizons-with-paper", lambda w: load_study(_study(
        w.tmp, GOOD_STUDY + "horizons = [2]\n")), StudyError,
     r"horizons must be ints ≥ 1, for protocol 'bayesneuron'"),
    ("study-wrong-type", lambda w: load_study(_study(
        w.tmp, GOOD_STUDY + "[model]\nsigma = 'one'\n")), StudyError,
     r"\[model\]\.sigma = 'one' has the wrong type"),
]  # fmt: skip


def _params(rows):
    """Table rows ``(id, *values[, mark])`` as ``pytest.param``s."""
    out = []
    for row in rows:
        marks = row[-1] if isinstance(row[-1], pytest.MarkDecorator) else ()
        values = row[1:-1] if marks else row[1:]
        out.append(pytest.param(*values, id=row[0], marks=marks))
    return out


def test_the_catalogue_is_large_and_distinct():
    ids = [row[0] for row in API_CASES + CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("call, err, match", _params(API_CASES))
def test_api_bad_input(call, err, match, tmp_path):
    w = SimpleNamespace(**vars(_world()), tmp=tmp_path)
    with pytest.raises(err) as e:
        call(w)
    assert type(e.value) is err, f"{type(e.value).__name__} raised, {err.__name__} expected"
    assert re.search(match, str(e.value)), str(e.value)


# --------------------------------------------------------------------------- the command line
def _run(argv):
    """``main(argv)``'s exit status, whether it returns or exits (argparse)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _file(tmp):
    path = tmp / "taken"
    path.write_text("not a folder\n")
    return path


SIM = ["simulate", "--traces", "2"]
TINY = "[experiment]\nn_traces = 2\n"

# (id, argv(tmp, out), stderr fragment); every row must exit non-zero, print one line to
# stderr without a traceback, and leave --out as it found it.
CLI_CASES = [
    ("cli-no-command", lambda tmp, out: [], r"required: command"),
    ("cli-simulate-bad-preset", lambda tmp, out: SIM + ["--preset", "toy", "--out", out],
     r"argument --preset: invalid choice: 'toy' .*see 'bayesneuron simulate --help'"),
    ("cli-simulate-bad-solver", lambda tmp, out: SIM + ["--solver", "euler", "--out", out],
     r"argument --solver: invalid choice: 'euler'"),
    ("cli-simulate-traces-not-int", lambda tmp, out: ["simulate", "--traces", "two", "--out", out],
     r"argument --traces: invalid int value: 'two'"),
    ("cli-simulate-no-traces", lambda tmp, out: ["simulate", "--traces", "0", "--out", out],
     r"--traces 0: need at least 1 stimulus trace"),
    ("cli-simulate-dt-zero", lambda tmp, out: SIM + ["--dt", "0", "--out", out],
     r"dt = 0\.0 ms must be a finite number > 0"),
    ("cli-simulate-negative-seed", lambda tmp, out: SIM + ["--seed", "-1", "--out", out],
     r"seed = -1 must be in \[0, 2³²\)"),
    ("cli-simulate-unknown-device", lambda tmp, out: SIM + ["--device", "tpu", "--out", out],
     r"device 'tpu' is not a device"),
    ("cli-simulate-cuda-without-cuda", lambda tmp, out: SIM + ["--device", "cuda", "--out", out],
     r"CUDA is not available here .*--device cpu", NO_CUDA),
    ("cli-simulate-out-is-a-file", lambda tmp, out: SIM + ["--out", str(_file(tmp))],
     r"--out .*taken is a file, not a folder"),
    ("cli-study-no-subcommand", lambda tmp, out: ["study"], r"required: study_command"),
    ("cli-study-folder-missing", lambda tmp, out: ["study", "run", str(tmp / "nope"), "--out", out],
     r"is not a study folder"),
    ("cli-study-malformed-toml", lambda tmp, out: ["study", "run", str(_study(
        tmp, "[study\nname = 1")), "--out", out], r"config\.toml: malformed TOML"),
    ("cli-study-unknown-run-key", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY + "n_start = 2\n")), "--out", out],
     r"\[\[run\]\] #1: unknown key 'n_start'; allowed: \[.*'n_starts'"),
    ("cli-study-wrong-type", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY + "[experiment]\nn_traces = 2.5\n")), "--out", out],
     r"\[experiment\]\.n_traces = 2\.5 has the wrong type"),
    ("cli-study-infer-mcmc", lambda tmp, out: ["study", "run", str(_study(
        tmp, INFER_STUDY + 'method = "mcmc"\n')), "--out", out], r"method 'mcmc' unknown"),
    ("cli-study-design-compartment-missing", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY.replace("all|all", "all|[9]") + TINY)), "--out", out],
     r"recorded compartment 9 does not exist: the cell has 6 compartments"),
    ("cli-study-zero-starts", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY + "n_starts = 0\n" + TINY)), "--out", out], r"n_starts must be ≥ 1"),
    ("cli-study-unknown-device", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY)), "--device", "gpu", "--out", out], r"device 'gpu' is not a device"),
    ("cli-study-out-is-a-file", lambda tmp, out: ["study", "run", str(_study(
        tmp, GOOD_STUDY)), "--out", str(_file(tmp))], r"is a file, not a folder"),
]  # fmt: skip


@pytest.mark.parametrize("argv, match", _params(CLI_CASES))
def test_cli_bad_input(argv, match, tmp_path, capsys):
    out = tmp_path / "out"
    args = argv(tmp_path, str(out))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    status = _run(args + (["--quiet"] if args[:2] == ["study", "run"] else []))
    err = capsys.readouterr().err
    assert status not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bayesneuron"), err
    assert ": error: " in err and "Traceback" not in err, err
    assert re.search(match, err), err
    assert not out.exists()  # nothing half-written …
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # … anywhere, and an existing --out is left as it was
