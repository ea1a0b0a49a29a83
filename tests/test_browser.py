"""The neuron browser's index, JSON API, pages, export and dashboard on a small data root made by the real stages
(tests/browser_data.py), with FastAPI's TestClient; security and bad input included."""

from __future__ import annotations

import builtins
import html
import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

import browser_data
from neuron_lib import artifacts

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from neuron_lib.browser import index as I  # noqa: E402
from neuron_lib.browser import query as Q  # noqa: E402
from neuron_lib.browser.__main__ import OPENAPI_FILE, openapi_schema  # noqa: E402
from neuron_lib.browser.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(data_root):
    return TestClient(create_app(artifacts.browser_index(), artifacts.browser_dashboard()))


def universal_neuron(client) -> tuple[int, int]:
    hits = client.get("/api/search", params={"filter": "is_universal=true", "model": "bt-a"}).json()["results"]
    if hits:
        return hits[0]["layer"], hits[0]["neuron"]
    return 0, 0


# ---------------------------------------------------------------- the index
def test_stage_outputs_and_rerun_is_skipped(data_root):
    res = data_root["result"]
    assert res.status == "done"
    assert Path(res.outputs["index"]).exists() and Path(res.outputs["dashboard"]).exists()
    assert (Path(res.outputs["site"]) / "index.html").exists()
    again = I.run_browser(I.BrowserConfig(export=False, dashboard=False))
    assert again.status == "skipped"
    man = json.loads(artifacts.manifest_path(artifacts.browser_index_dir()).read_text())
    assert man["stage"] == "browser" and set(man["models"]) == set(browser_data.MODELS)


def test_index_documents_match_the_summaries(data_root):
    """Histogram counts and top examples in the documents equal the summary files (independent read)."""
    from neuron_lib.common import load_tensors

    con = sqlite3.connect(artifacts.browser_index())
    blob = con.execute("SELECT doc FROM docs WHERE model='bt-a' AND layer=1 AND neuron=5").fetchone()[0]
    doc = I.unpack(blob)
    counts = 0
    best = []
    for sub in artifacts.list_summary_subsets("bt-a"):
        folder = artifacts.activation_summary("bt-a", sub)
        h = load_tensors(folder / "histogram.safetensors")["pre_bin_counts"][1, 5].numpy()
        counts = counts + h
        te = load_tensors(folder / "top_examples.safetensors")
        best += te["top_values"][1, 5].tolist()
    assert doc["histogram"]["pre"] == counts.tolist()
    top = doc["examples"]["top"]
    assert top[0]["value"] == pytest.approx(max(best), abs=1e-3)
    assert [e["value"] for e in top] == sorted([e["value"] for e in top], reverse=True)
    # the per-token activations (model forward) agree with the summary's value at the example's own token
    assert doc["examples"]["context_activations"] is True
    for e in top:
        assert e["values"][e["target"]] == pytest.approx(e["value"], abs=2e-3)
        assert all(v is not None for v in e["values"])
        assert len(e["tokens"]) == len(e["token_ids"]) == len(e["values"])


def test_index_built_by_forked_workers_equals_serial(data_root, tmp_path):
    """Layers' documents built in two forked processes give the index one process writes, row for row (documents,
    token effects in insertion order, token strings, neuron table, model metadata)."""
    sources = [I.find_sources(m) for m in browser_data.MODELS]
    paths = {}
    for jobs in (1, 2):
        paths[jobs] = tmp_path / f"jobs{jobs}.sqlite"
        I.build_index(I.BrowserConfig(jobs=jobs), sources, paths[jobs], log=lambda *_: None)
    tables = {
        "docs": "SELECT * FROM docs ORDER BY model, layer, neuron",
        "token_effects": "SELECT rowid, * FROM token_effects",
        "tokens": "SELECT * FROM tokens ORDER BY model, token_id",
        "neurons": "SELECT * FROM neurons ORDER BY model, layer, neuron",
        "models": "SELECT * FROM models ORDER BY model",
    }
    serial, forked = sqlite3.connect(paths[1]), sqlite3.connect(paths[2])
    for name, sql in tables.items():
        a, b = serial.execute(sql).fetchall(), forked.execute(sql).fetchall()
        assert a and a == b, name
    n_docs = serial.execute("SELECT count(*) FROM docs").fetchone()[0]
    assert n_docs == sum(len(I._read_table(s.df_path)) for s in sources)
    with pytest.raises(Exception, match="--jobs"):
        I.BrowserConfig(jobs=-1).validate()


