"""The seed zoo: GPT-2-architecture causal LMs that differ only in their seed.

Like the ``stanford-crfm`` GPT-2 seeds, every zoo model shares architecture, data and schedule;
the seed sets both the initialisation and the data order. Models are saved in the hub's format
(``config.json``, ``model.safetensors``, tokenizer files) so ``neuron_lib.models`` loads them
exactly like a downloaded checkpoint, plus a provenance ``manifest.json`` and ``loss_curve.csv``.

Training is resumable: every ``checkpoint_every`` steps the model, AdamW state and loss curve are
written atomically to ``{model}/checkpoint/``; a killed run continues from there, bit-identically,
because the data order is a pure function of (seed, step).

    python -m neuron_lib.zoo train                 # the default zoo (five seeds, CPU-sized)
    python -m neuron_lib.zoo train --preset gpu    # a bigger configuration for a GPU
    python -m neuron_lib.zoo report                # held-out loss of each model vs unigram entropy
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from neuron_lib import artifacts, stage
from neuron_lib.common import (
    NeuronLibError,
    add_config_arguments,
    atomic_write_json,
    atomic_write_text,
    config_field,
    config_overrides,
    load_tensors,
    make_manifest,
    read_json,
    read_manifest,
    run_cli,
    save_tensors_atomic,
    write_manifest,
)

STANFORD_SEEDS = (21, 49, 81, 343, 777)
PRECISIONS = ("fp32", "bf16-autocast")
ADAMW_IMPLS = ("default", "foreach", "fused")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass
class ZooConfig:
    """One place for the zoo's architecture and training budget (see docs/zoo.md for why these values)."""

    name_prefix: str = config_field("zoo-gpt2", "model names are PREFIX-a, PREFIX-b, ... (one letter per seed)")
    seeds: tuple[int, ...] = config_field(STANFORD_SEEDS, "one model per seed (the stanford-crfm seeds)")
    # architecture (HF GPT2LMHeadModel: learned positions, LayerNorm, gelu_new, tied embeddings)
    n_layer: int = config_field(2, "transformer blocks")
    d_model: int = config_field(128, "residual stream width")
    n_head: int = config_field(4, "attention heads (must divide d_model)")
    d_mlp: int = config_field(512, "MLP neurons per layer")
    # data: token datasets from `python -m neuron_lib.corpus build`; empty = the embedded default
    train_dataset: str = config_field("", "training token dataset folder; empty = the embedded default's train split")
    analysis_dataset: str = config_field(
        "", "held-out token dataset folder; empty = the embedded default's analysis split"
    )
    # optimisation
    batch_size: int = config_field(32, "sequences per step")
    max_steps: int = config_field(600, "optimizer steps")
    lr: float = config_field(2e-3, "peak AdamW learning rate")
    min_lr_frac: float = config_field(0.1, "cosine decay ends at lr x this")
    warmup_steps: int = config_field(50, "linear warm-up steps")
    weight_decay: float = config_field(0.1, "AdamW weight decay")
    beta2: float = config_field(0.95, "AdamW beta2")
    grad_clip: float = config_field(1.0, "gradient-norm clip")
    dropout: float = config_field(0.0, "dropout everywhere")
    # numerics of the training step (both change the trained weights, so both are part of a model's identity)
    precision: str = config_field(
        "fp32", "fp32 | bf16-autocast (forward in torch.autocast bfloat16; weights, optimizer and loss stay fp32)"
    )
    adamw_impl: str = config_field(
        "default", "AdamW implementation: default (torch's choice) | foreach | fused (same algorithm, other kernels)"
    )
    # bookkeeping
    eval_rows: int = config_field(256, "held-out rows for the loss curve and the final held-out loss")
    eval_every: int = config_field(300, "steps between held-out evaluations")
    checkpoint_every: int = config_field(100, "steps between resumable checkpoints")
    snapshot_steps: tuple[int, ...] = config_field(
        (), "also save hub-format copies at these steps (training-length studies)"
    )
    untrained_controls: int = config_field(
        0, "also save this many freshly initialised (untrained) models of this configuration (negative controls)"
    )
    device: str = config_field("auto", "auto | cpu | cuda[:i]")
    jobs: int = config_field(1, "models trained concurrently (each with cores/jobs threads)")

    def validate(self) -> ZooConfig:
        if self.d_model % self.n_head:
            raise NeuronLibError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise NeuronLibError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if len(self.seeds) > len(LETTERS):
            raise NeuronLibError("at most 26 seeds")
        for field in ("batch_size", "max_steps", "eval_rows", "checkpoint_every", "jobs"):
            if getattr(self, field) <= 0:
                raise NeuronLibError(f"{field} must be positive")
        if not 0 < self.lr < 1:
            raise NeuronLibError(f"lr={self.lr} is out of range")
        if self.precision not in PRECISIONS:
            raise NeuronLibError(f"precision={self.precision!r}; choose from {sorted(PRECISIONS)}")
        if self.adamw_impl not in ADAMW_IMPLS:
            raise NeuronLibError(f"adamw_impl={self.adamw_impl!r}; choose from {sorted(ADAMW_IMPLS)}")
        return self

    def model_names(self) -> list[str]:
        return [f"{self.name_prefix}-{LETTERS[i]}" for i in range(len(self.seeds))]

    def resolved_datasets(self) -> tuple[Path, Path]:
        from neuron_lib.corpus import CorpusConfig

        ctx = CorpusConfig().ctx_len
        train = Path(self.train_dataset) if self.train_dataset else artifacts.embedded_dataset("train", ctx)
        analysis = Path(self.analysis_dataset) if self.analysis_dataset else artifacts.embedded_dataset("analysis", ctx)
        return train, analysis


