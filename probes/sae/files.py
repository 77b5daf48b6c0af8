"""An SAE on disk as SAELens lays it out: `cfg.json` and `sae_weights.safetensors`, nothing pickled.

The weights are `W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`, and for a
JumpReLU `threshold [d_sae]`. cfg.json holds SAELens's fields (`architecture` "standard",
"topk", "jumprelu" or "transcoder", `d_in`, `d_sae`, `k`, `meta.hook_name`, ...), the older
top-level names (`hook_name`, `activation_fn_str`) that earlier SAELens versions read, and a
`sandbox` section with what SAELens has no field for (the kind, the run and checkpoint step
it was trained on, its training settings). A BatchTopK SAE is saved as the JumpReLU it is at
inference, one threshold for every feature, which is how SAELens saves one too.

SAEs of a run live in `runs/NAME/saes/<sae name>/`, beside the run's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from blocks.weights import atomic_write_bytes, load_tensors, read_json, save_tensors
from probes.sae.sae import SAEConfig, SparseAutoencoder

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SAES = "saes"  # the folder of a run's SAEs
_ARCHITECTURE = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}


def sae_dir(run_path: str | Path, name: str) -> Path:
    """Where the run's SAE called `name` lives."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"an SAE name is one plain folder name, got {name!r}")
    return Path(run_path) / SAES / name


def list_saes(run_path: str | Path) -> list[str]:
    """Names of the run's saved SAEs (folders holding a cfg.json), sorted."""
    folder = Path(run_path) / SAES
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / CFG).is_file() and (p / WEIGHTS).is_file())


def _layer(hook_name: str) -> int | None:
    parts = hook_name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None


def saelens_config(sae: SparseAutoencoder, sandbox: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cfg.json of `sae`: SAELens's fields, older SAELens's names, and the sandbox's own."""
    cfg = sae.cfg
    architecture = "transcoder" if cfg.is_transcoder else _ARCHITECTURE[cfg.kind]
    meta = {
        "model_name": (sandbox or {}).get("run"),
        "hook_name": cfg.hook_name,
        "hook_layer": _layer(cfg.hook_name),
        "hook_head_index": None,
        "prepend_bos": True,
        "context_size": (sandbox or {}).get("n_ctx"),
        "dataset_path": (sandbox or {}).get("task"),
    }
    if cfg.is_transcoder:
        meta["hook_name_out"] = cfg.hook_name_out
    out: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if cfg.hook_name.endswith("attn.hook_z") else "none",
        "meta": meta,
        # the names SAELens read before version 6
        "hook_name": cfg.hook_name,
        "hook_layer": meta["hook_layer"],
        "activation_fn_str": "topk" if cfg.kind == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if cfg.kind == "topk" else {},
        "sandbox": {"config": cfg.to_dict(), **(sandbox or {})},
    }
    if cfg.kind == "topk":
        out["k"] = cfg.k
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
        out["hook_name_out"] = cfg.hook_name_out
    return out


def save_sae(sae: SparseAutoencoder, directory: str | Path, sandbox: dict[str, Any] | None = None) -> Path:
    """Write cfg.json and sae_weights.safetensors into `directory`; return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: sae.state_dict()[name].detach().float().cpu() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    threshold = sae.jump_threshold
    if threshold is not None:
        tensors["threshold"] = threshold.detach().float().cpu().clone()
    save_tensors(tensors, directory / WEIGHTS)
    atomic_write_bytes(directory / CFG, json.dumps(saelens_config(sae, sandbox), indent=2).encode())
    return directory


def load_sae(directory: str | Path) -> tuple[SparseAutoencoder, dict[str, Any]]:
    """(the SAE, its cfg.json) from a folder in SAELens's layout; our own files and SAELens's alike."""
    directory = Path(directory)
    data = read_json(directory / CFG, "SAE config")
    if not isinstance(data, dict):
        raise ValueError(f"{directory / CFG} must hold a JSON object")
    tensors = load_tensors(directory / WEIGHTS)
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(tensors)
    if missing:
        raise ValueError(f"{directory / WEIGHTS} lacks {sorted(missing)}; an SAE needs W_enc, b_enc, W_dec, b_dec")
    cfg = _config_of(data, directory)
    sae = SparseAutoencoder(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            want = tuple(getattr(sae, name).shape)
            if tuple(tensors[name].shape) != want:
                raise ValueError(
                    f"{directory / WEIGHTS}: {name} is {tuple(tensors[name].shape)} but cfg.json says {want}"
                )
            getattr(sae, name).copy_(tensors[name])
        if cfg.kind in ("jumprelu", "batchtopk"):
            if "threshold" not in tensors:
                raise ValueError(f"{directory / WEIGHTS} is a JumpReLU SAE's but holds no threshold")
            if cfg.kind == "jumprelu":
                sae.log_threshold.copy_(tensors["threshold"].clamp(min=1e-12).log())
            else:
                sae.threshold.copy_(tensors["threshold"].max())
    return sae.eval(), data


def _config_of(data: dict[str, Any], directory: Path) -> SAEConfig:
    ours = data.get("sandbox", {}).get("config") if isinstance(data.get("sandbox"), dict) else None
    if ours is not None:
        return SAEConfig.from_dict(ours)
    architecture = data.get("architecture", "standard")
    kinds = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if architecture not in kinds:
        raise ValueError(
            f"{directory / CFG}: architecture {architecture!r} is not one this sandbox runs; it runs {sorted(kinds)}"
        )
    meta = data.get("meta") or data.get("metadata") or {}
    hook = meta.get("hook_name") or data.get("hook_name") or ""
    k = data.get("k") or (data.get("activation_fn_kwargs") or {}).get("k") or 1
    for field in ("d_in", "d_sae"):
        if not isinstance(data.get(field), int):
            raise ValueError(f"{directory / CFG} lacks an integer {field!r}")
    return SAEConfig(d_in=data["d_in"], width=data["d_sae"], kind=kinds[architecture], k=int(k), hook_name=hook)
