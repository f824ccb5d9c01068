"""A report as plain data (sections of text, tables and PNG figures), rendered to HTML and to Markdown.

The HTML is one self-contained file: figures are embedded as `data:` URIs and the style sheet is inline, so it
opens offline, from an e-mail attachment or an S3 download, and references nothing outside itself. The
Markdown holds the same text and figures, the figures as PNG files in a folder next to it (`<stem>_files/`),
which is what Markdown viewers (GitHub, GitLab, editors) display.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

from PIL import Image

from pipeline.io import fs


@dataclass(frozen=True)
class Figure:
    """One PNG picture. `name` becomes its file name in the Markdown folder (unique within a document)."""

    name: str
    png: bytes
    caption: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, read from the PNG header."""
        return Image.open(io.BytesIO(self.png)).size


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]  # all empty: no header row in HTML (Markdown always needs one)
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Gallery:
    """Figures shown side by side in a grid (the worst images), each with its caption."""

    figures: tuple[Figure, ...]
    heading: str = ""


Block = str | Table | Figure | Gallery  # a str is one paragraph of plain text


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...] = ()


@dataclass(frozen=True)
class Document:
    title: str
    subtitle: str = ""
    sections: tuple[Section, ...] = field(default_factory=tuple)

    def figures(self) -> list[Figure]:
        out: list[Figure] = []
        for section in self.sections:
            for block in section.blocks:
                if isinstance(block, Figure):
                    out.append(block)
                elif isinstance(block, Gallery):
                    out.extend(block.figures)
        return out


LONG_CELL = 40  # characters; longer table cells may break anywhere (URIs and messages have few spaces)
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 0; color: #1d2330;
       background: #f4f5f7; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { margin: 0 0 4px; font-size: 26px; }
.subtitle { color: #5b6475; margin: 0 0 20px; }
h2 { font-size: 19px; border-bottom: 2px solid #e3e6eb; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #dde1e7; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
td { font-variant-numeric: tabular-nums; }
td.long { overflow-wrap: anywhere; min-width: 180px; max-width: 640px; }
figure { margin: 12px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { font-size: 13px; color: #3b4252; margin-top: 4px; }
.gallery-heading { font-size: 13px; color: #5b6475; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 14px; }
.gallery figure { margin: 0; }
p { line-height: 1.45; }
"""


def _png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_figure(figure: Figure) -> str:
    width, height = figure.size
    caption = f"<figcaption>{html.escape(figure.caption)}</figcaption>" if figure.caption else ""
    return (f'<figure><img src="{_png_data_uri(figure.png)}" width="{width}" height="{height}" '
            f'alt="{html.escape(figure.caption or figure.name)}">{caption}</figure>')


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    body = "".join("<tr>" + "".join(_html_cell(cell) for cell in row) + "</tr>" for row in table.rows)
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _html_cell(text: str) -> str:
    """A table cell; long text (paths, messages) may wrap anywhere, short values never wrap."""
    return (f'<td class="long">{html.escape(text)}</td>' if len(text) > LONG_CELL
            else f"<td>{html.escape(text)}</td>")


def _html_block(block: Block) -> str:
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    if isinstance(block, Table):
        return _html_table(block)
    if isinstance(block, Figure):
        return _html_figure(block)
    heading = f'<p class="gallery-heading">{html.escape(block.heading)}</p>' if block.heading else ""
    return heading + '<div class="gallery">' + "".join(_html_figure(f) for f in block.figures) + "</div>"


def render_html(document: Document) -> str:
    """The whole report as one self-contained HTML page (no links, scripts, fonts or remote images)."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(document.title)}</title><style>{_STYLE}</style></head><body><main>",
        f"<h1>{html.escape(document.title)}</h1>",
    ]
    if document.subtitle:
        parts.append(f'<p class="subtitle">{html.escape(document.subtitle)}</p>')
    for section in document.sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts.extend(_html_block(block) for block in section.blocks)
        parts.append("</section>")
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in table.header) + " |",
             "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_figure(figure: Figure, folder: str) -> str:
    alt = _md_cell(figure.caption or figure.name).replace("[", "(").replace("]", ")")
    line = f"![{alt}]({folder}/{figure.name}.png)"
    return f"{line}\n\n*{_md_cell(figure.caption)}*" if figure.caption else line


def render_markdown(document: Document, folder: str) -> str:
    """The report as Markdown; figures are linked as `<folder>/<name>.png` (relative to the Markdown file)."""
    parts = [f"# {document.title}"]
    if document.subtitle:
        parts.append(document.subtitle)
    for section in document.sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Table):
                parts.append(_md_table(block))
            elif isinstance(block, Figure):
                parts.append(_md_figure(block, folder))
            else:
                if block.heading:
                    parts.append(block.heading)
                parts.extend(_md_figure(f, folder) for f in block.figures)
    return "\n\n".join(parts) + "\n"


def write_document(document: Document, directory: str, stem: str, s3: fs.S3Options | None = None) -> str:
    """Write `<stem>.html`, `<stem>.md` and `<stem>_files/*.png` into `directory`; return the HTML's URI.

    The figure folder is emptied first, so a report written again never keeps pictures of an older one.
    """
    names = [figure.name for figure in document.figures()]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"figure names must be unique within a report, repeated: {duplicates}")
    folder = f"{stem}_files"
    storage = fs.storage_for(directory, s3)
    storage.delete_tree(fs.join(directory, folder))
    for figure in document.figures():
        storage.write_bytes(fs.join(directory, folder, figure.name + ".png"), figure.png)
    storage.write_bytes(fs.join(directory, stem + ".md"), render_markdown(document, folder).encode("utf-8"))
    html_uri = fs.join(directory, stem + ".html")
    storage.write_bytes(html_uri, render_html(document).encode("utf-8"))
    return html_uri