PRESETS: dict[str, dict] = {
    # snapshots and untrained models are the universality criteria's training-length and untrained controls
    "default": dict(snapshot_steps=(150, 300), untrained_controls=4),
    # the default before the 45-minute bound: twice the tokens (4.88M a model), ~29 min of training on 2 cores;
    # the universality findings of docs/zoo.md's "long" rows (`make all ZOO_PRESET=long`)
    "long": dict(max_steps=1200, snapshot_steps=(300, 600), untrained_controls=4),
    # ~GPT-2-small-like width for a GPU; one flag away from the CPU default
    "gpu": dict(
        n_layer=6,
        d_model=512,
        n_head=8,
        d_mlp=2048,
        batch_size=64,
        max_steps=20000,
        lr=6e-4,
        warmup_steps=500,
        eval_every=1000,
        checkpoint_every=1000,
    ),
    # seconds on a CPU: the micro zoo that tests train once per session
    "micro": dict(
        n_layer=2,
        d_model=32,
        n_head=2,
        d_mlp=64,
        batch_size=8,
        max_steps=40,
        lr=3e-3,
        warmup_steps=5,
        eval_rows=16,
        eval_every=20,
        checkpoint_every=10,
    ),
}


def make_config(preset: str = "default", **overrides) -> ZooConfig:
    if preset not in PRESETS:
        raise NeuronLibError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return ZooConfig(**{**PRESETS[preset], **overrides}).validate()


# ---------------------------------------------------------------- pieces of one training run
def build_model(cfg: ZooConfig, vocab_size: int, ctx_len: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=ctx_len,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.d_mlp,
        activation_function="gelu_new",
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)  # the seed alone decides the initialisation
    return GPT2LMHeadModel(config)


def learning_rate(cfg: ZooConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr_frac·lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_rows(seed: int, step: int, batch_size: int, n_rows: int) -> torch.Tensor:
    """Rows of the training set used at ``step``: a seeded permutation per epoch, so data order is
    a pure function of (seed, step) and a resumed run sees exactly the batches it would have."""
    first = step * batch_size
    idx = torch.arange(first, first + batch_size)
    epochs, positions = idx // n_rows, idx % n_rows
    rows = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        mask = epochs == epoch
        rows[mask] = perm[positions[mask]]
    return rows


@torch.no_grad()
def held_out_loss(model, tokens: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats) over all predicted positions of ``tokens``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size].to(device)
        logits = model(batch).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += batch[:, 1:].numel()
    model.train()
    return total / count


def _optimizer(model, cfg: ZooConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.adamw_impl]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, cfg.beta2),
        eps=1e-8,
        **impl,
    )


def train_step(model, optimizer, batch: torch.Tensor, cfg: ZooConfig, step: int) -> torch.Tensor:
    """One optimizer step on ``batch`` (rows of token ids) at schedule position ``step``; returns the loss.

    ``cfg.precision == "bf16-autocast"`` runs the forward pass under ``torch.autocast`` in bfloat16
    (matmuls in bf16, weights and AdamW state in fp32); the loss is always computed in fp32.
    """
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, step)
    if cfg.precision == "bf16-autocast":
        with torch.autocast(batch.device.type, dtype=torch.bfloat16):
            logits = model(batch).logits[:, :-1]
    else:
        logits = model(batch).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss


