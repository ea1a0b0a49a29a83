"""The browser's HTML pages, rendered on the server (and by the static export) from the index's documents.

Every value that reaches the page goes through :func:`esc` (``html.escape`` with quotes), so a token spelled
``<script>`` shows as text. Assets (one stylesheet, one small script) are the strings :data:`CSS` and :data:`JS`,
served from memory by the app and written beside the pages by the export: nothing is fetched from elsewhere.
Links come from a :class:`Links` object: absolute paths for the server, relative ``.html`` paths for ``file://``.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

PAGE_SIZE = 200  # neurons per layer page on the server
QUANTILE_SHOWN = 2  # quantile samples shown per bin on a neuron page (the JSON document has them all)

CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#243b53;color:#fff;padding:.5em 1em}header a{color:#fff;margin-right:1em}
main{max-width:1200px;margin:auto;padding:1em}
table{border-collapse:collapse;font-size:.9em}td,th{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}
.tok{white-space:pre;font-family:monospace;padding:1px 0;border-radius:2px}
.tok.t{outline:1px solid #c00}
.p0{background:rgba(237,137,54,0.1)}.p1{background:rgba(237,137,54,0.2)}.p2{background:rgba(237,137,54,0.3)}.p3{background:rgba(237,137,54,0.4)}.p4{background:rgba(237,137,54,0.5)}.p5{background:rgba(237,137,54,0.6)}.p6{background:rgba(237,137,54,0.7)}.p7{background:rgba(237,137,54,0.8)}.p8{background:rgba(237,137,54,0.9)}.p9{background:rgba(237,137,54,1.0)}.n0{background:rgba(49,130,206,0.1)}.n1{background:rgba(49,130,206,0.2)}.n2{background:rgba(49,130,206,0.3)}.n3{background:rgba(49,130,206,0.4)}.n4{background:rgba(49,130,206,0.5)}

.ex{margin:2px 0;padding:3px;border-bottom:1px dotted #ccc;font-size:.9em}
.val{color:#666;font-size:.8em;margin-right:.5em;display:inline-block;min-width:4em}
.badge{display:inline-block;padding:1px 6px;border-radius:8px;font-size:.8em;margin-right:4px;background:#ddd}
.badge.yes{background:#2f855a;color:#fff}.badge.no{background:#e2e8f0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:1em}
section{margin:1.2em 0}h2{font-size:1.15em;border-bottom:2px solid #243b53}
svg.hist rect{fill:#3182ce}svg.hist rect:hover{fill:#dd6b20}
#tip{position:fixed;background:#000;color:#fff;padding:2px 6px;font-size:.8em;border-radius:3px;display:none}
.note{color:#718096;font-size:.85em}
"""

