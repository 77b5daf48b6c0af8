"""A model on its own as a folder: `config.json` (the TransformerConfig) beside `model.safetensors`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from blocks.config import TransformerConfig
from blocks.interop import load_state_dict
from blocks.transformer import Transformer
from blocks.weights import atomic_write_bytes, load_tensors, read_json, save_tensors

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: Transformer, directory: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` into `directory`; return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), directory / WEIGHTS)
    atomic_write_bytes(directory / CONFIG, json.dumps(model.cfg.to_dict(), indent=2).encode())
    return directory


def load_config(path: str | Path) -> TransformerConfig:
    data = read_json(path, "config")
    return TransformerConfig.from_dict(data.get("model", data))


def load_model(directory: str | Path, device: torch.device | str = "cpu") -> Transformer:
    """Build the model from `config.json` and load `model.safetensors`, checking every key and shape."""
    directory = Path(directory)
    model = Transformer(load_config(directory / CONFIG))
    load_state_dict(model, load_tensors(directory / WEIGHTS), source=str(directory / WEIGHTS))
    return model.to(device)
