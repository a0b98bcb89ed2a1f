"""The ``fit``, ``infer``, ``compare`` and ``report`` commands end to end (tiny settings), their
help, and bad input: one line on stderr, a non-zero exit, nothing written."""

import csv
import json

import pytest

from bayesneuron.cli import main

TINY = ["--traces", "3", "--quiet"]
ENV_KEYS = {"bayesneuron", "torch", "pyro", "arviz", "fused_kernel", "git_commit"}
TINY_POST = [*TINY, "--map-steps", "2", "--samples", "20"]


def run(argv) -> int:
    """``main``'s exit status, also when argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "results"
    argv = ["compare", "--designs", "all|all,[0]|all", "--method", "laplace", *TINY_POST]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_fit_writes_fit_table_figures_and_provenance(tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", "--design", "[0,-1]|all", "--traces", "3", "--starts", "2", "--steps", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[fit] [0,-1]|all" in captured.err  # progress on stderr …
    assert "results in" in captured.out and "[fit]" not in captured.out  # … the result on stdout
    fit = json.loads((out / "fit.json").read_text())
    assert fit["design"] == "[0,-1]|all" and set(fit["gte"]) == {"g_na", "g_k"}
    (row,) = rows(out / "table.csv")
    assert list(row)[:13] == [
        "seed",
        "variant",
        "stim",
        "rec",
        "protocol",
        "L0",
        "L_final",
        "gte_na_initial",
        "gte_na_final",
        "gte_k_initial",
        "gte_k_final",
        "steps",
        "wall_s",
    ]
    assert (row["stim"], row["rec"], row["n_starts"]) == ("[0,-1]", "all", "2")
    assert float(row["L_final"]) <= float(row["L0"]) + 1e-9
    for name in ("loss_gte.png", "trajectories.png", "history.npz"):
        assert (out / name).stat().st_size > 1000, name
    config = json.loads((out / "config.json").read_text())
    assert config["traces"] == 3 and config["backend"] == "auto" and "func" not in config
    assert ENV_KEYS <= set(json.loads((out / "environment.json").read_text()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]  # no staging folder left
    long = rows(out / "fit_parameters.csv")
    assert [r["parameter"] for r in long[:2]] == ["g_na[0]", "g_na[1]"] and len(long) == 12


def test_infer_svi_writes_posterior_summary_figures_and_report(tmp_path, capsys):
    out = tmp_path / "inf"
    argv = ["infer", "--design", "all|[0]", "--method", "svi", "--guide", "normal"]
    argv += [*TINY_POST, "--steps", "5", "--particles", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert printed.err == ""  # --quiet
    (row,) = rows(out / "designs.csv")
    assert (row["stim"], row["rec"], row["guide"]) == ("all", "[0]", "normal")
    # the summary line names the method that produced the posterior and flags a failed check
    assert f"{row['posterior_method']} posterior of all|[0]" in printed.out
    assert ("NOT OK" in printed.out) == (row["posterior_ok"] == "False")
    assert 0 <= float(row["mean_contraction"]) <= 1 and row["n_traces"] == "3"
    summary = rows(out / "summary.csv")
    assert len(summary) == 12 and {"parameter", "mean", "sd", "truth"} <= set(summary[0])
    from bayesneuron.reports import load_inference_data

    idata = load_inference_data(out / "posterior.nc")
    assert idata.posterior["g_na"].shape == (1, 20, 6)
    assert {"prior", "posterior_predictive", "observed_data"} <= set(idata.groups())
    for name in ("posterior_vs_prior.png", "predictive.png", "elbo.png", "report.html"):
        assert (out / name).stat().st_size > 1000, name
    assert rows(out / "ranking.csv")[0]["design"] == "all|[0]"
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "svi" and config["infer"]["max_steps"] == 5
    assert config["infer"]["map_init"] == "starts"  # never the truth by default
    assert ENV_KEYS <= set(json.loads((out / "environment.json").read_text()))
    assert (out / "forest_g_na.png").is_file() and (out / "forest_g_k.png").is_file()


def test_compare_writes_designs_ranking_heatmaps_idata_and_report(compare_dir):
    out = compare_dir
    designs = rows(out / "designs.csv")
    assert [f"{r['stim']}|{r['rec']}" for r in designs] == ["all|all", "[0]|all"]
    ranking = rows(out / "ranking.csv")
    assert sorted(r["rank_logdet_fisher"] for r in ranking) == ["1", "2"]
    for name in (
        "posterior_mean_contraction.png",
        "posterior_min_contraction.png",
        "idata/posterior/all__all.nc",
        "idata/posterior/0__all.nc",
        "report.html",
        "environment.json",
    ):
        assert (out / name).stat().st_size > 100, name
    config = json.loads((out / "config.json").read_text())
    assert config["designs"] == ["all|all", "[0]|all"] and config["method"] == "laplace"
    assert ENV_KEYS <= set(json.loads((out / "environment.json").read_text()))


def test_compare_resume_keeps_the_designs_already_done(compare_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(compare_dir, copy)
    before = rows(copy / "designs.csv")
    argv = ["compare", "--designs", "all|all,[0]|all", "--method", "laplace", *TINY_POST]
    assert main([*argv, "--resume", "--out", str(copy)]) == 0
    assert rows(copy / "designs.csv") == before  # loaded, not run again (wall_s as it was)


def test_report_rebuilds_a_compare_folder(compare_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in compare_dir.rglob("*") if p.name != "report.html"}
    (compare_dir / "report.html").unlink()
    assert main(["report", str(compare_dir), "--quiet"]) == 0
    html = (compare_dir / "report.html").read_text()
    assert "compare: identifiability" in html and "[0]|all" in html and "<img" in html
    assert "report written to" in capsys.readouterr().out
    after = {p: p.stat().st_mtime_ns for p in compare_dir.rglob("*") if p.name != "report.html"}
    assert after == before  # only the report is written


def test_report_of_fewer_designs_ranks_them_again(compare_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(compare_dir, copy)
    kept = rows(copy / "designs.csv")[:1]  # drop [0]|all
    with open(copy / "designs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    other = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(copy), "--out", str(other), "--quiet"]) == 0
    assert sorted(p.name for p in other.parent.iterdir()) == ["r.html"]
    html = other.read_text()
    assert "all|all" in html and "[0]|all" not in html


@pytest.mark.parametrize("command", ["fit", "infer", "compare", "report"])
def test_help_explains_with_an_example(command, capsys):
    assert run([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example:" in text and f"bayesneuron {command} " in text
    assert "--out" in text and "--quiet" in text


def test_every_run_command_takes_seed_device_out_quiet(capsys):
    for command in ("fit", "infer", "compare"):
        assert run([command, "--help"]) == 0
        text = capsys.readouterr().out
        for opt in ("--seed", "--device", "--out", "--quiet", "--traces"):
            assert opt in text, (command, opt)


@pytest.mark.parametrize(
    "argv, code, match",
    [
        (["infer", "--design", "[9]|all"], 1, "stimulated compartment 9 does not exist"),
        (["fit", "--design", "all"], 1, "must look like 'stim|rec'"),
        (["compare", "--designs", "all|all,all|[0,9]"], 1, "recorded compartment 9"),
        (["compare", "--designs", "all|all,,[0]|all"], 1, "an empty label"),
        (["compare", "--designs", "all|all,all|all"], 1, "listed twice"),
        (["infer", "--method", "mcmc"], 2, "invalid choice: 'mcmc'"),
        (["compare", "--method", "nuts"], 2, "invalid choice: 'nuts'"),
        (["infer", "--priors", "none"], 2, "invalid choice: 'none'"),
        (["fit", "--traces", "0"], 1, "--traces 0: need at least 1"),
        (["infer", "--steps", "0"], 1, "--steps 0: must be ≥ 1"),
        (["fit", "--noise", "-1"], 1, "--noise -1.0"),
        (["fit", "--dt", "nan"], 1, "--dt nan"),
        (["compare", "--scheduler", "tcp://x:1"], 1, "--scheduler needs --executor dask"),
        (["fit", "--device", "gpu0"], 1, "is not a device"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(tmp_path, capsys, argv, code, match):
    out = tmp_path / "out"
    assert run([*argv, "--quiet", "--out", str(out)]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("bayesneuron") and match in err, err
    assert list(tmp_path.iterdir()) == []  # no results folder, no staging folder


def test_report_needs_a_results_folder(tmp_path, capsys):
    (tmp_path / "fit").mkdir()
    (tmp_path / "fit" / "table.csv").write_text("stim,rec\nall,all\n")
    for folder, match in [
        (tmp_path / "fit", "has no posterior results (no designs.csv)"),
        (tmp_path / "nope", "is not a results folder"),
    ]:
        assert run(["report", str(folder), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and match in err, err
    assert sorted(p.name for p in (tmp_path / "fit").iterdir()) == ["table.csv"]
    assert not (tmp_path / "nope").exists()


def test_report_names_a_missing_inference_data_file(compare_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(compare_dir, copy)
    (copy / "idata" / "posterior" / "0__all.nc").unlink()
    assert run(["report", str(copy), "--quiet", "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "InferenceData of [0]|all is missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_fit_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert run(["fit", "--out", str(f / "sub"), "--quiet"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_failure_while_writing_leaves_no_results_folder(tmp_path, monkeypatch, capsys):
    import bayesneuron.cli._common as common

    def broken():  # the last file written: everything before it must vanish too
        raise OSError(28, "No space left on device", "environment.json")

    monkeypatch.setattr(common, "environment", broken)
    argv = ["fit", "--traces", "2", "--starts", "1", "--steps", "1", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "new" / "fit")]) == 1
    err = capsys.readouterr().err
    assert "No space left on device: environment.json" in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_compare_and_fit_on_the_hh_tree_preset(tmp_path):
    out = tmp_path / "tree"
    argv = ["compare", "--preset", "hh_tree", "--designs", "[0]|[0],[0]|[0,2,3,4,5]"]
    assert main([*argv, "--method", "laplace", *TINY_POST, "--out", str(out)]) == 0
    lap = {f"{r['stim']}|{r['rec']}": float(r["logdet_fisher"]) for r in rows(out / "designs.csv")}
    assert lap["[0]|[0,2,3,4,5]"] > lap["[0]|[0]"]  # recording the tips adds information
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["preset"] == "hh_tree"
    fit = tmp_path / "fit"
    argv = ["fit", "--preset", "hh_tree", "--starts", "1", "--steps", "2", *TINY]
    assert main([*argv, "--out", str(fit)]) == 0
    (row,) = rows(fit / "table.csv")
    assert float(row["dt"]) == 0.025  # the preset's step


def test_backend_numba_is_a_deprecated_alias_of_fused(tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", "--backend", "numba", "--traces", "1", "--starts", "1", "--steps", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "--backend numba is a deprecated alias of --backend fused" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["backend"] == "fused"
    assert run(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "{auto,fused,torch}" in text and "'numba' is a deprecated alias of fused" in text


def test_nuts_chains_run_side_by_side_where_cores_allow(monkeypatch):
    from argparse import Namespace

    from bayesneuron.cli._posterior import chain_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert chain_workers(Namespace(chains=4, chain_workers=None)) == 2  # the cores
    assert chain_workers(Namespace(chains=1, chain_workers=None)) == 1  # the chains
    assert chain_workers(Namespace(chains=4, chain_workers=1)) == 1  # as asked
