"""Model access: resolve a model name, load it as a TransformerLens 4 ``TransformerBridge``.

Names that resolve:
- zoo models trained by ``neuron_lib.zoo`` (folders under ``$MODELS_DIR/zoo``), e.g. ``zoo-gpt2-a``;
- the paper's aliases ``stanford-gpt2-{small,medium}-{a..e}``, ``pythia-160m[-seed1..3]`` (hub ids);
- any local folder in the hub's format (``config.json`` + ``model.safetensors`` + tokenizer files);
- any other hub id ``owner/name``;
- pretrained models converted at set-up (:data:`PRETRAINED_MODELS`, e.g. ``smollm2-135m``: ``neuron_lib.smollm``);

Every loaded model exposes ``blocks.{l}.mlp.hook_pre`` / ``hook_post`` of shape [batch, pos, d_mlp]
(gated MLPs, :func:`is_gated`: ``hook_pre`` = the gate's pre-activation, ``hook_pre_linear`` = the up
projection, ``hook_post`` = act(gate) · up, all three checked);
``load_model`` checks that on a one-token forward pass before returning.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import torch

from neuron_lib import artifacts
from neuron_lib.common import NeuronLibError

_STANFORD_SMALL = ["alias", "battlestar", "caprica", "darkmatter", "expanse"]
_STANFORD_MEDIUM = ["arwen", "beren", "celebrimbor", "durin", "eowyn"]
_STANFORD_SEEDS = [21, 49, 81, 343, 777]

HUB_ALIASES: dict[str, str] = {
    **{
        f"stanford-gpt2-small-{l}": f"stanford-crfm/{n}-gpt2-small-x{s}"
        for l, n, s in zip("abcde", _STANFORD_SMALL, _STANFORD_SEEDS)
    },
    **{
        f"stanford-gpt2-medium-{l}": f"stanford-crfm/{n}-gpt2-medium-x{s}"
        for l, n, s in zip("abcde", _STANFORD_MEDIUM, _STANFORD_SEEDS)
    },
    "pythia-160m": "EleutherAI/pythia-160m",
    **{f"pythia-160m-seed{i}": f"EleutherAI/pythia-160m-seed{i}" for i in (1, 2, 3)},
    "pythia-70m": "EleutherAI/pythia-70m",
    "gpt2": "openai-community/gpt2",
}


#: pretrained models converted at set-up into ``$MODELS_DIR/pretrained/{name}`` (name -> the command that builds it)
PRETRAINED_MODELS: dict[str, str] = {"smollm2-135m": "python -m neuron_lib.smollm   (make smollm)"}
#: what every result shown on a pretrained model says about it (notebooks print it, figures/index.html shows it)
PRETRAINED_NOTES: dict[str, str] = {
    "smollm2-135m": "SmolLM2-135M-Instruct: dequantised 4-bit (Q4_1) weights of an instruction-tuned Llama model - a "
    "real trained LM, not GPT-2"
}

#: model dtypes a stage's ``--dtype`` accepts (statistics always use float32 activations and float64 sums)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    name: str  # the name the user gave (used in output paths)
    location: str  # local folder or hub id
    is_local: bool


def known_model_names() -> list[str]:
    zoo = (
        sorted(p.name for p in artifacts.zoo_root().glob("*") if (p / "config.json").exists())
        if artifacts.zoo_root().exists()
        else []
    )
    return zoo + sorted(PRETRAINED_MODELS) + sorted(HUB_ALIASES)


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def resolve_model(name: str) -> ModelSource:
    """Map a user-facing name to a local folder or a hub id, with an error that lists the options."""
    name = str(name)
    zoo_path = artifacts.zoo_model(name)
    # only bare names are zoo names: joining an absolute path onto artifacts.zoo_root() would return the path itself
    if "/" not in name and _is_model_folder(zoo_path):
        return ModelSource(name, str(zoo_path.resolve()), True)
    if name in PRETRAINED_MODELS:
        folder = artifacts.pretrained_model(name)
        if not _is_model_folder(folder):
            raise NeuronLibError(
                f"model {name!r} is not built yet (no {folder / 'config.json'}); build it with "
                f"`{PRETRAINED_MODELS[name]}`"
            )
        return ModelSource(name, str(folder.resolve()), True)
    path = Path(name).expanduser()
    if path.exists():
        if not _is_model_folder(path):
            raise NeuronLibError(
                f"{path} exists but is not a model folder in the hub's format (no config.json). "
                "Point at a folder written by `save_pretrained` (config.json, model.safetensors, tokenizer files)."
            )
        return ModelSource(path.name, str(path.resolve()), True)
    if name in HUB_ALIASES:
        return ModelSource(name, HUB_ALIASES[name], False)
    if "/" in name and not name.startswith((".", "/")):
        return ModelSource(name.split("/")[-1], name, False)
    raise NeuronLibError(
        f"unknown model {name!r}. Known names: {', '.join(known_model_names())}; "
        "or give a local folder in the hub's format, or a hub id owner/name."
    )


def model_output_name(name: str) -> str:
    """The single path component a model's outputs are filed under (summary_data/{name}, ...): its resolved
    name (zoo name, alias, a hub id's last part, a folder's name), or for a name that does not resolve, its
    last path component."""
    try:
        name = resolve_model(name).name
    except NeuronLibError:
        name = str(name)
    path = Path(name).expanduser()
    return path.name if path.name not in ("", ".", "..") else path.resolve().name


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co does not answer within ``timeout_s``."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _ensure_hub_model_available(source: ModelSource) -> None:
    """Fail within seconds (not after minutes of retries) when a hub model is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source.location, "config.json")
    if isinstance(cached, str):
        return
    if not hub_reachable():
        raise NeuronLibError(
            f"model {source.name!r} ({source.location}) is not in the local Hugging Face cache and the hub "
            "cannot be reached (offline, or HF_HUB_OFFLINE=1). Download it on a machine with network "
            f"(`huggingface-cli download {source.location} --local-dir DIR`) and pass DIR as the model name."
        )