def test_importance_formula(data_root):
    import pandas as pd

    df = pd.read_parquet(artifacts.neuron_df_file("bt-a"))
    parts = [df[c].rank(pct=True) for c in ("excess_corr", "kurt", "vocab_kurt", "w_out_norm")]
    parts.append((-df["sparsity"]).rank(pct=True))
    expected = sum(parts) / 5
    con = sqlite3.connect(artifacts.browser_index())
    got = [r[0] for r in con.execute("SELECT importance FROM neurons WHERE model='bt-a' ORDER BY layer, neuron")]
    assert got == pytest.approx(expected.tolist())


# ---------------------------------------------------------------- the filter language
def test_filter_parser():
    cols = ["excess_corr", "kurt", "is_universal", "max_corr_bt-b"]
    assert Q.parse_filter("excess_corr>0.3&kurt>5", cols) == [("excess_corr", ">", 0.3), ("kurt", ">", 5.0)]
    assert Q.parse_filter(" is_universal = true & layer<=1 ", cols) == [
        ("is_universal", "=", 1.0),
        ("layer", "<=", 1.0),
    ]
    assert Q.parse_filter("max_corr_bt-b>=0.5", cols) == [("max_corr_bt-b", ">=", 0.5)]
    for bad in (
        "",
        "kurt",
        "kurt>>3",
        "kurt>abc",
        "kurt>nan",
        "__import__('os')>1",
        "kurt>1;DROP TABLE neurons",
        'kurt"--<1',
        "nosuch>1",
        "kurt>1|skew<2",
        "x" * 600,
    ):
        with pytest.raises(Q.FilterError):
            Q.parse_filter(bad, cols)
    sql, params = Q.to_sql(Q.parse_filter("kurt>5&layer!=0", cols))
    assert sql == '"kurt" > ? AND "layer" != ?' and params == [5.0, 0.0]


# ---------------------------------------------------------------- the API
def test_models_model_layer(client):
    r = client.get("/api/models")
    assert r.status_code == 200
    names = [m["model"] for m in r.json()["models"]]
    assert names == list(browser_data.MODELS)
    m = client.get("/api/bt-a").json()
    assert m["n_layers"] == 2 and m["d_mlp"] == 64
    assert {"universality", "kurtosis", "importance"} <= set(m["top_neurons"])
    layer = client.get("/api/bt-a/1", params={"limit": 10, "offset": 60}).json()
    assert [n["neuron"] for n in layer["neurons"]] == [60, 61, 62, 63]
    assert layer["links"]["next"] is None and len(layer["links"]["pages"]) == 7


def test_neuron_document_services(client):
    doc = client.get("/api/bt-a/0/0").json()
    assert doc["available"] == [
        "properties",
        "histogram",
        "examples",
        "samples",
        "vocab",
        "partners",
        "explanation",
        "interventions",
        "coactivation",
        "weight_neighbours",
    ]
    expl = {k: v for r in doc["explanation"] for k, v in r.items()}
    assert expl["best_feature"] == browser_data.SCRIPT_TEXT and expl["score_best"] == pytest.approx(0.61)
    assert "unused_column" not in expl and props_has_score(client)
    iv = doc["interventions"]
    assert len(iv) == 1 and iv[0]["delta_loss"] == pytest.approx(0.012) and iv[0]["source"] == "mean.post"
    assert {"promote", "suppress", "max_act", "mean_act"} <= set(doc["vocab"])
    p = doc["partners"]["best_match"][0]
    assert p["model"] == "bt-b" and p["indexed"] and p["link"] == f"/api/bt-b/{p['layer']}/{p['neuron']}"
    props = doc["properties"]
    assert p["corr"] == pytest.approx(props["max_corr_bt-b"], abs=1e-4)
    assert p["excess"] == pytest.approx(props["max_corr_bt-b"] - props["baseline_bt-b"], abs=2e-4)
    assert doc["partners"]["verdict"]["is_universal"] == props["is_universal"]
    assert [n["neuron"] for n in doc["coactivation"]["neighbours"]] == [0, 1]
    assert doc["samples"]["random"] and doc["samples"]["quantile"]
    # a model without explanations, graphs, interventions (and, as the non-reference seed, partners): left out
    other = client.get("/api/bt-b/0/0").json()
    for absent in ("explanation", "interventions", "coactivation", "partners"):
        assert absent not in other["available"] and absent not in other
    assert "histogram" in other["available"]