JS = """
(function(){
  var tip=document.createElement('div');tip.id='tip';document.body.appendChild(tip);
  document.addEventListener('mouseover',function(e){var t=e.target;
    if(t.classList&&t.classList.contains('tok')&&t.dataset.v!==undefined){tip.textContent=t.dataset.v;
      tip.style.display='block';}});
  document.addEventListener('mousemove',function(e){tip.style.left=(e.clientX+10)+'px';tip.style.top=(e.clientY+10)+'px';});
  document.addEventListener('mouseout',function(e){if(e.target.classList&&e.target.classList.contains('tok'))tip.style.display='none';});
  var form=document.getElementById('search-form');
  if(form&&form.dataset.api){form.addEventListener('submit',function(ev){ev.preventDefault();
    var p=new URLSearchParams(new FormData(form));var out=document.getElementById('results');
    out.textContent='searching...';
    fetch(form.dataset.api+'?'+p.toString()).then(function(r){return r.json().then(function(j){return [r.status,j];});})
    .then(function(a){var st=a[0],j=a[1];out.innerHTML='';
      if(st!==200){out.textContent='error: '+JSON.stringify(j.detail);return;}
      var res=j.results||[];var info=document.createElement('p');info.textContent=res.length+' results'+
        (j.total!==undefined?' of '+j.total:'');out.appendChild(info);
      var ul=document.createElement('ol');res.forEach(function(h){var li=document.createElement('li');
        var a=document.createElement('a');a.href='/model/'+encodeURIComponent(h.model)+'/'+h.layer+'/'+h.neuron;
        a.className='result';a.textContent=h.model+' L'+h.layer+' N'+h.neuron;li.appendChild(a);
        var extra=[];['value','excess_corr','kurt','score','feature','token'].forEach(function(k){
          if(h[k]!==undefined&&h[k]!==null)extra.push(k+'='+(typeof h[k]==='number'?h[k].toFixed(3):h[k]));});
        li.appendChild(document.createTextNode(' '+extra.join(' ')));ul.appendChild(li);});
      out.appendChild(ul);}).catch(function(err){out.textContent='error: '+err;});});}
  var sform=document.getElementById('static-search');
  if(sform&&window.NEURONS){sform.addEventListener('submit',function(ev){ev.preventDefault();
    var q=document.getElementById('static-q').value.trim();var out=document.getElementById('results');out.innerHTML='';
    var conds=[];var ok=true;q.split('&').forEach(function(c){var m=c.match(/^\\s*([A-Za-z_][A-Za-z0-9_.+-]*?)\\s*(>=|<=|==|!=|>|<|=)\\s*([^\\s]+)\\s*$/);
      if(!m){ok=false;return;}var v=m[3].toLowerCase()==='true'?1:(m[3].toLowerCase()==='false'?0:parseFloat(m[3]));
      if(isNaN(v)||window.NEURON_COLUMNS.indexOf(m[1])<0){ok=false;return;}conds.push([window.NEURON_COLUMNS.indexOf(m[1]),m[2],v]);});
    if(!ok){out.textContent='cannot parse the filter (NAME OP VALUE joined by &; columns: '+window.NEURON_COLUMNS.join(', ')+')';return;}
    var ul=document.createElement('ol');var n=0;window.NEURONS.forEach(function(r){
      var pass=conds.every(function(c){var x=r[c[0]];if(x===null)return false;switch(c[1]){case '>':return x>c[2];
        case '>=':return x>=c[2];case '<':return x<c[2];case '<=':return x<=c[2];case '!=':return x!=c[2];default:return x==c[2];}});
      if(pass&&n<500){n++;var li=document.createElement('li');var a=document.createElement('a');a.className='result';
        a.href=r[0]+'/'+r[1]+'/'+r[2]+'.html';a.textContent=r[0]+' L'+r[1]+' N'+r[2];li.appendChild(a);ul.appendChild(li);}});
    var info=document.createElement('p');info.textContent=n+' results (first 500)';out.appendChild(info);out.appendChild(ul);});}
})();
"""


def esc(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{nd}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{nd}f}"
    return str(x)


class Links:
    """Where pages link to: the server's paths (``static=False``) or the export's relative files."""

    def __init__(self, static: bool = False, depth: int = 0):
        self.static, self.up = static, "../" * depth

    def home(self) -> str:
        return self.up + "index.html" if self.static else "/"

    def model(self, m: str) -> str:
        return f"{self.up}{m}/index.html" if self.static else f"/model/{m}"

    def layer(self, m: str, layer: int) -> str:
        return f"{self.up}{m}/{layer}/index.html" if self.static else f"/model/{m}/{layer}"

    def neuron(self, m: str, layer: int, n: int) -> str:
        return f"{self.up}{m}/{layer}/{n}.html" if self.static else f"/model/{m}/{layer}/{n}"

    def search(self) -> str:
        return self.up + "search.html" if self.static else "/search"

    def asset(self, name: str) -> str:
        return f"{self.up}static/{name}" if self.static else f"/static/{name}"

    def api(self, path: str) -> str | None:
        return None if self.static else path

    def dashboard(self) -> str | None:
        return None if self.static else "/dashboard"


def page(title: str, body: str, links: Links, extra_head: str = "") -> str:
    nav = [f"<a href='{esc(links.home())}'>models</a>", f"<a href='{esc(links.search())}'>search</a>"]
    if not links.static:
        nav += ["<a href='/docs'>API docs</a>", "<a href='/dashboard'>dashboard</a>"]
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><link rel='stylesheet' href='{esc(links.asset('browser.css'))}'>{extra_head}"
        f"</head><body><header><b>neuron browser</b> · {' '.join(nav)}</header><main>{body}</main>"
        f"<script src='{esc(links.asset('browser.js'))}'></script></body></html>"
    )


