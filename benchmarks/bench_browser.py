"""Benchmark of the neuron browser (``neuron_lib.browser``): document latency, memory, loopback load test.

Cases:

- ``zoo`` (when the zoo's index exists, i.e. after ``make all``; roots from the usual environment variables):
  p50 / p95 latency of ``GET /api/{model}/{layer}/{neuron}`` for random neurons through the ASGI app in-process
  (FastAPI TestClient, so the figure is the server's own work: SQLite read + decompress + JSON), target p95 ≤ 50 ms;
- ``gpt2-small``: a synthetic index of GPT-2-small size (36,864 neurons × 5 models = 184,320 documents; neuron
  tables of the paper's columns + cross-seed partner columns, pre-activation histograms of 257 bins, no examples),
  built in a subprocess (time, peak RSS), then served: p50 / p95 document latency and the server's peak RSS
  after reading 5,000 random documents (bounded: SQLite's page cache, nothing loaded up front);
- ``load``: a real uvicorn server on 127.0.0.1 (the zoo's index when present, else the synthetic one), 32
  concurrent keep-alive clients, 5,000 requests of random neuron documents: errors, p50 / p95 latency seen by
  the clients, throughput, server peak RSS.

Run: ``python benchmarks/bench_browser.py [--skip-synthetic]`` → ``benchmarks/results/browser.{json,md}``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def peak_rss_mib(pid: int | None = None) -> float:
    path = f"/proc/{pid or 'self'}/status"
    for line in Path(path).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- in-process latency
def app_latency(index: Path, n: int = 1000, seed: int = 0) -> dict:
    from fastapi.testclient import TestClient

    from neuron_lib.browser.app import create_app

    client = TestClient(create_app(index))
    models = client.get("/api/models").json()["models"]
    rng = random.Random(seed)
    times = []
    sizes = []
    for _ in range(n):
        m = rng.choice(models)
        url = f"/api/{m['model']}/{rng.randrange(m['n_layers'])}/{rng.randrange(m['d_mlp'])}"
        t0 = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, (url, r.status_code)
        sizes.append(len(r.content))
    page_times = []
    for _ in range(min(n, 200)):
        m = rng.choice(models)
        url = f"/model/{m['model']}/{rng.randrange(m['n_layers'])}/{rng.randrange(m['d_mlp'])}"
        t0 = time.perf_counter()
        assert client.get(url).status_code == 200
        page_times.append(time.perf_counter() - t0)
    return {
        "requests": n,
        "p50_ms": _pct(times, 50),
        "p95_ms": _pct(times, 95),
        "max_ms": _pct(times, 100),
        "page_p50_ms": _pct(page_times, 50),
        "page_p95_ms": _pct(page_times, 95),
        "mean_doc_kib": float(np.mean(sizes) / 1024),
        "peak_rss_mib": peak_rss_mib(),
    }


# ---------------------------------------------------------------- the synthetic GPT-2-small index
def build_synthetic(folder: Path, n_models: int, n_layers: int, d_mlp: int) -> dict:
    """Neuron dataframes + histograms for ``n_models`` seeds, then the real index build on them."""
    import torch

    from helpers import synthetic_neuron_df
    from neuron_lib import artifacts
    from neuron_lib.browser.index import BrowserConfig, run_browser
    from neuron_lib.common import make_manifest, save_tensors_atomic, write_manifest

    for k in artifacts.ROOTS:
        os.environ[k] = str(folder / k.lower())
    names = [f"syn-gpt2-{c}" for c in "abcde"[:n_models]]
    rng = np.random.default_rng(0)
    t0 = time.time()
    for i, m in enumerate(names):
        df = synthetic_neuron_df(n_layers, d_mlp, seed=i)
        for o in names:
            if o == m:
                continue
            df[f"max_corr_{o}"] = df["max_corr"] - rng.uniform(0, 0.05, len(df))
            df[f"max_corr_layer_{o}"] = df["layer"]
            df[f"max_corr_neuron_{o}"] = rng.integers(0, d_mlp, len(df))
            df[f"baseline_{o}"] = df["mean_baseline"]
        stem = artifacts.neuron_df(m)
        stem.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(stem.with_name(stem.name + ".parquet"))
        sub = artifacts.activation_summary(m, "all")
        counts = rng.poisson(3.0, size=(n_layers, d_mlp, 257)).astype(np.int64)
        save_tensors_atomic(sub / "histogram.safetensors", {"pre_bin_counts": torch.from_numpy(counts)})
        write_manifest(sub, make_manifest("summary", {}, model=m, dataset="synthetic"))
        del df, counts
    t1 = time.time()
    res = run_browser(BrowserConfig(export=False, dashboard=False, context_activations=False))
    return {
        "models": names,
        "neurons": n_models * n_layers * d_mlp,
        "write_inputs_s": t1 - t0,
        "index_build_s": res.seconds,
        "index_mib": artifacts.browser_index().stat().st_size / 2**20,
        "build_peak_rss_mib": peak_rss_mib(),
        "index": str(artifacts.browser_index()),
    }


# ---------------------------------------------------------------- loopback load test
def load_test(index: Path, n_requests: int = 5000, clients: int = 32, seed: int = 0) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuron_lib.browser", "serve", "--port", str(port), "--index", str(index)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(300):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/api/models")
                models = json.loads(c.getresponse().read())["models"]
                c.close()
                break
            except (OSError, ValueError):
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        rng = random.Random(seed)
        urls = []
        for _ in range(n_requests):
            m = rng.choice(models)
            urls.append(f"/api/{m['model']}/{rng.randrange(m['n_layers'])}/{rng.randrange(m['d_mlp'])}")
        lat: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        it = iter(urls)

        def worker():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            while True:
                with lock:
                    url = next(it, None)
                if url is None:
                    break
                t0 = time.perf_counter()
                try:
                    conn.request("GET", url)
                    r = conn.getresponse()
                    body = r.read()
                    ok = r.status == 200 and body.startswith(b"{")
                except (OSError, http.client.HTTPException) as exc:
                    ok, body = False, str(exc).encode()
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if not ok:
                        errors.append(url)
            conn.close()

        t0 = time.time()
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.time() - t0
        return {
            "requests": len(lat),
            "clients": clients,
            "errors": len(errors),
            "p50_ms": _pct(lat, 50),
            "p95_ms": _pct(lat, 95),
            "p99_ms": _pct(lat, 99),
            "wall_s": wall,
            "requests_per_s": len(lat) / wall,
            "server_peak_rss_mib": peak_rss_mib(proc.pid),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-synthetic", action="store_true", help="skip the GPT-2-small-sized synthetic index")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-mlp", type=int, default=3072)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--case", choices=["all", "synthetic-build"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--folder", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case == "synthetic-build":  # child process: peak RSS of the build alone
        print(json.dumps(build_synthetic(Path(args.folder), args.models, args.layers, args.d_mlp)))
        return
    from neuron_lib import artifacts

    out: dict = {
        "env": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()},
        "results": {},
    }
    zoo_index = artifacts.browser_index()
    if zoo_index.exists():
        print("zoo: in-process latency ...", flush=True)
        out["results"]["zoo"] = app_latency(zoo_index) | {
            "index": str(zoo_index),
            "index_mib": zoo_index.stat().st_size / 2**20,
        }
    synth_index = None
    if not args.skip_synthetic:
        tmp = Path(tempfile.mkdtemp(prefix="bench_browser_"))
        print(f"gpt2-small: building the synthetic index in {tmp} ...", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--case",
                "synthetic-build",
                "--folder",
                str(tmp),
                "--models",
                str(args.models),
                "--layers",
                str(args.layers),
                "--d-mlp",
                str(args.d_mlp),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        build = json.loads(child.stdout.strip().splitlines()[-1])
        synth_index = Path(build.pop("index"))  # a temporary folder, deleted after the run: not recorded
        print("gpt2-small: serving latency and memory ...", flush=True)
        lat = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import json,sys; sys.path.insert(0,{str(HERE)!r}); import bench_browser as b; "
                f"print(json.dumps(b.app_latency(__import__('pathlib').Path({str(synth_index)!r}), 5000)))",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        out["results"]["gpt2-small"] = {"build": build, "serve": json.loads(lat.stdout.strip().splitlines()[-1])}
    target = zoo_index if zoo_index.exists() else synth_index
    if target is not None:
        print(f"load: {args.clients} clients, {args.requests} requests on {target} ...", flush=True)
        where = f"`{zoo_index}` (zoo)" if target == zoo_index else "the synthetic GPT-2-small index"
        out["results"]["load"] = load_test(target, args.requests, args.clients) | {"index": where}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "browser.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "browser.md").write_text(render(out))
    print(render(out))


def render(out: dict) -> str:
    r = out["results"]
    lines = [
        "# Neuron browser: document latency, memory, loopback load test",
        "",
        f"`python benchmarks/bench_browser.py` on {out['env']['cpus']} CPUs (shared with other jobs), "
        f"Python {out['env']['python']}.",
        "",
    ]
    if "zoo" in r:
        z = r["zoo"]
        lines += [
            "## The zoo (in-process, ASGI app + SQLite index)",
            "",
            f"{z['requests']} random `GET /api/{{model}}/{{layer}}/{{neuron}}`: **p50 {z['p50_ms']:.1f} ms, "
            f"p95 {z['p95_ms']:.1f} ms** (target ≤ 50 ms), max {z['max_ms']:.1f} ms; neuron pages (HTML) p50 "
            f"{z['page_p50_ms']:.1f} ms, p95 {z['page_p95_ms']:.1f} ms; mean document {z['mean_doc_kib']:.1f} KiB; "
            f"index {z['index_mib']:.1f} MiB; process peak RSS {z['peak_rss_mib']:.0f} MiB.",
            "",
        ]
    if "gpt2-small" in r:
        b, s = r["gpt2-small"]["build"], r["gpt2-small"]["serve"]
        lines += [
            "## GPT-2-small-sized synthetic tables",
            "",
            f"{b['neurons']:,} neurons ({len(b['models'])} models × 36,864 when run with the defaults): neuron "
            "tables with the paper's columns and cross-seed partner columns, 257-bin histograms, no examples.",
            "",
            "| index build (s) | build peak RSS (MiB) | index (MiB) | doc p50 (ms) | doc p95 (ms) | "
            "serving peak RSS after 5,000 docs (MiB) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {b['index_build_s']:.1f} | {b['build_peak_rss_mib']:.0f} | {b['index_mib']:.0f} | {s['p50_ms']:.1f} | "
            f"{s['p95_ms']:.1f} | {s['peak_rss_mib']:.0f} |",
            "",
        ]
    if "load" in r:
        ld = r["load"]
        lines += [
            "## Loopback load test (uvicorn, one process)",
            "",
            f"Index: {ld['index']}. {ld['clients']} concurrent "
            f"keep-alive clients, {ld['requests']:,} requests of random neuron documents.",
            "",
            "| errors | p50 (ms) | p95 (ms) | p99 (ms) | wall (s) | requests/s | server peak RSS (MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {ld['errors']} | {ld['p50_ms']:.1f} | {ld['p95_ms']:.1f} | {ld['p99_ms']:.1f} | {ld['wall_s']:.1f} | "
            f"{ld['requests_per_s']:.0f} | {ld['server_peak_rss_mib']:.0f} |",
            "",
            "Client-side latency includes queueing: 32 clients share one server process on a 2-core machine, so p50 "
            "is about clients ÷ throughput.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