def test_alignment_columns_shown_when_present(data_root, tmp_path):
    """The alignment criterion's columns (another stage adds them to the neuron dataframe) reach the verdict."""
    import pandas as pd

    path = artifacts.neuron_df_file("bt-a")
    df = pd.read_parquet(path)
    df2 = df.assign(alignment_mean=0.25, is_universal_aligned=df.index % 2 == 0)
    env = dict(os.environ)
    try:
        os.environ["DATAFRAMES_DIR"] = str(tmp_path / "df")
        import shutil

        shutil.copytree(env["DATAFRAMES_DIR"], tmp_path / "df")
        df2.to_parquet(artifacts.neuron_df_file("bt-a"))
        I.run_browser(I.BrowserConfig(export=False, dashboard=False, context_activations=False))
        c = TestClient(create_app(artifacts.browser_index()))
        doc = c.get("/api/bt-a/0/0").json()
        assert doc["partners"]["verdict"]["alignment_mean"] == 0.25
        assert doc["partners"]["verdict"]["is_universal_aligned"] is True
        page = c.get("/model/bt-a/0/0").text
        assert "universal (alignment): yes" in page and "alignment_mean 0.250" in page
        hits = c.get("/api/search", params={"filter": "is_universal_aligned=1&alignment_mean>0.2"}).json()
        assert hits["total"] == 64
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_search(client):
    r = client.get("/api/search", params={"filter": "excess_corr>-10&layer=1", "model": "bt-a", "limit": 5})
    assert r.status_code == 200 and r.json()["total"] == 64 and len(r.json()["results"]) == 5
    r = client.get("/api/search", params={"filter": "kurt>0", "order": "-kurt", "limit": 3}).json()
    ks = [h["kurt"] for h in r["results"]]
    assert ks == sorted(ks, reverse=True)
    tok = client.get("/api/search", params={"token": "dog", "kind": "max_act"}).json()
    assert tok["matched_tokens"] and tok["results"]
    vals = [h["value"] for h in tok["results"]]
    assert vals == sorted(vals, reverse=True)
    promo = client.get("/api/search", params={"token": "fox", "kind": "promote", "model": "bt-b"}).json()
    assert all(h["model"] == "bt-b" for h in promo["results"])
    feat = client.get("/api/search", params={"feature": "dog"}).json()
    assert [(h["layer"], h["neuron"]) for h in feat["results"]] == [(0, 1)]
    assert client.get("/api/search", params={"filter": "nosuch>1"}).status_code == 422
    assert client.get("/api/search", params={"filter": "kurt>1", "token": "x"}).status_code == 422
    assert client.get("/api/search").status_code == 422
    assert client.get("/api/search", params={"token": "dog", "kind": "evil"}).status_code == 422


def test_similar_and_importance(client):
    s = client.get("/api/bt-a/0/3/similar", params={"k": 4}).json()
    assert len(s["by_properties"]) == 4 and all((h["layer"], h["neuron"]) != (0, 3) for h in s["by_properties"])
    d = [h["distance"] for h in s["by_properties"]]
    assert d == sorted(d)
    assert s["by_correlation"][0]["model"] == "bt-b"
    back = client.get(f"/api/bt-b/{s['by_correlation'][0]['layer']}/{s['by_correlation'][0]['neuron']}/similar")
    assert any(h["model"] == "bt-a" and h["direction"] == "matched from" for h in back.json()["by_correlation"])
    imp = client.get("/api/bt-a/importance", params={"limit": 5}).json()["results"]
    v = [h["importance"] for h in imp]
    assert len(v) == 5 and v == sorted(v, reverse=True)


