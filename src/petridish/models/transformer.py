"""A GPT-2-shaped decoder-only transformer with a named hook point at every activation site.

Pre-LayerNorm, learned positions, fused QKV, tanh-GELU and untied embeddings: the same parameters as
Hugging Face's GPT-2 (with `tie_word_embeddings=False`), so an organism exports without conversion.
Hook names follow TransformerLens: `blocks.{i}.hook_resid_pre`, `.hook_attn_out`, `.hook_resid_mid`,
`.hook_mlp_out`, `.hook_resid_post`; plus `hook_embed` and `hook_pos_embed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class HookPoint(nn.Identity):
    """An identity module marking an activation site; capture it with a forward hook."""


@dataclass(frozen=True)
class TransformerShape:
    vocab_size: int
    n_ctx: int
    d_model: int
    n_layers: int
    n_heads: int
    d_mlp: int


class Attention(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.n_heads = shape.n_heads
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model)  # fused: one matmul instead of three
        self.out = nn.Linear(shape.d_model, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hd = C // self.n_heads
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        # Written out rather than F.scaled_dot_product_attention: vmap (the ensemble engine) has no
        # batching rule for SDPA's CPU kernel and would loop over members; at petridish's context
        # lengths (T <= 64) the explicit form is as fast (bench/BENCHMARKS.md).
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, H, T, T)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (B, H, T, hd)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.fc = nn.Linear(shape.d_model, shape.d_mlp)
        self.proj = nn.Linear(shape.d_mlp, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(shape.d_model), Attention(shape)
        self.ln2, self.mlp = nn.LayerNorm(shape.d_model), MLP(shape)
        self.hook_resid_pre, self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x))))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class Transformer(nn.Module):
    """tokens (B, T) -> logits (B, T, vocab): position t predicts token t + 1."""

    batchable = True
    """Pure tensor code: the training engine vmaps K of these over their stacked parameters."""

    def __init__(self, shape: TransformerShape, generator: torch.Generator):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.pos_embed = nn.Embedding(shape.n_ctx, shape.d_model)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layers))
        self.ln_final = nn.LayerNorm(shape.d_model)
        self.unembed = nn.Linear(shape.d_model, shape.vocab_size)
        self._init(generator)

    def _init(self, generator: torch.Generator) -> None:
        # GPT-2 init; residual projections scaled by 1/sqrt(2 n_layers) so the stream's variance stays put.
        residual_std = 0.02 / math.sqrt(2 * self.shape.n_layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p) if name.endswith("ln1.weight") or name.endswith(
                    "ln2.weight"
                ) or name == "ln_final.weight" else nn.init.zeros_(p)
            else:
                std = residual_std if name.endswith(("attn.out.weight", "mlp.proj.weight")) else 0.02
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=generator) * std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        positions = torch.arange(T, device=tokens.device)
        x = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))  # (B, T, V)

    def hook_names(self) -> list[str]:
        return [name for name, m in self.named_modules() if isinstance(m, HookPoint)]
