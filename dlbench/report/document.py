"""A report as a list of blocks (headings, paragraphs, tables, figures) rendered twice: to
Markdown (``index.md``, figures beside it) and to one self-contained HTML file (``index.html``,
figures embedded as base64 data URIs, no external resource). Tables also go to LaTeX.

Inline markup in text is a small Markdown subset: ``**bold**``, ```code``` and ``*emphasis*``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Table:
    frame: pd.DataFrame  # already formatted: every cell a string
    caption: str = ""


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def table(self, frame: pd.DataFrame, caption: str = "") -> None:
        self.blocks.append(("table", Table(frame, caption)))

    def figure(self, path: Path, title: str, caption: str) -> None:
        self.blocks.append(("figure", Figure(Path(path), title, caption)))

    # -- Markdown ---------------------------------------------------------------------------

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, block in self.blocks:
            if kind == "heading":
                level, text = block
                out += ["#" * level + " " + text, ""]
            elif kind == "text":
                out += [block, ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in block] + [""]
            elif kind == "table":
                out += [markdown_table(block.frame), ""]
                if block.caption:
                    out += [f"*{block.caption}*", ""]
            elif kind == "figure":
                out += [f"![{block.title}]({block.path.name})", "", block.caption, ""]
        return "\n".join(out)

    # -- HTML -------------------------------------------------------------------------------

    def to_html(self) -> str:
        body = [f"<h1>{_inline(self.title)}</h1>"]
        for kind, block in self.blocks:
            if kind == "heading":
                level, text = block
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "text":
                body.append(f"<p>{_inline(block)}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block) + "</ul>")
            elif kind == "table":
                body.append(_html_table(block.frame, block.caption))
            elif kind == "figure":
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                body.append(f'<figure><img src="data:image/png;base64,{data}" width="{css_width(block.path)}" '
                            f'alt="{html.escape(block.title)}">'
                            f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
        return HTML_PAGE.format(title=html.escape(self.title), style=STYLE, body="\n".join(body))


def css_width(png: Path) -> int:
    """The width in CSS pixels (96 per inch) of a PNG at its recorded resolution: a figure drawn 8
    inches wide shows 8 inches wide, its 9-point text 12 px high, whatever dpi it was saved at (the
    stylesheet shrinks it to the column if wider)."""
    from PIL import Image

    with Image.open(png) as image:
        dpi = float((image.info.get("dpi") or (96,))[0]) or 96.0
        return round(image.width * 96 / dpi)


def markdown_table(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def latex_table(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); text cells escaped for LaTeX."""
    long = [c for c in frame.columns if frame[c].map(lambda v: len(str(v))).max() > 40] if len(frame) else []

    def spec(c) -> str:  # long text wraps in a paragraph column sharing 3/4 of the line
        if c in long:
            return rf"p{{{0.75 / len(long):.2f}\linewidth}}"
        return "l" if frame[c].map(_is_text).any() else "r"

    align = "".join(spec(c) for c in frame.columns)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule",
              " & ".join(latex_escape(str(c)) for c in frame.columns) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        lines.append(" & ".join(latex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def export_table(frame: pd.DataFrame, pretty: pd.DataFrame, out_dir: Path, name: str, caption: str) -> None:
    """A table of the report as ``<name>.csv`` (``frame``: the numbers) and as ``.md`` and ``.tex``
    (``pretty``: as the report shows it)."""
    frame.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / f"{name}.md").write_text(markdown_table(pretty) + "\n", encoding="utf-8")
    (out_dir / f"{name}.tex").write_text(latex_table(pretty, caption, f"tab:{name}"), encoding="utf-8")


def latex_escape(text: str) -> str:
    specials = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "−": "$-$", "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$", "α": r"$\alpha$", "–": "--",
                "<": "$<$", ">": "$>$"}
    return "".join(specials.get(ch, ch) for ch in text)


def fmt(value, digits: int = 3, signed: bool = False) -> str:
    """Numbers for tables: NaN as an em dash, small p-values in scientific notation."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
        return text.replace("-", "−") if signed else text
    return str(value)


def fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _is_text(v) -> bool:
    s = str(v).replace("−", "-").replace("< ", "").replace("—", "")
    try:
        float(s) if s else None
        return False
    except ValueError:
        return True


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*([^*]+)\*(?![\w*])", r"<em>\1</em>", text)


def _html_table(frame: pd.DataFrame, caption: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        cells = "".join(f'<td class="{"t" if _is_text(v) else "n"}">{_inline(str(v))}</td>' for v in row)
        rows.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{_inline(caption)}</caption>" if caption else ""
    return f'<table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { caption-side: bottom; text-align: left; font-style: italic; color: #555; padding-top: .4em; }
th, td { padding: .3em .7em; border-bottom: 1px solid #ddd; }
th { border-bottom: 2px solid #999; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.92em; max-width: 900px; }
code { background: #f4f4f4; padding: 0 .2em; }
"""

HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""