def test_openapi_schema_is_committed_and_responses_follow_it(client):
    import jsonschema

    schema = openapi_schema()
    committed = json.loads(OPENAPI_FILE.read_text())
    assert schema == committed, "run `python -m neuron_lib.browser openapi` and commit neuron_lib/browser/openapi.json"
    assert all(list(ops) == ["get"] for ops in committed["paths"].values()), "read-only: GET routes only"
    comps = committed["components"]["schemas"]

    def check(path: str, url: str, status: int = 200):
        r = client.get(url)
        assert r.status_code == status, (url, r.text)
        ref = committed["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(
            r.json(), {**ref, "components": committed["components"]}, cls=jsonschema.Draft202012Validator
        )

    assert comps
    check("/api/models", "/api/models")
    check("/api/{model}", "/api/bt-a")
    check("/api/{model}/{layer}", "/api/bt-a/0")
    check("/api/{model}/{layer}/{neuron}", "/api/bt-a/0/1")
    check("/api/{model}/{layer}/{neuron}/similar", "/api/bt-a/0/1/similar")
    check("/api/search", "/api/search?filter=kurt>0")
    check("/api/{model}/importance", "/api/bt-a/importance")
    check("/api/{model}/{layer}/{neuron}", "/api/nosuch/0/1", 404)


# ---------------------------------------------------------------- bad input and security
def test_unknown_ids_are_404_saying_what_exists(client):
    r = client.get("/api/nosuch")
    assert r.status_code == 404 and r.json()["models"] == list(browser_data.MODELS)
    r = client.get("/api/bt-a/7/0")
    assert r.status_code == 404 and r.json()["layers"] == [0, 1]
    r = client.get("/api/bt-a/1/64")
    assert r.status_code == 404 and r.json()["neurons"] == "0..63"
    r = client.get("/api/bt-a/0/0/nothing/here")
    assert r.status_code == 404 and "models" in r.json()


def test_malformed_ids_are_422(client):
    for url in (
        "/api/bt-a/x/0",
        "/api/bt-a/0/y",
        "/api/bt-a/-1/0",
        "/api/bt-a/0/-3",
        "/api/bt-a/0/1e9",
        "/api/bt-a/0/99999999999999999999",
        "/api/%20bad",
        "/api/bt-a/0.5/0",
    ):
        r = client.get(url)
        assert r.status_code == 422, (url, r.status_code, r.text)
        assert "detail" in r.json()