def _save_checkpoint(ckpt_dir: Path, model, optimizer, step: int, curve: list[dict], seconds: float) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                state[f"{names[id(p)]}::exp_avg"] = st["exp_avg"]
                state[f"{names[id(p)]}::exp_avg_sq"] = st["exp_avg_sq"]
                state[f"{names[id(p)]}::step"] = st["step"].reshape(1).float()
    # tied weights: safetensors refuses shared storage, so save the state dict without the tied alias
    model_state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_tensors_atomic(ckpt_dir / "model.safetensors", model_state)
    save_tensors_atomic(ckpt_dir / "optimizer.safetensors", state)
    # progress.json is written last: it is what marks the checkpoint as complete
    atomic_write_json(ckpt_dir / "progress.json", {"step": step, "curve": curve, "train_seconds": seconds})


def _load_checkpoint(ckpt_dir: Path, model, optimizer):
    progress = read_json(ckpt_dir / "progress.json")
    model.load_state_dict(load_tensors(ckpt_dir / "model.safetensors"), strict=False)
    model.tie_weights()
    opt_state = load_tensors(ckpt_dir / "optimizer.safetensors")
    params = dict(model.named_parameters())
    for name, p in params.items():
        if f"{name}::exp_avg" in opt_state:
            optimizer.state[p] = {
                "exp_avg": opt_state[f"{name}::exp_avg"],
                "exp_avg_sq": opt_state[f"{name}::exp_avg_sq"],
                "step": opt_state[f"{name}::step"].reshape(()),
            }
    return progress


def _save_snapshot(path: Path, model, tokenizer, loss: float, tokens: int) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    atomic_write_json(path / "snapshot.json", {"held_out_loss": loss, "tokens_seen": tokens})


def _config_record(cfg: ZooConfig, seed: int, train_manifest: dict) -> dict:
    arch = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k
        not in (
            "seeds",
            "device",
            "jobs",
            "name_prefix",
            "snapshot_steps",
            "untrained_controls",
            "eval_every",
            "checkpoint_every",
        )
    }
    # the training-step numerics join the record only when they differ from what every zoo before these
    # fields used (fp32, torch's default AdamW), so that such zoos stay finished and are not retrained
    for field, original in (("precision", "fp32"), ("adamw_impl", "default")):
        if arch[field] == original:
            del arch[field]
    return {
        "seed": seed,
        "train": arch,
        "train_dataset_fingerprint": train_manifest.get("tokenizer_fingerprint"),
        "train_dataset_tokens": train_manifest.get("n_tokens"),
    }


def model_is_finished(out_dir: Path, record: dict) -> bool:
    manifest_path = artifacts.manifest_path(out_dir)
    if not manifest_path.exists() or not (out_dir / artifacts.ZOO_WEIGHTS_FILE).exists():
        return False
    manifest = read_json(manifest_path)
    return manifest.get("record") == record


