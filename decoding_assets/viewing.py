"""Viewers of decodes, found through the catalog: written once per decode (and interval)
into a folder, and served on localhost next to the Dagster UI so its links open them (a
browser will not follow a file:// link from an http page).

    decoding-assets view MERGE_ID [--start S --stop S]     # writes the page, prints its path
    decoding-assets ui                                     # also serves http://127.0.0.1:3001/view/MERGE_ID

``DECODING_ASSETS_VIEWER_URL`` is where the links point (``decoding-assets ui`` sets it
to what it serves; default ``http://127.0.0.1:3001``).
"""

from __future__ import annotations

import hashlib
import html
import os
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from catalog import Catalog, CatalogError

from .viewer import PAGE_VERSION, write_viewer

DEFAULT_VIEWER_URL = "http://127.0.0.1:3001"


def viewer_url(merge_id: str) -> str:
    """The link to a decode's viewer, as the running ``decoding-assets ui`` serves it."""
    base = os.environ.get("DECODING_ASSETS_VIEWER_URL", DEFAULT_VIEWER_URL).rstrip("/")
    return f"{base}/view/{quote(merge_id)}"


def viewer_file(
    catalog: Catalog, merge_id: str, folder: Path, start: float | None = None, stop: float | None = None,
    frame_s: float | None = None,
) -> Path:  # fmt: skip
    """The viewer of a decode (between ``start`` and ``stop``) in ``folder``: written the
    first time, then reused while the decode's results file (and the page's format) is
    the same."""
    from .fetch import fetch_viewer_source

    output = catalog.fetch_output(merge_id)
    key = hashlib.sha256(repr((output["checksum"], start, stop, frame_s, PAGE_VERSION)).encode()).hexdigest()[:12]
    path = Path(folder) / f"{merge_id}-{key}.html"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        source = fetch_viewer_source(catalog, merge_id)
        try:
            write_viewer(path, source, start, stop, frame_s)
        finally:
            source.results.close()
    return path


def serve_viewers(catalog: Callable[[], Catalog], folder: Path, port: int) -> ThreadingHTTPServer:
    """Serve ``/view/MERGE_ID[?start=S&stop=S]`` on 127.0.0.1:``port`` from a thread
    (stop it with ``shutdown()``); ``/`` lists the decodes."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            url = urlsplit(self.path)
            try:
                if url.path in ("/", "/view", "/view/"):
                    self._send(200, _index(catalog()))
                elif url.path.startswith("/view/"):
                    merge_id = url.path.removeprefix("/view/")
                    query = {k: float(v[0]) for k, v in parse_qs(url.query).items() if k in ("start", "stop")}
                    path = viewer_file(catalog(), merge_id, folder, query.get("start"), query.get("stop"))
                    self._send(200, path.read_bytes())
                else:
                    self._send(404, _message("Not found", f"No page at {url.path}; viewers are at /view/MERGE_ID."))
            except (CatalogError, ValueError, FileNotFoundError) as error:
                self._send(404, _message("Cannot show this decode", str(error)))

        def _send(self, status: int, body) -> None:
            body = body.encode("utf-8") if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # the UI's console is the Dagster UI's
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="viewers", daemon=True).start()
    return server


def _index(catalog: Catalog) -> str:
    outputs = catalog.outputs()
    rows = "".join(
        f"<tr><td><a href='/view/{quote(r.merge_id)}'>{html.escape(r.merge_id)}</a></td><td>{html.escape(r.nwb_file_name)}</td>"
        f"<td>{html.escape(r.decoding_interval)}</td><td>{html.escape(r.decoding_param_name)}</td></tr>"
        for r in outputs.itertuples()
    )
    return _page("Decodes", f"<table><tr><th>decode</th><th>session</th><th>interval</th><th>parameters</th></tr>{rows}</table>")


def _message(title: str, text: str) -> str:
    return _page(title, f"<p>{html.escape(text)}</p>")


def _page(title: str, body: str) -> str:
    return f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