# ---------------------------------------------------------------- pieces
def badge(label: str, value: Any) -> str:
    if value is None:
        return ""
    cls = "yes" if value is True or value == 1 else "no"
    return f"<span class='badge {cls}' data-badge='{esc(label)}'>{esc(label)}: {esc(fmt(bool(value)))}</span>"


def tokens_html(ex: dict[str, Any], vmax: float) -> str:
    """One span per token: colour class ``p0..p9`` (positive, ∝ value / vmax) or ``n0..n4`` (negative), the value
    in ``data-v`` (shown on hover by the page's script; "–" where unknown), the text escaped."""
    parts = []
    target = ex.get("target")
    for i, (tok, v) in enumerate(zip(ex.get("tokens", []), ex.get("values", []))):
        cls = "tok t" if i == target else "tok"
        value = "–"
        if v is not None:
            value = f"{v:.3f}"
            if vmax > 0 and v > 0:
                cls += f" p{min(9, int(10 * v / vmax))}"
            elif vmax > 0 and v < 0:
                cls += f" n{min(4, int(10 * -v / vmax))}"
        text = tok.replace("\n", "↵").replace("\t", "⇥")
        parts.append(f"<span class='{cls}' data-v='{esc(value)}'>{esc(text)}</span>")
    return "".join(parts)


def examples_html(exs: list[dict[str, Any]], vmax: float, cls: str) -> str:
    rows = []
    for ex in exs:
        sub = f" · {esc(ex['subset'])}" if ex.get("subset") else ""
        rows.append(
            f"<div class='ex {cls}'><span class='val'>{esc(fmt(ex.get('value')))}</span>"
            f"{tokens_html(ex, vmax)}<span class='note'> row {esc(ex.get('row'))}{sub}</span></div>"
        )
    return "".join(rows)


def histogram_svg(counts: list[int], edges: list[float], kind: str, width: int = 520, height: int = 140) -> str:
    """Bars of log(1 + count) per bin (bin i covers edges[i-1] < v ≤ edges[i]); hover shows range and count."""
    n = len(counts)
    if n == 0 or not any(counts):
        return "<p class='note'>empty histogram</p>"
    top = math.log1p(max(counts))
    bw = width / n
    rects = []
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        h = max(1.0, (height - 20) * math.log1p(c) / top)
        lo = "−∞" if i == 0 else f"{edges[i - 1]:.2f}"
        hi = "+∞" if i >= len(edges) else f"{edges[i]:.2f}"
        rects.append(
            f"<rect x='{i * bw:.1f}' y='{height - 20 - h:.1f}' width='{max(bw, 1):.1f}' height='{h:.1f}'>"
            f"<title>({lo}, {hi}]: {c}</title></rect>"
        )
    lo_lbl, hi_lbl = (f"{edges[0]:g}", f"{edges[-1]:g}") if edges else ("", "")
    return (
        f"<svg class='hist' data-kind='{esc(kind)}' width='{width}' height='{height}' role='img'>"
        + "".join(rects)
        + f"<text x='0' y='{height - 4}' font-size='10'>{esc(lo_lbl)}</text>"
        f"<text x='{width - 30}' y='{height - 4}' font-size='10'>{esc(hi_lbl)}</text></svg>"
    )