def train_one(cfg: ZooConfig, index: int, show_progress: bool = True) -> dict:
    """Train (or resume, or skip if finished) the zoo model number ``index``; returns its manifest.

    Fault injection for tests: with ``NEURON_LIB_KILL_AFTER_CHECKPOINT=N`` in the environment the
    process SIGKILLs itself right after writing the checkpoint of step N, like a preempted job.
    """
    from neuron_lib.corpus import load_token_dataset

    seed, name = cfg.seeds[index], cfg.model_names()[index]
    out_dir = artifacts.zoo_model(name)
    train_path, analysis_path = cfg.resolved_datasets()
    train_ds, train_manifest = load_token_dataset(train_path)
    analysis_ds, analysis_manifest = load_token_dataset(analysis_path)
    if train_manifest.get("tokenizer_fingerprint") != analysis_manifest.get("tokenizer_fingerprint"):
        raise NeuronLibError(
            f"{train_path} and {analysis_path} were tokenized with different tokenizers; rebuild the corpus"
        )
    record = _config_record(cfg, seed, train_manifest)
    if model_is_finished(out_dir, record):
        return read_json(artifacts.manifest_path(out_dir))

    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    train_tokens: torch.Tensor = train_ds[:]["tokens"]
    eval_tokens: torch.Tensor = analysis_ds[: min(cfg.eval_rows, len(analysis_ds))]["tokens"]
    n_rows, ctx_len = train_tokens.shape
    tokenizer_dir = Path(train_manifest.get("tokenizer_dir") or artifacts.tokenizer_dir())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(cfg, len(tokenizer), ctx_len, seed).to(device)
    model.config.bos_token_id = model.config.eos_token_id = tokenizer.bos_token_id
    optimizer = _optimizer(model, cfg)

    ckpt_dir = artifacts.zoo_checkpoint(name)
    start_step, curve, seconds = 0, [], 0.0
    if (ckpt_dir / "progress.json").exists():
        ckpt_record = read_json(ckpt_dir / "record.json") if (ckpt_dir / "record.json").exists() else None
        if ckpt_record == record:
            progress = _load_checkpoint(ckpt_dir, model, optimizer)
            start_step, curve, seconds = progress["step"], progress["curve"], progress["train_seconds"]
            stage.log("zoo", f"resuming {name} from its checkpoint at step {start_step}")
        else:
            shutil.rmtree(ckpt_dir)  # a checkpoint of another configuration cannot be resumed
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(ckpt_dir / "record.json", record)

    model.train()
    tokens_per_step = cfg.batch_size * (ctx_len - 1)
    bar = tqdm(
        total=cfg.max_steps,
        initial=start_step,
        desc=name,
        unit="step",
        disable=not show_progress,
        position=index if cfg.jobs > 1 else None,
        leave=True,
    )
    t0 = time.time()
    for step in range(start_step, cfg.max_steps):
        batch = train_tokens[batch_rows(seed, step, cfg.batch_size, n_rows)].to(device)
        loss = train_step(model, optimizer, batch, cfg, step)
        done = step + 1
        point = {"step": done, "tokens": done * tokens_per_step, "train_loss": loss.item()}
        if done % cfg.eval_every == 0 or done == cfg.max_steps:
            point["held_out_loss"] = held_out_loss(model, eval_tokens, cfg.batch_size, device)
        curve.append(point)
        elapsed = seconds + time.time() - t0
        bar.set_postfix(
            loss=f"{loss.item():.3f}",
            tok_s=f"{(done - start_step) * tokens_per_step / max(1e-9, time.time() - t0):,.0f}",
        )
        bar.update(1)
        if done in cfg.snapshot_steps and done < cfg.max_steps:
            _save_snapshot(
                artifacts.zoo_snapshot(name, done),
                model,
                tokenizer,
                held_out_loss(model, eval_tokens, cfg.batch_size, device),
                done * tokens_per_step,
            )
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            _save_checkpoint(ckpt_dir, model, optimizer, done, curve, elapsed)
            if os.environ.get("NEURON_LIB_KILL_AFTER_CHECKPOINT") == str(done):
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    seconds += time.time() - t0

    final_loss = curve[-1]["held_out_loss"]
    model.save_pretrained(out_dir)  # config.json + model.safetensors, the hub's format
    tokenizer.save_pretrained(out_dir)
    atomic_write_text(
        out_dir / artifacts.ZOO_LOSS_CURVE_FILE,
        "step,tokens,train_loss,held_out_loss\n"
        + "".join(f"{p['step']},{p['tokens']},{p['train_loss']:.5f},{p.get('held_out_loss', '')}\n" for p in curve),
    )
    manifest = make_manifest(
        "zoo",
        cfg,
        model=name,
        seed=seed,
        record=record,
        steps=cfg.max_steps,
        tokens_seen=cfg.max_steps * tokens_per_step,
        n_params=sum(p.numel() for p in model.parameters()),
        held_out_loss=final_loss,
        held_out_tokens=int(eval_tokens[:, 1:].numel()),
        train_seconds=seconds,
        device=str(device),
        train_dataset=str(train_path),
        analysis_dataset=str(analysis_path),
        tokenizer_fingerprint=train_manifest.get("tokenizer_fingerprint"),
    )
    write_manifest(out_dir, manifest)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return manifest


def _train_worker(args):
    cfg, index, threads = args
    torch.set_num_threads(threads)
    return train_one(cfg, index)


def train_zoo(cfg: ZooConfig, only: list[str] | None = None) -> list[dict]:
    """Train every zoo model (skipping finished ones); ``jobs`` > 1 trains several at once."""
    cfg.validate()
    names = cfg.model_names()
    indices = [i for i, n in enumerate(names) if not only or n in only or n[-1] in only]
    train_path, _ = cfg.resolved_datasets()
    if not (Path(train_path) / "manifest.json").exists():
        raise NeuronLibError(f"no training dataset at {train_path}. Run `python -m neuron_lib.corpus build` first.")
    print(
        f"zoo plan: {len(indices)} models {[names[i] for i in indices]}, {cfg.n_layer} layers, d_model {cfg.d_model}, "
        f"d_mlp {cfg.d_mlp}, {cfg.max_steps} steps x {cfg.batch_size} rows, jobs={cfg.jobs}"
    )
    if cfg.jobs == 1:
        manifests = [train_one(cfg, i) for i in indices]
    else:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
        with mp.get_context("spawn").Pool(cfg.jobs) as pool:
            manifests = pool.map(_train_worker, [(cfg, i, threads) for i in indices])
    save_untrained_controls(cfg)
    return manifests