def test_path_traversal_never_reads_outside_the_data_roots(client, data_root, tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    opened: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_os_open(path, *a, **k):
        opened.append(str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    rel = os.path.relpath(secret, Path.cwd())
    attacks = [
        "/api/%2e%2e/0/0",
        "/api/..%2f..%2fetc%2fpasswd",
        "/api/%2e%2e%2f%2e%2e%2fetc%2fpasswd/0/0",
        f"/api/{rel.replace('/', '%2f')}",
        f"/api/%2f{str(secret).lstrip('/').replace('/', '%2f')}",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e",
        f"/static/{str(secret).replace('/', '%2f')}",
        "/model/..%2f..%2fsecret/0/0",
        "/api/bt-a/..%2f..%2f/0",
        "/api/search?model=..%2f..%2fetc&filter=kurt>0",
        "/api/search?filter=" + "kurt>0%26__import__('os').system('id')",
        "/..%2f..%2f..%2fetc%2fpasswd",
        "//etc/passwd",
    ]
    for url in attacks:
        r = client.get(url)
        assert 400 <= r.status_code < 500, (url, r.status_code)
        assert "TOP-SECRET" not in r.text and "root:" not in r.text
    roots = [Path(os.environ[k]).resolve() for k in artifacts.ROOTS]
    outside = [p for p in opened if not any(Path(p).resolve().is_relative_to(r) for r in roots)]
    assert not [p for p in outside if "secret" in p or "passwd" in p], outside
    assert client.get("/api/bt-a/0/0").status_code == 200  # still serving


def test_pages_escape_html(client):
    page = client.get("/model/bt-a/0/0").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the explanation feature
    assert re.findall(r"<script[^>]*>", page) == ["<script src='/static/browser.js'>"]
    # a neuron whose examples hold a token with '<' (the tokenizer learnt '<script>'): shown as text
    for n in range(64):
        doc = client.get(f"/api/bt-a/0/{n}").json()
        toks = [t for e in doc.get("examples", {}).get("top", []) for t in e["tokens"] if "<" in t]
        if toks:
            break
    assert toks, "no example token contains '<' (the synthetic corpus should produce one)"
    page = client.get(f"/model/bt-a/0/{n}").text
    shown = re.findall(r"<span class='tok[^']*'[^>]*>([^<]*)</span>", page)
    assert any(html.escape(toks[0], quote=True) == s for s in shown), (toks[0], shown[:20])
    assert re.findall(r"<script[^>]*>", page) == ["<script src='/static/browser.js'>"]


def test_html_pages_and_assets(client):
    assert "bt-a" in client.get("/").text
    assert "Top neurons by universality" in client.get("/model/bt-a").text
    assert client.get("/model/bt-a/1").text.count("class='neurons'") == 1
    page = client.get("/model/bt-a/0/0").text
    for section in ("histogram", "examples", "vocab", "partners", "explanation", "coactivation"):
        assert f"id='{section}'" in page
    assert "<svg class='hist'" in page and "/model/bt-b/" in page
    assert client.get("/static/browser.js").headers["content-type"].startswith("application/javascript")
    assert client.get("/static/nothing.js").status_code == 404
    docs = client.get("/docs").text
    assert "cdn." not in docs and "unpkg" not in docs and "jsdelivr" not in docs
    assert client.get("/search").status_code == 200
    assert "plotly" in client.get("/dashboard").text.lower()


def test_no_write_routes(client):
    for method in ("post", "put", "delete", "patch"):
        assert getattr(client, method)("/api/bt-a/0/0").status_code == 405


def test_static_export_links_resolve(data_root):
    site = artifacts.browser_site()
    pages_ = list(site.rglob("*.html"))
    assert len(pages_) == 2 + 2 * (1 + 2) + 2 * 2 * 64  # index, search; model + layer pages; neuron pages
    for page in [site / "index.html", site / "bt-a" / "index.html", site / "bt-a" / "0" / "0.html"]:
        text = page.read_text()
        for href in re.findall(r"(?:href|src)='([^']+)'", text):
            assert not href.startswith(("http", "/")), (page, href)
            assert (page.parent / href).resolve().exists(), (page, href)
    assert "&lt;script&gt;" in (site / "bt-a" / "0" / "0.html").read_text()


def test_export_in_parallel_equals_serial_and_is_not_rewritten(data_root, tmp_path):
    """The neuron pages rendered by two worker processes are the pages one process writes; a second build with
    the same index and page code leaves the export as it is (a re-run of `make all` stays short)."""
    from neuron_lib.browser.export import export_site

    serial, parallel = export_site(tmp_path / "serial", jobs=1), export_site(tmp_path / "parallel", jobs=2)
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    assert len(files) > 2 * 2 * 64
    for rel in files:
        assert (serial / rel).read_bytes() == (parallel / rel).read_bytes(), rel
    site = artifacts.browser_site()
    stamp = site / I.EXPORT_STAMP
    assert stamp.exists()
    page = site / "bt-a" / "0" / "0.html"
    before = page.stat().st_mtime_ns
    again = I.run_browser(I.BrowserConfig(dashboard=False))
    assert again.status == "skipped" and page.stat().st_mtime_ns == before
    stamp.write_text(json.dumps({"key": "another index"}))  # another index or page code: written again
    I.run_browser(I.BrowserConfig(dashboard=False))
    assert page.stat().st_mtime_ns != before and json.loads(stamp.read_text())["key"] != "another index"


def test_dashboard_is_self_contained(data_root):
    text = artifacts.browser_dashboard().read_text()
    assert len(re.findall(r"data-panel='([a-z_]+)'", text)) == 4
    assert not re.search(r"<script[^>]*src=['\"]https?:", text), "plotly.js must be embedded, not loaded from a CDN"
    assert "Plotly.newPlot" in text
    index = artifacts.figures_index().read_text()
    assert "browser/dashboard.html" in index and "browser/site/index.html" in index


def test_no_index_is_a_clear_error(tmp_path):
    from neuron_lib.common import NeuronLibError

    with pytest.raises(NeuronLibError, match="python -m neuron_lib.browser build"):
        create_app(tmp_path / "none.sqlite")


def props_has_score(client) -> bool:
    """The layer listing carries the held-out explanation score of bt-a's L0.N0 (explain's scores table)."""
    rows = client.get("/api/bt-a/0").json()
    text = json.dumps(rows)
    return "explanation_score" in text and "0.61" in text
