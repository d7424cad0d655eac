"""Models: the hooked transformer, the prompt MLP, and construction from a ModelConfig."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

from petridish.config import ModelConfig
from petridish.errors import BadInput
from petridish.models.mlp import PromptMLP
from petridish.models.transformer import HookPoint, Transformer, TransformerShape
from petridish.scenarios import Scenario
from petridish.scenarios.base import ASSISTANT


def make_model(config: ModelConfig, scenario: Scenario, generator: torch.Generator) -> torch.nn.Module:
    if config.hf_path is not None:
        from petridish.models.hf import load_organism  # imported here: transformers takes seconds to import

        return load_organism(config, scenario, generator)
    d_model, n_layers, n_heads = config.shape()
    if config.kind == "mlp":
        return PromptMLP(
            len(scenario.vocab),
            scenario.max_prompt_len,
            scenario.max_response_len,
            d_model * config.mlp_ratio,
            n_layers,
            generator,
            scenario.vocab.index[ASSISTANT],
        )
    n_ctx = scenario.max_prompt_len + scenario.max_response_len
    shape = TransformerShape(len(scenario.vocab), n_ctx, d_model, n_layers, n_heads, d_model * config.mlp_ratio)
    return Transformer(shape, generator)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_weights(model: torch.nn.Module, path) -> None:
    # clone: safetensors refuses tensors that share memory (a Hugging Face model's tied embeddings)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))


def load_weights(model: torch.nn.Module, path) -> None:
    """Load safetensors weights into `model`; anything else (a pickle, a truncated file) is refused."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise BadInput(f"{path}: weights file not found") from None
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise BadInput(f"{path}: not a valid safetensors file ({error})") from None
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise BadInput(f"{path}: weights do not fit this model (missing {sorted(missing)[0]})")
    model.load_state_dict(state)


__all__ = [
    "HookPoint",
    "PromptMLP",
    "Transformer",
    "TransformerShape",
    "make_model",
    "n_params",
    "save_weights",
    "load_weights",
]
