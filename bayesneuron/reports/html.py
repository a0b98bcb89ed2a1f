"""A single self-contained HTML report: text, tables and figures, no external assets, no JS.

Example:
    >>> write_html_report("out/report.html", "Design study", [
    ...     Text("Question", "Which recording sites identify g_Na?"),
    ...     Table("Summary", summary(idata), caption="posterior of g_na, g_k"),
    ...     Figure("Posterior", plot_posterior_vs_prior(idata)),
    ... ])
"""

from __future__ import annotations

import base64
import html
import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bayesneuron.errors import DataError

__all__ = ["Figure", "Table", "Text", "write_html_report"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 62em; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table.data { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
table.data th, table.data td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
table.data th { background: #f0f0f0; }
table.data tr:nth-child(even) td { background: #fafafa; }
figure { margin: .8em 0; }
figure img { max-width: 100%; }
figcaption, p.caption { color: #555; font-size: .85em; margin: .3em 0; }
"""


@dataclass(frozen=True)
class Text:
    """A heading and prose; blank lines separate paragraphs (plain text, HTML-escaped)."""

    heading: str
    body: str = ""


@dataclass(frozen=True)
class Table:
    """A heading and a table (a pandas DataFrame, or records/dict pandas accepts)."""

    heading: str
    data: object
    caption: str = ""
    float_format: str = "{:.4g}"


@dataclass(frozen=True)
class Figure:
    """A heading and a figure: a matplotlib ``Figure`` or the path of a PNG file."""

    heading: str
    figure: object
    caption: str = ""


def write_html_report(
    path: str | os.PathLike, title: str, sections: Sequence[Text | Table | Figure]
) -> Path:
    """Write one self-contained HTML file (figures as base64 PNG), atomically.

    Args:
        path: the ``.html`` file to write; parent folders are created.
        title: page title and top heading.
        sections: :class:`Text`, :class:`Table` and :class:`Figure` items, in order.

    Returns:
        The path written.

    Raises:
        DataError: a section of another type, or a figure path that is not a PNG file.
    """
    body = "\n".join(_render(s, i) for i, s in enumerate(sections))
    t = html.escape(title)
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{t}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
        f"{body}\n</body>\n</html>\n"
    )
    return _write_atomic(Path(path), page)


def _render(section, i: int) -> str:
    if isinstance(section, Text):
        return _heading(section.heading) + _paragraphs(section.body)
    if isinstance(section, Table):
        return _heading(section.heading) + _table(section)
    if isinstance(section, Figure):
        return _heading(section.heading) + _figure(section)
    raise DataError(
        f"sections[{i}] is a {type(section).__name__}; use Text, Table or Figure "
        "from bayesneuron.reports.html"
    )


def _heading(text: str) -> str:
    return f"<h2>{html.escape(text)}</h2>\n" if text else ""


def _paragraphs(body: str) -> str:
    paras = [p.strip() for p in body.split("\n\n") if p.strip()]
    return "".join(f"<p>{html.escape(p)}</p>\n" for p in paras)


def _table(section: Table) -> str:
    df = section.data
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    out = df.to_html(
        classes="data", border=0, float_format=section.float_format.format, escape=True
    )
    cap = f'<p class="caption">{html.escape(section.caption)}</p>\n' if section.caption else ""
    return out + "\n" + cap


def _png_bytes(fig) -> bytes:
    """PNG bytes of a matplotlib figure or of a ``.png`` file."""
    if hasattr(fig, "savefig"):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()
    p = Path(fig)
    if not p.is_file():
        raise DataError(f"figure {str(p)!r} is not a file; give a matplotlib Figure or a PNG path")
    data = p.read_bytes()
    if not data.startswith(_PNG_MAGIC):
        raise DataError(f"figure {str(p)!r} is not a PNG file (only PNG is embedded)")
    return data


def _figure(section: Figure) -> str:
    b64 = base64.b64encode(_png_bytes(section.figure)).decode("ascii")
    alt = html.escape(section.caption or section.heading, quote=True)
    cap = f"<figcaption>{html.escape(section.caption)}</figcaption>" if section.caption else ""
    return f'<figure><img alt="{alt}" src="data:image/png;base64,{b64}">{cap}</figure>\n'


def _write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, opened normally, so the file gets the usual (umask) permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