def table_html(rows: list[dict[str, Any]], columns: list[str], link=None, cls: str = "") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = esc(fmt(r.get(c)))
            if link and c == columns[0]:
                href = link(r)
                v = f"<a href='{esc(href)}'>{v}</a>" if href else v
            cells.append(f"<td>{v}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table class='{esc(cls)}'><tr>{head}</tr>{''.join(body)}</table>"


# ---------------------------------------------------------------- pages
def index_page(models: list[dict[str, Any]], links: Links) -> str:
    rows = []
    for m in models:
        n_uni = sum(layer.get("n_is_universal", 0) for layer in m.get("layers", []))
        rows.append(
            {
                "model": m["model"],
                "layers": m["n_layers"],
                "d_mlp": m["d_mlp"],
                "neurons": m["n_neurons"],
                "universal": n_uni,
                "dataset": m.get("dataset"),
                "services": ", ".join(m.get("services", [])),
            }
        )
    body = "<h1>Models</h1>" + table_html(
        rows,
        ["model", "layers", "d_mlp", "neurons", "universal", "dataset", "services"],
        link=lambda r: links.model(r["model"]),
        cls="models",
    )
    if links.dashboard():
        body += f"<p><a href='{esc(links.dashboard())}'>Analysis dashboard</a></p>"
    return page("neuron browser", body, links)


def model_page(meta: dict[str, Any], links: Links) -> str:
    m = meta["model"]
    body = [
        f"<h1>{esc(m)}</h1><p>{meta['n_layers']} layers × {meta['d_mlp']} neurons · dataset {esc(meta.get('dataset'))}"
        f" · services: {esc(', '.join(meta.get('services', [])))}</p>"
    ]
    body.append(
        table_html(
            meta.get("layers", []),
            ["layer"] + [k for k in (meta.get("layers") or [{}])[0] if k != "layer"],
            link=lambda r: links.layer(m, r["layer"]),
            cls="layers",
        )
    )
    for measure, per_layer in meta.get("top_neurons", {}).items():
        body.append(f"<section><h2>Top neurons by {esc(measure)}</h2><div class='grid'>")
        for layer, lst in per_layer.items():
            items = "".join(
                f"<li><a href='{esc(links.neuron(m, int(layer), e['neuron']))}'>N{esc(e['neuron'])}</a> "
                f"{esc(fmt(e['value']))}</li>"
                for e in lst
            )
            body.append(f"<div><b>layer {esc(layer)}</b><ol>{items}</ol></div>")
        body.append("</div></section>")
    return page(m, "".join(body), links)


def layer_page(meta: dict[str, Any], layer: int, neurons: list[dict[str, Any]], links: Links, offset: int = 0) -> str:
    m = meta["model"]
    cols = ["neuron"] + [
        c
        for c in (
            "excess_corr",
            "is_universal",
            "alignment_mean",
            "is_universal_aligned",
            "kurt",
            "sparsity",
            "vocab_kurt",
            "importance",
            "explanation_score",
        )
        if any(c in r for r in neurons)
    ]
    nav = []
    if not links.static:
        if offset > 0:
            nav.append(f"<a href='{esc(links.layer(m, layer))}?offset={max(0, offset - PAGE_SIZE)}'>previous</a>")
        if offset + PAGE_SIZE < meta["d_mlp"]:
            nav.append(f"<a href='{esc(links.layer(m, layer))}?offset={offset + PAGE_SIZE}'>next</a>")
    body = f"<h1><a href='{esc(links.model(m))}'>{esc(m)}</a> · layer {layer}</h1><p>{' '.join(nav)}</p>" + table_html(
        neurons, cols, link=lambda r: links.neuron(m, layer, r["neuron"]), cls="neurons"
    )
    return page(f"{m} layer {layer}", body, links)


def neuron_page(doc: dict[str, Any], meta: dict[str, Any], links: Links, indexed: set[str] | None = None) -> str:
    m, layer, n = doc["model"], doc["layer"], doc["neuron"]
    props = doc.get("properties", {})
    indexed = indexed or set()
    out = [
        f"<h1><a href='{esc(links.model(m))}'>{esc(m)}</a> · <a href='{esc(links.layer(m, layer))}'>layer {layer}</a>"
        f" · neuron {n}</h1>"
    ]
    nav = []
    if n > 0:
        nav.append(f"<a href='{esc(links.neuron(m, layer, n - 1))}'>← N{n - 1}</a>")
    if n + 1 < meta["d_mlp"]:
        nav.append(f"<a href='{esc(links.neuron(m, layer, n + 1))}'>N{n + 1} →</a>")
    api = links.api(f"/api/{m}/{layer}/{n}")
    if api:
        nav.append(f"<a href='{esc(api)}'>JSON</a>")
    out.append(f"<p>{' · '.join(nav)}</p>")
    out.append(
        "<p class='verdict'>"
        + badge("universal (paper)", props.get("is_universal"))
        + badge("universal (rotation z)", props.get("is_universal_z"))
        + badge("universal (alignment)", props.get("is_universal_aligned"))
        + (
            f"<span class='badge'>alignment_mean {esc(fmt(props['alignment_mean']))}</span>"
            if props.get("alignment_mean") is not None
            else ""
        )
        + badge("sparse", props.get("is_sparse"))
        + "</p>"
    )
    out.append(f"<p class='note'>services: {esc(', '.join(doc.get('available', [])))}</p>")
    expl = doc.get("explanation")
    if expl:
        out.append("<section id='explanation'><h2>Explanation</h2>")
        cols = sorted({k for r in expl for k in r})
        out.append(table_html(expl, cols) + "</section>")
    key = [
        c
        for c in (
            "excess_corr",
            "mean_corr",
            "max_corr",
            "mean_baseline",
            "rotation_z",
            "alignment_mean",
            "kurt",
            "skew",
            "mean",
            "var",
            "sparsity",
            "act_freq_exact",
            "w_in_norm",
            "w_out_norm",
            "input_bias",
            "in_out_sim",
            "vocab_kurt",
            "vocab_skew",
            "importance",
        )
        if c in props
    ]
    out.append(
        "<div class='grid'><section id='properties'><h2>Properties</h2>"
        + table_html([{"property": c, "value": props[c]} for c in key], ["property", "value"])
        + "<details><summary>all columns</summary>"
        + table_html([{"column": c, "value": v} for c, v in props.items()], ["column", "value"])
        + "</details></section>"
    )
    hist = doc.get("histogram")
    if hist:
        edges = meta.get("histogram_edges", {})
        out.append("<section id='histogram'><h2>Activation histogram</h2>")
        for kind in ("pre", "post"):
            if kind in hist:
                out.append(
                    f"<p>{'pre' if kind == 'pre' else 'post'}-activation (log counts)</p>"
                    + histogram_svg(hist[kind], edges.get(kind, []), kind)
                )
        out.append("</section>")
    out.append("</div>")
    ex = doc.get("examples")
    if ex:
        vals = [e["value"] for k in ("top", "text") for e in ex.get(k, []) if e.get("value") is not None]
        vmax = max(vals) if vals else 0.0
        out.append("<section id='examples'><h2>Top examples</h2>")
        if not ex.get("context_activations"):
            out.append("<p class='note'>only each example's own token value is known (model not available)</p>")
        if ex.get("top"):
            out.append("<h3>token level</h3>" + examples_html(ex["top"], vmax, "top"))
        if ex.get("text"):
            out.append("<h3>text level (max over a row)</h3>" + examples_html(ex["text"], vmax, "text"))
        out.append("</section>")
    else:
        vmax = 0.0
    s = doc.get("samples")
    if s:
        out.append("<section id='samples'><h2>Samples</h2>")
        if s.get("random"):
            out.append("<h3>random</h3>" + examples_html(s["random"], vmax or 1.0, "random"))
        for b in s.get("quantile", []):
            if b.get("examples"):
                b = dict(b, examples=b["examples"][:QUANTILE_SHOWN])
                out.append(
                    f"<h3>quantile bin {esc(b['bin'])} ({esc(fmt(b.get('low')))}, {esc(fmt(b.get('high')))}]"
                    f" · {esc(b.get('count'))} tokens</h3>" + examples_html(b["examples"], vmax or 1.0, "quantile")
                )
        out.append("</section>")
    v = doc.get("vocab")
    if v:
        titles = {
            "promote": "promoted (top cos W_U, w_out)",
            "suppress": "suppressed (bottom cos W_U, w_out)",
            "max_act": "max activation by token",
            "mean_act": "mean activation by token",
            "input": "input (top cos W_E, w_in)",
        }
        out.append("<section id='vocab'><h2>Vocabulary effects</h2><div class='grid'>")
        for kind, lst in v.items():
            out.append(
                f"<div><b>{esc(titles.get(kind, kind))}</b>"
                + table_html([{"token": repr(e["token"]), "value": e["value"]} for e in lst], ["token", "value"])
                + "</div>"
            )
        out.append("</div></section>")
    p = doc.get("partners")
    if p:

        def plink(r):
            return links.neuron(r["model"], r["layer"], r["neuron"]) if r["model"] in indexed else None

        rows = [dict(r, partner=f"{r['model']} L{r['layer']} N{r['neuron']}") for r in p["best_match"]]
        out.append(
            "<section id='partners'><h2>Cross-seed partners</h2>"
            + table_html(rows, ["partner", "corr", "baseline", "excess", "rotation_z"], link=plink, cls="partners")
            + "<p>verdict: "
            + " · ".join(f"{esc(k)} = {esc(fmt(val))}" for k, val in p.get("verdict", {}).items())
            + "</p></section>"
        )
    c = doc.get("coactivation")
    if c:
        out.append(
            f"<section id='coactivation'><h2>Co-activation neighbours ({esc(c.get('run'))})</h2>"
            f"<p>node: {esc(', '.join(f'{k}={fmt(x)}' for k, x in c.get('node', {}).items()))}</p>"
            + table_html(
                [dict(r, neighbour=f"L{r['layer']} N{r['neuron']}") for r in c.get("neighbours", [])],
                ["neighbour", "weight", "count"],
                link=lambda r: links.neuron(m, r["layer"], r["neuron"]),
            )
            + "</section>"
        )
    w = doc.get("weight_neighbours")
    if w:
        out.append(
            "<section id='weights'><h2>Weight neighbours (cos w_out · w_in of later neurons)</h2>"
            + table_html(
                [dict(r, neighbour=f"L{r['layer']} N{r['neuron']}") for r in w],
                ["neighbour", "cos_out_in"],
                link=lambda r: links.neuron(m, r["layer"], r["neuron"]),
            )
            + "</section>"
        )
    iv = doc.get("interventions")
    if iv:
        cols = sorted({k for r in iv for k in r})
        out.append("<section id='interventions'><h2>Interventions</h2>" + table_html(iv, cols) + "</section>")
    return page(f"{m} L{layer} N{n}", "".join(out), links)


def search_page(models: list[str], links: Links, columns: list[str] | None = None) -> str:
    if links.static:
        body = (
            "<h1>Search (static export: property filters)</h1><form id='static-search'>"
            "<input id='static-q' name='filter' size='50' value='excess_corr&gt;0.3'> <button>search</button></form>"
            f"<p class='note'>columns: {esc(', '.join(columns or []))}</p><div id='results'></div>"
        )
        return page("search", body, links, extra_head=f"<script src='{esc(links.asset('neurons.js'))}'></script>")
    opts = "<option value=''>all models</option>" + "".join(f"<option>{esc(m)}</option>" for m in models)
    body = (
        "<h1>Search</h1><form id='search-form' data-api='/api/search'>"
        f"<label>model <select name='model'>{opts}</select></label> "
        "<label>filter <input name='filter' size='40' placeholder='excess_corr>0.3&amp;kurt>5'></label> "
        "<label>token <input name='token' size='12'></label> "
        "<label>kind <select name='kind'><option>max_act</option><option>mean_act</option><option>promote</option>"
        "<option>suppress</option></select></label> "
        "<label>feature <input name='feature' size='12'></label> <button id='search-button'>search</button></form>"
        "<p class='note'>filter: NAME OP VALUE joined by &amp; (OP: &gt; &gt;= &lt; &lt;= = !=); "
        "parsed, never evaluated.</p><div id='results'></div>"
    )
    return page("search", body, links)


def static_neurons_js(columns: list[str], rows: list[list[Any]]) -> str:
    return (
        "window.NEURON_COLUMNS=" + json.dumps(["model", "layer", "neuron", *columns]) + ";\n"
        "window.NEURONS=" + json.dumps(rows, separators=(",", ":")) + ";\n"
    )