UNTRAINED_SEED_BASE = 1_000_000  # untrained control k is initialised with seed UNTRAINED_SEED_BASE + k


def untrained_control_paths(cfg: ZooConfig) -> list[Path]:
    return [artifacts.zoo_untrained(cfg.name_prefix, k) for k in range(cfg.untrained_controls)]


def save_untrained_controls(cfg: ZooConfig) -> list[Path]:
    """Freshly initialised models of the zoo's configuration, in the hub's format (seconds: no training)."""
    from transformers import AutoTokenizer

    from neuron_lib.corpus import load_token_dataset

    paths = untrained_control_paths(cfg)
    if not paths:
        return []
    train_path, _ = cfg.resolved_datasets()
    train_ds, train_manifest = load_token_dataset(train_path)
    tokenizer = AutoTokenizer.from_pretrained(Path(train_manifest.get("tokenizer_dir") or artifacts.tokenizer_dir()))
    ctx_len = len(train_ds[0]["tokens"])
    for k, path in enumerate(paths):
        seed = UNTRAINED_SEED_BASE + k
        record = {"seed": seed, "untrained": _config_record(cfg, seed, train_manifest)["train"]}
        manifest_path = artifacts.manifest_path(path)
        if manifest_path.exists() and read_json(manifest_path).get("record") == record:
            continue
        model = build_model(cfg, len(tokenizer), ctx_len, seed)
        model.config.bos_token_id = model.config.eos_token_id = tokenizer.bos_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        write_manifest(path, make_manifest("zoo.untrained", cfg, model=path.name, seed=seed, record=record, steps=0))
    stage.log("zoo", f"{len(paths)} untrained control model(s) of this configuration under {paths[0].parent}")
    return paths


def zoo_report(cfg: ZooConfig, only: list[str] | None = None) -> str:
    """Held-out loss of each model next to the unigram entropy of the corpus.

    ``only`` restricts the report to some models (a Slurm array task trains one); models not trained
    yet are listed as such rather than failing the run.
    """
    train_path, analysis_path = cfg.resolved_datasets()
    analysis_manifest = read_manifest(analysis_path, "python -m neuron_lib.corpus build")
    unigram = analysis_manifest.get("unigram_entropy_nats")
    unigram_text = "n/a" if unigram is None else f"{unigram:.3f}"
    lines = [
        f"{'model':<14} {'seed':>5} {'steps':>6} {'tokens seen':>12} {'train s':>8} {'held-out loss':>14} {'unigram entropy':>16}"
    ]
    for seed, name in zip(cfg.seeds, cfg.model_names()):
        if only and name not in only and name[-1] not in only:
            continue
        path = artifacts.zoo_model(name)
        if not (path / "manifest.json").exists():
            lines.append(f"{name:<14} {seed:>5}   (not trained yet: python -m neuron_lib.zoo train --models {name})")
            continue
        m = read_json(path / "manifest.json")
        lines.append(
            f"{name:<14} {m['seed']:>5} {m['steps']:>6} {m['tokens_seen']:>12,} {m['train_seconds']:>8.0f} "
            f"{m['held_out_loss']:>14.3f} {unigram_text:>16}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuron_lib.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command", choices=["train", "report"], help="train (resumable; finished models are skipped) or report"
    )
    parser.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="start from this preset (default: default); the options below override its fields",
    )
    parser.add_argument("--models", default="", help="comma-separated subset of model names or letters")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="what `make all OVERWRITE=zoo` passes; changes nothing: a model of another configuration is always "
        "retrained (only a finished model of this configuration is skipped)",
    )
    add_config_arguments(parser, ZooConfig, overrides_only=True)
    args = parser.parse_args(argv)
    overrides = config_overrides(ZooConfig, args)
    cfg = make_config(args.preset, **overrides)
    only = [m for m in args.models.split(",") if m] or None
    if args.command == "train":
        train_zoo(cfg, only)
    print(zoo_report(cfg, only))


if __name__ == "__main__":
    run_cli(main)
