"""The neuron browser: a JSON API, web pages, a static export and an analysis dashboard over what the engine wrote.

    python -m neuron_lib.browser build              # index + static export + dashboard (the pipeline stage)
    python -m neuron_lib.browser serve [--port 8000] [--host 127.0.0.1]
    python -m neuron_lib.browser export --out site/
    python -m neuron_lib.browser dashboard --out dashboard.html

Modules:

- :mod:`~neuron_lib.browser.index`: the index, one SQLite file built once from the neuron dataframes, activation
  summaries, weight summaries, correlation tables, co-activation graphs and (when present) explanation and
  intervention tables (``artifacts.browser_index``); the ``browser`` stage;
- :mod:`~neuron_lib.browser.store`: read-only queries on the index (documents, search, similar neurons);
- :mod:`~neuron_lib.browser.query`: the property-range filter language (``excess_corr>0.3&kurt>5``), parsed and
  validated into parameterised SQL, never evaluated;
- :mod:`~neuron_lib.browser.app`: the FastAPI application (read-only JSON API, HTML pages, offline ``/docs``);
- :mod:`~neuron_lib.browser.pages`: the HTML of every page (shared by the server and the static export);
- :mod:`~neuron_lib.browser.export`: the static export that works from ``file://``;
- :mod:`~neuron_lib.browser.dashboard`: one self-contained plotly HTML file.
"""


def main(argv: list[str] | None = None) -> None:
    """``python -m neuron_lib.browser`` (the pipeline's command for the ``browser`` stage)."""
    from neuron_lib.browser.__main__ import main as _main

    _main(argv)
