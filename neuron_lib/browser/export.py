"""The static export: every page of the browser as files that work from ``file://`` (no server, no network).

    python -m neuron_lib.browser export --out site/

Layout: ``index.html`` (models), ``search.html`` (property filters run in the page over ``static/neurons.js``),
``{model}/index.html``, ``{model}/{layer}/index.html``, ``{model}/{layer}/{neuron}.html``, ``static/`` (the
stylesheet and script). Links are relative, so the folder can be copied or zipped as it is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from neuron_lib import artifacts
from neuron_lib.browser import pages
from neuron_lib.browser.store import SUMMARY_COLUMNS, BrowserStore
from neuron_lib.common import atomic_write_text


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _neuron_pages(job: tuple[str, str, str, int, list[str]]) -> int:
    """Write one layer's neuron pages (a worker's share of the export); returns how many were written."""
    index, tmp, m, layer, indexed = job
    indexed = set(indexed)
    store = BrowserStore(index)
    meta = store.model(m)
    links2 = pages.Links(True, 2)
    written = 0
    for n in range(meta["d_mlp"]):
        doc = store.doc(m, layer, n)
        if doc is None:
            continue
        doc = {"model": m, "layer": layer, "neuron": n, "available": [k for k in doc], **doc}
        _write(Path(tmp) / m / str(layer) / f"{n}.html", pages.neuron_page(doc, meta, links2, indexed))
        written += 1
    return written


def export_site(out: str | Path, index: str | Path | None = None, jobs: int | None = None) -> Path:
    """Write the site into ``out`` (replaced: written beside it, then renamed). Returns ``out``. The neuron pages
    (one per neuron: 46,080 for SmolLM2) are rendered by ``jobs`` processes, one layer at a time (default: one
    per core, at most 4)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from neuron_lib.browser.index import browser_jobs

    out = Path(out)
    index = Path(index or artifacts.browser_index())
    store = BrowserStore(index)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _write(tmp / "static" / "browser.css", pages.CSS)
    _write(tmp / "static" / "browser.js", pages.JS)
    models = [store.model(m) for m in store.model_names()]
    indexed = set(store.model_names())
    _write(tmp / "index.html", pages.index_page(models, pages.Links(True, 0)))
    cols = [c for c in SUMMARY_COLUMNS if c in store.columns]
    rows, layer_jobs = [], []
    for meta in models:
        m = meta["model"]
        _write(tmp / m / "index.html", pages.model_page(meta, pages.Links(True, 1)))
        links2 = pages.Links(True, 2)
        for layer in range(meta["n_layers"]):
            neurons = store.layer_neurons(m, layer, 0, meta["d_mlp"])
            _write(tmp / m / str(layer) / "index.html", pages.layer_page(meta, layer, neurons, links2))
            for r in neurons:
                rows.append([m, layer, r["neuron"], *[r.get(c) for c in cols]])
            layer_jobs.append((str(index), str(tmp), m, layer, sorted(indexed)))
    jobs = browser_jobs(jobs or 0)
    if jobs > 1 and len(layer_jobs) > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            list(pool.map(_neuron_pages, layer_jobs))
    else:
        for job in layer_jobs:
            _neuron_pages(job)
    _write(tmp / "static" / "neurons.js", pages.static_neurons_js(cols, rows))
    _write(tmp / "search.html", pages.search_page(list(indexed), pages.Links(True, 0), ["layer", "neuron", *cols]))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    atomic_write_text(out / "README.txt", "Open index.html in a browser (works from file://).\n")
    return out
