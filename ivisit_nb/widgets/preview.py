"""Show one inbox item as a widget that fits its type, reading a bounded amount from disk.

| type | shown as | read at most |
| --- | --- | --- |
| image (png, jpeg, gif, webp, bmp, svg) | ``ipywidgets.Image`` | :data:`MAX_IMAGE` |
| text and code | highlighted text (Pygments) | first :data:`MAX_TEXT` bytes |
| CSV / TSV | a pandas table, first :data:`TABLE_ROWS` rows and :data:`TABLE_COLS` columns | first :data:`MAX_TABLE` bytes |
| Parquet | the same, first row batch (needs ``pyarrow``) | one batch |
| PDF | the browser's PDF viewer | :data:`MAX_MEDIA` |
| audio, video | ``ipywidgets.Audio`` / ``Video`` with controls | :data:`MAX_MEDIA` |
| HTML | an ``<iframe sandbox="">`` (no scripts, no forms, no same-origin) | :data:`MAX_HTML` |
| URL | a link; never fetched | - |

Anything bigger, unknown or binary is described (name, sender, size, path) instead.
"""

from __future__ import annotations

import base64
import io
import mimetypes
from html import escape
from pathlib import Path

import ipywidgets as widgets

from ..sharing.inbox import Item
from .units import human_size

MAX_TEXT = 64 * 1024
MAX_IMAGE = 10 * 1024 * 1024
MAX_MEDIA = 50 * 1024 * 1024
MAX_HTML = 1024 * 1024
MAX_TABLE = 256 * 1024
TABLE_ROWS = 20
TABLE_COLS = 20

IMAGES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".gif": "gif", ".webp": "webp", ".bmp": "bmp", ".svg": "svg+xml"}
AUDIO = {".mp3": "mpeg", ".wav": "wav", ".ogg": "ogg", ".oga": "ogg", ".flac": "flac", ".m4a": "mp4"}
VIDEO = {".mp4": "mp4", ".webm": "webm", ".ogv": "ogg", ".mov": "quicktime"}
TEXT = {
    ".txt", ".md", ".rst", ".py", ".js", ".ts", ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".c", ".h",
    ".cpp", ".hpp", ".rs", ".go", ".java", ".sh", ".r", ".jl", ".sql", ".xml", ".css", ".log", ".ipynb", ".tex",
}


def _read(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def describe(item: Item, note: str = "") -> widgets.HTML:
    """A plain description of ``item``, with ``note`` (why it is not shown)."""
    where = f"<br><code>{escape(item.path)}</code>" if item.path else ""
    extra = f"<br><i>{escape(note)}</i>" if note else ""
    return widgets.HTML(
        f'<div class="ivisit-describe"><b>{escape(item.name)}</b> from {escape(item.sender)}, '
        f"{human_size(item.size)}{where}{extra}</div>"
    )


def link(url: str) -> widgets.HTML:
    """A link that opens in a new tab; nothing is fetched."""
    u = escape(url, quote=True)
    return widgets.HTML(
        f'<div class="ivisit-url"><a href="{u}" target="_blank" rel="noopener noreferrer nofollow">{escape(url)}</a></div>'
    )


def text(path: Path, name: str) -> widgets.HTML:
    """The first :data:`MAX_TEXT` bytes, highlighted by file name where Pygments knows the language."""
    data = _read(path, MAX_TEXT + 1)
    cut = len(data) > MAX_TEXT
    body = data[:MAX_TEXT].decode("utf-8", errors="replace")
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import TextLexer, get_lexer_for_filename
        from pygments.util import ClassNotFound

        try:
            lexer = get_lexer_for_filename(name, stripnl=False)
        except ClassNotFound:
            lexer = TextLexer()
        html = highlight(body, lexer, HtmlFormatter(noclasses=True, nobackground=True))
    except ImportError:
        html = f"<pre>{escape(body)}</pre>"
    more = f"<i>… first {human_size(MAX_TEXT)} shown</i>" if cut else ""
    return widgets.HTML(f'<div class="ivisit-text" style="max-height:400px;overflow:auto">{html}{more}</div>')


def table(path: Path, suffix: str) -> widgets.HTML:
    """The head of a CSV/TSV/Parquet file as an HTML table."""
    import pandas as pd

    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return widgets.HTML("<i>Parquet preview needs pyarrow (pip install pyarrow).</i>")
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=TABLE_ROWS), None)
        df = batch.to_pandas() if batch is not None else pd.DataFrame()
    else:
        data = _read(path, MAX_TABLE + 1)
        if len(data) > MAX_TABLE:  # parse whole lines only
            data = data[: data.rfind(b"\n", 0, MAX_TABLE) + 1] or data[:MAX_TABLE]
        df = pd.read_csv(io.BytesIO(data), sep="\t" if suffix == ".tsv" else ",", nrows=TABLE_ROWS)
    html = df.iloc[:TABLE_ROWS, :TABLE_COLS].to_html(max_rows=TABLE_ROWS, max_cols=TABLE_COLS, border=0)
    return widgets.HTML(f'<div class="ivisit-table" style="max-height:400px;overflow:auto">{html}</div>')


def _data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def preview(item: Item | None) -> widgets.Widget:
    """The widget showing ``item`` (None: an empty viewer)."""
    if item is None:
        return widgets.HTML("")  # the viewer's title says "Nothing received yet."
    if item.kind == "url":
        return link(item.url or item.name)
    path = Path(item.path or "")
    if not item.path or not path.is_file():
        return describe(item, "the file is no longer there")
    size = path.stat().st_size
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGES:
            if size > MAX_IMAGE:
                return describe(item, f"too big to show (over {human_size(MAX_IMAGE)})")
            return widgets.Image(value=path.read_bytes(), format=IMAGES[suffix], layout=widgets.Layout(max_width="100%"))
        if suffix in (".csv", ".tsv", ".parquet"):
            return table(path, suffix)
        if suffix in (".html", ".htm"):
            if size > MAX_HTML:
                return describe(item, f"too big to show (over {human_size(MAX_HTML)})")
            doc = escape(path.read_bytes().decode("utf-8", errors="replace"), quote=True)
            return widgets.HTML(f'<iframe class="ivisit-html" sandbox="" srcdoc="{doc}" style="width:100%;height:400px;border:0"></iframe>')
        if suffix in (".pdf", *AUDIO, *VIDEO) and size > MAX_MEDIA:
            return describe(item, f"too big to show (over {human_size(MAX_MEDIA)})")
        if suffix == ".pdf":
            return widgets.HTML(
                f'<object class="ivisit-pdf" data="{_data_url(path, "application/pdf")}" type="application/pdf" '
                f'style="width:100%;height:480px">{escape(item.name)}</object>'
            )
        if suffix in AUDIO:
            return widgets.Audio(value=path.read_bytes(), format=AUDIO[suffix], autoplay=False, loop=False)
        if suffix in VIDEO:
            return widgets.Video(value=path.read_bytes(), format=VIDEO[suffix], autoplay=False, loop=False, width=480)
        mime = mimetypes.guess_type(path.name)[0] or ""
        if suffix in TEXT or mime.startswith("text/") or (not suffix and b"\0" not in _read(path, 4096)):
            return text(path, path.name)
    except Exception as exc:  # a damaged file: say so rather than break the viewer
        return describe(item, f"cannot show it: {exc}")
    return describe(item, "no preview for this type")
