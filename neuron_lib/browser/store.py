"""Read-only queries on the browser's index (one SQLite file, ``artifacts.browser_index()``).

Every answer comes from the index: no request ever names a file, so no request can read one. Connections are
opened read-only (``mode=ro``), one per thread; memory stays bounded by SQLite's page cache plus, per model
asked for similar neurons, one float32 property matrix (neurons × ≤ 16 columns).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from neuron_lib.browser.index import unpack
from neuron_lib.browser.query import FilterError, parse_filter, to_sql
from neuron_lib.common import NeuronLibError

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}$")
#: columns of the property vector behind "similar neurons" (z-scored within the model; missing ones skipped)
SIMILARITY_COLUMNS = (
    "excess_corr",
    "w_in_norm",
    "input_bias",
    "w_out_norm",
    "in_out_sim",
    "mean",
    "var",
    "skew",
    "kurt",
    "vocab_mean",
    "vocab_var",
    "vocab_skew",
    "vocab_kurt",
    "sparsity",
)
TOKEN_KINDS = ("max_act", "mean_act", "promote", "suppress")
#: columns listed for each neuron in layer pages and search results
SUMMARY_COLUMNS = (
    "excess_corr",
    "is_universal",
    "alignment_mean",
    "is_universal_aligned",
    "kurt",
    "skew",
    "sparsity",
    "vocab_kurt",
    "importance",
    "explanation_score",
)


def valid_model_name(name: str) -> bool:
    return bool(MODEL_NAME.match(name)) and ".." not in name


class BrowserStore:
    """Queries on one index file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise NeuronLibError(
                f"no browser index at {self.path}: build it with `python -m neuron_lib.browser build` (or `make all`)"
            )
        self._local = threading.local()
        self._lock = threading.Lock()
        self._vectors: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
        con = self._con()
        self._models = {m: json.loads(meta) for m, meta in con.execute("SELECT model, meta FROM models ORDER BY model")}
        self.columns = [r[1] for r in con.execute("PRAGMA table_info(neurons)")][3:]

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            con.execute("PRAGMA query_only=ON")
            self._local.con = con
        return con

    # ------------------------------------------------------------ models and layers
    def model_names(self) -> list[str]:
        return list(self._models)

    def model(self, name: str) -> dict[str, Any] | None:
        return self._models.get(name)

    def layer_neurons(self, model: str, layer: int, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        cols = [c for c in SUMMARY_COLUMNS if c in self.columns]
        sel = ", ".join(f'"{c}"' for c in cols)
        rows = self._con().execute(
            f"SELECT neuron, {sel} FROM neurons WHERE model=? AND layer=? ORDER BY neuron LIMIT ? OFFSET ?",
            (model, layer, limit, offset),
        )
        return [{"neuron": r[0], **_row(cols, r[1:])} for r in rows]

    # ------------------------------------------------------------ documents
    def doc(self, model: str, layer: int, neuron: int) -> dict[str, Any] | None:
        r = (
            self._con()
            .execute("SELECT doc FROM docs WHERE model=? AND layer=? AND neuron=?", (model, layer, neuron))
            .fetchone()
        )
        return unpack(r[0]) if r else None

    # ------------------------------------------------------------ search
    def search_filter(
        self, filter_text: str, model: str | None = None, limit: int = 50, offset: int = 0, order: str | None = None
    ) -> dict[str, Any]:
        conds = parse_filter(filter_text, self.columns)
        where, params = to_sql(conds)
        if model:
            where, params = f"model=? AND ({where})", [model, *params]
        order_sql = "model, layer, neuron"
        if order:
            desc = order.startswith("-")
            name = order.lstrip("-")
            if name not in self.columns and name not in ("layer", "neuron"):
                raise FilterError(f"cannot order by unknown column {name!r}")
            order_sql = f'"{name}" {"DESC" if desc else "ASC"}, model, layer, neuron'
        cols = [c for c in SUMMARY_COLUMNS if c in self.columns]
        con = self._con()
        total = con.execute(f"SELECT COUNT(*) FROM neurons WHERE {where}", params).fetchone()[0]
        sel = ", ".join(f'"{c}"' for c in cols)
        rows = con.execute(
            f"SELECT model, layer, neuron, {sel} FROM neurons WHERE {where} ORDER BY {order_sql} LIMIT ? OFFSET ?",
            [*params, limit, offset],
        ).fetchall()
        return {
            "filter": [{"column": c, "op": o, "value": v} for c, o, v in conds],
            "total": total,
            "results": [_hit(r[0], r[1], r[2], **_row(cols, r[3:])) for r in rows],
        }

    def find_tokens(self, token: str, model: str | None = None, limit: int = 20) -> list[tuple[str, int, str]]:
        """Token ids whose string equals ``token`` (also with a leading space), else contains it."""
        con = self._con()
        args: list[Any] = [token, " " + token]
        q = "SELECT model, token_id, token FROM tokens WHERE (token=? OR token=?)"
        if model:
            q += " AND model=?"
            args.append(model)
        found = con.execute(q + " LIMIT ?", [*args, limit]).fetchall()
        if not found:
            q = "SELECT model, token_id, token FROM tokens WHERE instr(lower(token), lower(?)) > 0"
            args = [token]
            if model:
                q += " AND model=?"
                args.append(model)
            found = con.execute(q + " LIMIT ?", [*args, limit]).fetchall()
        return found

    def search_token(self, token: str, model: str | None = None, kind: str = "max_act", limit: int = 50):
        if kind not in TOKEN_KINDS:
            raise FilterError(f"unknown kind {kind!r}; kinds: {', '.join(TOKEN_KINDS)}")
        tokens = self.find_tokens(token, model)
        con = self._con()
        hits = []
        desc = kind != "suppress"
        for m, tid, tstr in tokens:
            rows = con.execute(
                "SELECT layer, neuron, value FROM token_effects WHERE model=? AND token_id=? AND kind=? "
                f"ORDER BY value {'DESC' if desc else 'ASC'} LIMIT ?",
                (m, tid, kind, limit),
            )
            hits += [_hit(m, l, n, token=tstr, token_id=tid, value=v) for l, n, v in rows]
        hits.sort(key=lambda h: -(h["value"] or 0) if desc else (h["value"] or 0))
        return {
            "token": token,
            "kind": kind,
            "matched_tokens": [{"model": m, "token_id": t, "token": s} for m, t, s in tokens],
            "results": hits[:limit],
        }

    def search_feature(self, feature: str, model: str | None = None, limit: int = 50):
        q = "SELECT model, layer, neuron, feature, score FROM features WHERE instr(feature, lower(?)) > 0"
        args: list[Any] = [feature]
        if model:
            q += " AND model=?"
            args.append(model)
        rows = self._con().execute(q + " ORDER BY score DESC LIMIT ?", [*args, limit]).fetchall()
        return {"feature": feature, "results": [_hit(m, l, n, feature=f, score=s) for m, l, n, f, s in rows]}

    # ------------------------------------------------------------ similar neurons and importance
    def _vectors_of(self, model: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        with self._lock:
            if model not in self._vectors:
                cols = [c for c in SIMILARITY_COLUMNS if c in self.columns]
                sel = ", ".join(f'"{c}"' for c in cols)
                rows = (
                    self._con()
                    .execute(f"SELECT layer, neuron, {sel} FROM neurons WHERE model=? ORDER BY layer, neuron", (model,))
                    .fetchall()
                )
                arr = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)
                ids, X = arr[:, :2].astype(np.int64), arr[:, 2:]
                keep = ~np.all(np.isnan(X), axis=0)
                X, cols = X[:, keep], [c for c, k in zip(cols, keep) if k]
                mu, sd = np.nanmean(X, 0), np.nanstd(X, 0)
                Z = np.nan_to_num((X - mu) / np.where(sd > 0, sd, 1.0)).astype(np.float32)
                self._vectors[model] = (ids, Z, cols)
            return self._vectors[model]

    def similar(self, model: str, layer: int, neuron: int, k: int = 10) -> dict[str, Any]:
        """Nearest neurons of the same model by z-scored property vector (Euclidean), and cross-seed neighbours:
        the best matches in the other seeds and the neurons of other indexed models whose best match is this one."""
        ids, Z, cols = self._vectors_of(model)
        d_mlp = self._models[model]["d_mlp"]
        i = layer * d_mlp + neuron
        out: dict[str, Any] = {"property_columns": cols, "by_properties": [], "by_correlation": []}
        if len(cols) and i < len(Z):
            dist = np.sqrt(((Z - Z[i]) ** 2).sum(1))
            dist[i] = np.inf
            order = np.argsort(dist, kind="stable")[:k]
            out["by_properties"] = [
                _hit(model, int(ids[j, 0]), int(ids[j, 1]), distance=round(float(dist[j]), 4)) for j in order
            ]
        doc = self.doc(model, layer, neuron) or {}
        for p in (doc.get("partners") or {}).get("best_match", []):
            out["by_correlation"].append(
                _hit(p["model"], p["layer"], p["neuron"], corr=p["corr"], direction="best match")
            )
        con = self._con()
        for other in self.model_names():
            lc, nc, cc = f"max_corr_layer_{model}", f"max_corr_neuron_{model}", f"max_corr_{model}"
            if other == model or not all(c in self.columns for c in (lc, nc, cc)):
                continue
            rows = con.execute(
                f'SELECT layer, neuron, "{cc}" FROM neurons WHERE model=? AND "{lc}"=? AND "{nc}"=? '
                f'ORDER BY "{cc}" DESC LIMIT ?',
                (other, layer, neuron, k),
            )
            out["by_correlation"] += [_hit(other, l, n, corr=c, direction="matched from") for l, n, c in rows]
        return out

    def importance(self, model: str, layer: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if "importance" not in self.columns:
            return []
        q, args = "SELECT layer, neuron, importance FROM neurons WHERE model=? AND importance IS NOT NULL", [model]
        if layer is not None:
            q += " AND layer=?"
            args.append(layer)
        rows = self._con().execute(q + " ORDER BY importance DESC, layer, neuron LIMIT ?", [*args, limit])
        return [_hit(model, l, n, importance=round(v, 4)) for l, n, v in rows]


def _row(cols, values) -> dict[str, Any]:
    return {c: v for c, v in zip(cols, values) if v is not None}


def _hit(model: str, layer: int, neuron: int, **fields) -> dict[str, Any]:
    return {
        "model": model,
        "layer": int(layer),
        "neuron": int(neuron),
        "link": f"/api/{model}/{int(layer)}/{int(neuron)}",
        **fields,
    }