def load_tokenizer(name: str):
    """The model's own tokenizer (HF ``PreTrainedTokenizerFast``)."""
    from transformers import AutoTokenizer

    source = resolve_model(name)
    if not source.is_local:
        _ensure_hub_model_available(source)
    try:
        return AutoTokenizer.from_pretrained(source.location)
    except Exception as exc:
        raise NeuronLibError(f"could not load a tokenizer for {name!r} from {source.location}: {exc}") from exc


def load_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, process_weights: bool = False
):
    """Load ``name`` as a TransformerBridge in eval mode.

    ``process_weights=True`` applies the paper's weight processing (LayerNorm folded, writing weights
    and unembedding centred) through TransformerLens' compatibility mode; activations are unchanged
    by it (tests/test_models.py checks this), only the weights that weight statistics read.
    """
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    source = resolve_model(name)
    if not source.is_local:
        _ensure_hub_model_available(source)
    if source.is_local:
        check_model_files(Path(source.location))
    try:
        bridge = TransformerBridge.boot_transformers(source.location, device=str(device), dtype=dtype)
    except NeuronLibError:
        raise
    except Exception as exc:
        raise NeuronLibError(
            f"could not load model {name!r} from {source.location}: {type(exc).__name__}: {exc}"
        ) from exc
    if process_weights:
        bridge.enable_compatibility_mode()
    bridge.eval()
    bridge.neuron_lib_source = source  # provenance for manifests
    bridge.neuron_lib_processed = process_weights
    check_mlp_hooks(bridge)
    return bridge


def check_model_files(folder: Path) -> None:
    """A model folder whose manifest records its file sizes (``file_sizes``: the set-up stage writes it) is checked
    against it before loading: a truncated or corrupt safetensors file is refused with the command that rebuilds it."""
    from neuron_lib.common import read_json

    manifest_file = artifacts.manifest_path(folder)
    if not manifest_file.exists():
        return
    try:
        manifest = read_json(manifest_file)
    except NeuronLibError:
        return
    sizes = manifest.get("file_sizes") if isinstance(manifest, dict) else None
    if not sizes:
        return
    rebuild = PRETRAINED_MODELS.get(str(manifest.get("model")), "the stage that wrote it") + " --overwrite"
    for fname, size in sizes.items():
        path = folder / fname
        got = path.stat().st_size if path.exists() else None
        bad = got != size
        if not bad and fname.endswith(".safetensors"):
            from safetensors import safe_open

            try:
                with safe_open(str(path), "pt") as f:
                    f.keys()
            except Exception:
                bad = True
        if bad:
            raise NeuronLibError(
                f"{path} is corrupt or truncated ({got if got is not None else 'missing'} bytes, the manifest "
                f"records {size}); rebuild it with `{rebuild}`"
            )


def is_gated(model) -> bool:
    """True for gated MLPs (Llama / SwiGLU): hook_pre = gate pre-activation, hook_pre_linear = up projection,
    hook_post = act(gate) · up."""
    return bool(getattr(model.cfg, "gated_mlp", False))


def mlp_hook_names(model, layer: int) -> tuple[str, str]:
    return f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post"


def check_mlp_hooks(model) -> None:
    """Assert the TransformerLens hook contract: hook_pre/hook_post (and hook_pre_linear of a gated MLP) of every
    layer are [batch, pos, d_mlp]."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    names = [n for layer in range(n_layers) for n in mlp_hook_names(model, layer)]
    if is_gated(model):
        names += [f"blocks.{layer}.mlp.hook_pre_linear" for layer in range(n_layers)]
    missing = [n for n in names if n not in model.hook_dict]
    if missing:
        raise NeuronLibError(f"model {model.cfg.model_name} lacks MLP hooks {missing[:4]}: unsupported architecture")
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        _, cache = model.run_with_cache(probe, names_filter=names, stop_at_layer=n_layers)
    for n in names:
        if tuple(cache[n].shape) != (1, 2, d_mlp):
            raise NeuronLibError(
                f"hook {n} has shape {tuple(cache[n].shape)}, expected [batch, pos, d_mlp=(1, 2, {d_mlp})]"
            )


def model_info(model) -> dict:
    """What manifests record about a model."""
    cfg = model.cfg
    source = getattr(model, "neuron_lib_source", None)
    return {
        "model": source.name if source else cfg.model_name,
        "model_location": source.location if source else None,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "act_fn": cfg.act_fn,
        **({"gated_mlp": True} if is_gated(model) else {}),
        "weights_processed": bool(getattr(model, "neuron_lib_processed", False)),
    }
