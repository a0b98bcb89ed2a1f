"""The self-contained HTML report (reports.html)."""

import base64
import re

import pandas as pd
import pytest
from matplotlib.figure import Figure as MplFigure

from bayesneuron import DataError
from bayesneuron.reports.html import Figure, Table, Text, write_html_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def fig():
    f = MplFigure(figsize=(2, 1.5))  # no pyplot, no backend: as the library's own figures
    f.subplots().plot([0, 1], [1, 0])
    return f


def _images(text: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', text)]


def test_report_is_one_file_with_tables_and_images(tmp_path, fig):
    png = tmp_path / "saved.png"
    fig.savefig(png)
    table = pd.DataFrame(
        {"mean": [101.234567, 44.5], "contraction": [0.91, 0.42]}, index=["g_na[0]", "g_k[0]"]
    )
    out = write_html_report(
        tmp_path / "out" / "report.html",
        "Design study <toy>",
        [
            Text("Question", "Which sites identify g_Na?\n\nSecond paragraph & more."),
            Table("Summary", table, caption="posterior summary"),
            Table("Records", [{"stim": "all", "rec": "[0]", "value": 0.5}]),
            Figure("Posterior", fig, caption="posterior vs prior"),
            Figure("From file", png),
        ],
    )
    assert out == tmp_path / "out" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file, no assets
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert "<title>Design study &lt;toy&gt;</title>" in text
    assert text.count("<p>") == 2 and "Second paragraph &amp; more." in text
    assert len(re.findall(r'<table[^>]*class="dataframe data"', text)) == 2
    assert "g_na[0]" in text and "101.2" in text and "0.91" in text and "[0]" in text
    assert "posterior summary" in text and "<figcaption>posterior vs prior</figcaption>" in text
    images = _images(text)
    assert len(images) == 2 and all(img.startswith(PNG) for img in images)
    assert images[1] == png.read_bytes()
    # Self-contained: nothing is fetched from elsewhere, no scripts.
    assert "<script" not in text and "<link" not in text and "http" not in text


def test_report_overwrites_atomically(tmp_path):
    path = tmp_path / "r.html"
    write_html_report(path, "one", [Text("a", "first")])
    write_html_report(path, "two", [Text("b", "second")])
    text = path.read_text(encoding="utf-8")
    assert "second" in text and "first" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_bad_sections(tmp_path):
    path = tmp_path / "r.html"
    with pytest.raises(DataError, match=r"sections\[1\] is a str; use Text, Table or Figure"):
        write_html_report(path, "t", [Text("a"), "plain text"])
    with pytest.raises(DataError, match="not a file"):
        write_html_report(path, "t", [Figure("missing", tmp_path / "nope.png")])
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(DataError, match="not a PNG"):
        write_html_report(path, "t", [Figure("fake", tmp_path / "x.png")])
    assert not path.exists()  # nothing is written when a section fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


@pytest.mark.parametrize("preset", ["paper_toy", "l23"])
def test_a_study_reports_setting_keeps_the_presets_units_and_names(preset):
    from types import SimpleNamespace

    from bayesneuron.reference.presets import get_preset
    from bayesneuron.studies.report import _describe

    text = _describe(SimpleNamespace(preset=preset))
    description = get_preset(preset).description
    assert text[0].isupper() and text[1:] == description[1:]  # only the first letter changes
    if preset == "paper_toy":
        assert "Jones & Kording" in text and "mV" in text
    assert _describe(SimpleNamespace(preset="mine")) == "Preset mine"


@pytest.mark.parametrize("method", ["svi:mvn", "adaptive_importance", None])
def test_an_elbo_figure_says_when_the_posterior_is_not_svis(tmp_path, monkeypatch, fig, method):
    from bayesneuron import reports
    from bayesneuron.studies.report import _design_figures

    monkeypatch.setattr(reports, "plot_posterior_vs_prior", lambda idata, path: fig)
    monkeypatch.setattr(reports, "plot_ppc_traces", lambda idata, path: fig)
    sections = _design_figures("post", "[0]|all", None, [3.0, 2.0, 1.5], tmp_path, method)
    titles = [s.heading for s in sections]
    assert titles[:2] == ["post [0]|all: posterior vs prior", "post [0]|all: posterior predictive"]
    flagged = "ELBO of the SVI guide tried (the posterior reported is adaptive_importance's)"
    assert titles[2] == (
        "post [0]|all: " + (flagged if method == "adaptive_importance" else "ELBO")
    )
