"""``python -m neuron_lib.browser {build,serve,export,dashboard,openapi}`` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neuron_lib import artifacts, stage
from neuron_lib.browser.index import BrowserConfig, run_browser
from neuron_lib.common import NeuronLibError, run_cli

OPENAPI_FILE = Path(__file__).with_name("openapi.json")
LOOPBACK = ("127.0.0.1", "localhost", "::1")

build_main = stage.cli(
    BrowserConfig,
    run_browser,
    "python -m neuron_lib.browser build",
    "the browser's index (SQLite) from the engine's outputs, then its static export and the dashboard",
)


def openapi_schema() -> dict:
    """The API's OpenAPI schema as the app declares it (independent of the data in the index)."""
    from neuron_lib.browser.app import create_app

    return create_app(_schema_index()).openapi()


def _schema_index() -> Path:
    """An empty index (the schema does not depend on data)."""
    import sqlite3
    import tempfile

    from neuron_lib.browser.index import SCHEMA

    path = Path(tempfile.mkdtemp()) / "empty.sqlite"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA + "CREATE TABLE neurons (model TEXT, layer INTEGER, neuron INTEGER);")
    con.close()
    return path


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "build":
        build_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m neuron_lib.browser", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="index + static export + dashboard (the pipeline stage; --help for its options)")
    s = sub.add_parser("serve", help="serve the JSON API and pages (read-only)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--index", default=None, help="index file (default: artifacts.browser_index())")
    s.add_argument("--log-level", default="warning")
    e = sub.add_parser("export", help="static pages that work from file://")
    e.add_argument("--out", default=None, help="folder (default: artifacts.browser_site())")
    e.add_argument("--index", default=None)
    d = sub.add_parser("dashboard", help="the self-contained plotly dashboard")
    d.add_argument("--out", default=None, help="file (default: artifacts.browser_dashboard())")
    d.add_argument("--index", default=None)
    o = sub.add_parser("openapi", help="write the API's OpenAPI schema (committed as neuron_lib/browser/openapi.json)")
    o.add_argument("--out", default=str(OPENAPI_FILE))
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        import uvicorn

        from neuron_lib.browser.app import create_app

        if args.host not in LOOPBACK:
            print(
                f"WARNING: binding {args.host}: the browser is reachable from other machines on this network "
                "(it is read-only, but it shows everything in the index)",
                file=sys.stderr,
                flush=True,
            )
        app = create_app(args.index)
        print(
            f"browser: serving {args.index or artifacts.browser_index()} on http://{args.host}:{args.port}", flush=True
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)
    elif args.cmd == "export":
        from neuron_lib.browser.export import export_site

        out = export_site(args.out or artifacts.browser_site(), args.index)
        print(f"browser: static export in {out} (open {out / 'index.html'})")
    elif args.cmd == "dashboard":
        from neuron_lib.browser.dashboard import write_dashboard

        out = write_dashboard(args.out or artifacts.browser_dashboard(), args.index)
        print(f"browser: dashboard {out}")
    elif args.cmd == "openapi":
        Path(args.out).write_text(json.dumps(openapi_schema(), indent=1, sort_keys=True) + "\n")
        print(f"browser: OpenAPI schema written to {args.out}")
    else:  # pragma: no cover
        raise NeuronLibError(f"unknown command {args.cmd}")


if __name__ == "__main__":
    run_cli(main)
