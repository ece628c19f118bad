"""FiT and FiTv2: flexible-resolution diffusion transformers.

Module and parameter names follow the official implementation exactly, so released state dicts load with
``strict=True``. Differences that do not change any number:
  * RoPE frequencies are computed by :mod:`engines.rope` once per settings and device (no tensor-keyed caches;
    online RoPE looks each sample's up on the device, with no copy to the host), and the tables may be passed in
    directly (``rope_cos``/``rope_sin``), which is what the ONNX export feeds;
  * no timm/einops/triton dependency.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from engines.rope import assemble_tables, grid_frequencies
from fit.config import FiTConfig
from fit.flow import guide


#################################################################################
#                              Norms, MLPs, helpers                             #
#################################################################################

class RMSNorm(nn.Module):
    def __init__(self, dim: int, include_weight: bool = True, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if include_weight else None

    def forward(self, x):
        out = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight if self.weight is not None else out


def create_norm(norm_type: Optional[str], dim: int, eps: float = 1e-6) -> nn.Module:
    """The official norm names: layernorm (no affine), w_layernorm (weight only), rmsnorm, w_rmsnorm, none."""
    if not norm_type or norm_type.lower() == "none":
        return nn.Identity()
    kind = norm_type.lower()
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=False, bias=False)
    if kind == "w_layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=False)
    if kind == "rmsnorm":
        return RMSNorm(dim, include_weight=False, eps=eps)
    if kind == "w_rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm type {norm_type!r}")


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2 (FiT v1 when SwiGLU is off)."""

    def __init__(self, in_features, hidden_features, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """fc2(silu(fc1_g(x)) * fc1_x(x))."""

    def __init__(self, in_features, hidden_features, out_features=None, bias=True):
        super().__init__()
        self.fc1_g = nn.Linear(in_features, hidden_features, bias=bias)
        self.fc1_x = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1_g(x)) * self.fc1_x(x))


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def rotate_half(x):
    """Rotate interleaved channel pairs: (x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(x.shape)


#################################################################################
#               Embedding Layers for Patches, Timesteps and Class Labels        #
#################################################################################

class PatchEmbedder(nn.Module):
    """Token (p*p*C) -> hidden size."""

    def __init__(self, input_dim, embed_dim, bias=True):
        super().__init__()
        self.proj = nn.Linear(input_dim, embed_dim, bias=bias)

    def forward(self, x):
        return self.proj(x)                                   # (B, N, p*p*C) -> (B, N, D)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding.to(t.dtype)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class label -> vector; label dropout (to the null class ``num_classes``) for classifier-free guidance."""

    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels, force_drop_ids=None):
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels, train, force_drop_ids=None):
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


#################################################################################
#                                  Attention                                    #
#################################################################################

class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, q_norm=None, k_norm=None, qk_norm_weight=False,
                 rel_pos_embed=None, add_rel_pe_to_v=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if qk_norm_weight:
            q_norm = "w_layernorm" if q_norm == "layernorm" else q_norm
            k_norm = "w_layernorm" if k_norm == "layernorm" else k_norm
        self.q_norm = create_norm(q_norm, self.head_dim)
        self.k_norm = create_norm(k_norm, self.head_dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_embed = rel_pos_embed.lower() if rel_pos_embed else None
        self.add_rel_pe_to_v = add_rel_pe_to_v

    def forward(self, x, mask, freqs_cos, freqs_sin):
        """x: (B, N, D); mask: (B, N), 1 = token; freqs_*: (B, 1, N, head_dim)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                       # (B, H, N, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rel_pos_embed in ("rope", "xpos"):
            if self.add_rel_pe_to_v:
                v = v * freqs_cos + rotate_half(v) * freqs_sin
            q = q * freqs_cos + rotate_half(q) * freqs_sin
            k = k * freqs_cos + rotate_half(k) * freqs_sin
        # Tokens attend to tokens of their own kind: real to real, padding to padding. Padding rows thus
        # never see an all-masked row (no NaN), and real tokens never see padding.
        keep = mask[:, None, None, :]                                 # (B, 1, 1, N)
        attn_mask = keep == keep.transpose(-2, -1)                    # (B, 1, N, N)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.transpose(1, 2).reshape(B, N, C)
        x = x * (mask != 0).to(x.dtype)[..., None]
        return self.proj(x)


#################################################################################
#                                 Core FiT Model                                #
#################################################################################

def _adaln(kind, hidden_size, n_out, lora_dim, bias):
    if kind == "normal":
        return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, n_out * hidden_size, bias=bias))
    if kind == "lora":
        return nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, lora_dim, bias=bias),
                             nn.Linear(lora_dim, n_out * hidden_size, bias=bias))
    return SwiGLU(hidden_size, (hidden_size // 4) * 3, n_out * hidden_size, bias=bias)


class FiTBlock(nn.Module):
    """Pre-norm transformer block with adaLN-Zero modulation (plain, LoRA or SwiGLU conditioning)."""

    def __init__(self, cfg: FiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = create_norm(cfg.norm_type, d)
        self.norm2 = create_norm(cfg.norm_type, d)
        self.attn = Attention(d, cfg.num_heads, qkv_bias=cfg.qkv_bias, q_norm=cfg.q_norm, k_norm=cfg.k_norm,
                              qk_norm_weight=cfg.qk_norm_weight, rel_pos_embed=cfg.rel_pos_embed,
                              add_rel_pe_to_v=cfg.add_rel_pe_to_v)
        mlp = SwiGLU if cfg.use_swiglu else Mlp
        self.mlp = mlp(d, cfg.mlp_hidden_size, bias=cfg.ffn_bias)
        self.adaLN_modulation = _adaln(cfg.adaln_type, d, 6, cfg.adaln_lora_dim, cfg.adaln_bias)

    def forward(self, x, c, mask, freqs_cos, freqs_sin, global_adaln=0.0):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            (self.adaLN_modulation(c) + global_adaln).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa),
                                                  mask, freqs_cos, freqs_sin)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, cfg: FiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = create_norm(cfg.norm_type, d)
        self.linear = nn.Linear(d, cfg.patch_size ** 2 * cfg.out_channels, bias=True)
        if cfg.adaln_type == "swiglu":
            self.adaLN_modulation = SwiGLU(d, d // 2, 2 * d, bias=cfg.adaln_bias)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d, bias=cfg.adaln_bias))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class FiT(nn.Module):
    """Flexible diffusion transformer over a padded sequence of patch tokens."""

    def __init__(self, config: FiTConfig):
        super().__init__()
        cfg = self.config = config
        self.patch_size = cfg.patch_size
        self.in_channels = cfg.in_channels
        self.out_channels = cfg.out_channels
        self.use_sit = cfg.use_sit
        self.learn_sigma = cfg.learn_sigma
        self.time_shifting = cfg.time_shifting
        self.online_rope = cfg.online_rope
        self.use_checkpoint = cfg.use_checkpoint
        self.num_classes = cfg.num_classes
        self.rope = cfg.rope_settings()
        self._rope_cache: dict = {}                    # RoPE frequencies per (settings, device); not in the state

        d = cfg.hidden_size
        self.x_embedder = PatchEmbedder(cfg.token_dim, d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout_prob)
        self.global_adaLN_modulation = (
            nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, bias=cfg.adaln_bias)) if cfg.adaln_type == "lora" else None)
        self.blocks = nn.ModuleList([FiTBlock(cfg) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(cfg)
        self.initialize_weights()

    def initialize_weights(self):
        """The official initialisation: xavier linears, adaLN-Zero and a zeroed output layer."""
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        last = [b.adaLN_modulation for b in self.blocks] + [self.final_layer.adaLN_modulation]
        if self.global_adaLN_modulation is not None:
            last.append(self.global_adaLN_modulation)
        for mod in last:
            out = mod.fc2 if isinstance(mod, SwiGLU) else mod[-1]
            nn.init.zeros_(out.weight)
            if out.bias is not None:
                nn.init.zeros_(out.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # ---- RoPE ---------------------------------------------------------------------------------------------
    def rope_from_grid(self, grid, size=None):
        """cos, sin (B, N, head_dim) for a (B, 2, N) grid; per-sample sizes (B, 1, 2) when online RoPE is on."""
        if self.online_rope:
            if size is None:
                raise ValueError("this model uses online RoPE: pass size (B, 1, 2) with each sample's (h, w)")
            fh, fw, scale = self._online_frequencies(size, grid.shape[-1], grid.device)
        else:
            fh, fw, scale = self._fixed_frequencies(grid.device)
        return assemble_tables(grid[:, 0].float(), grid[:, 1].float(), fh, fw, scale, xp=torch)

    def _fixed_frequencies(self, device):
        """(freqs_h (1, 1, F), freqs_w (1, 1, F), scale (1, 1, 1)) for the configured target grid."""
        cfg = self.config
        target = (cfg.max_pe_len_h, cfg.max_pe_len_w)
        if self.rope.method != "normal" and None in target:
            raise ValueError(f"RoPE method {self.rope.method!r} needs max_pe_len_h/max_pe_len_w in the config")
        target = target if None not in target else (1, 1)
        key = ("fixed", self.rope, target, device)
        if key not in self._rope_cache:
            fh, fw, scale = grid_frequencies(self.rope, *target)
            self._rope_cache[key] = (_float32(fh[None, None, :], device), _float32(fw[None, None, :], device),
                                     _float32(np.reshape(scale, (1, 1, 1)), device))
        return self._rope_cache[key]

    def _online_frequencies(self, size, tokens: int, device):
        """Per-sample (freqs_h (B, 1, F), freqs_w (B, 1, F), scale (B, 1, 1)) for sizes (B, 1, 2), looked up on
        ``device`` in a table of every (h, w) with h * w <= capacity (at least the ``tokens`` of the batch, which
        bound every real size): the sizes never travel to the host."""
        capacity = max(int(tokens), int(self.config.context_size))
        key = ("online", self.rope, device)
        if key not in self._rope_cache or self._rope_cache[key].capacity < capacity:
            self._rope_cache[key] = _SizeTable(self.rope, capacity, device)
        return self._rope_cache[key].lookup(size.reshape(-1, 2))

    # ---- forward ------------------------------------------------------------------------------------------
    def forward(self, x, t, y, grid=None, mask=None, size=None, rope_cos=None, rope_sin=None):
        """
        x: (B, N, p*p*C) tokens, or (B, p*p*C, N) when ``use_sit`` is false (FiT v1 layout)
        t: (B,) timesteps; y: (B,) labels (``num_classes`` = null class)
        grid: (B, 2, N) column/row index per token; mask: (B, N), 1 = real token, 0 = padding
        size: (B, 1, 2) per-sample (h, w) in patches, for online RoPE
        rope_cos, rope_sin: (B, N, head_dim) precomputed tables, used instead of ``grid``
        returns (B, N, p*p*C_out) (or channel-first for FiT v1); padding tokens are zero
        """
        if not self.use_sit:
            x = x.transpose(1, 2)                                            # (B, C, N) -> (B, N, C)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        s = self.time_shifting
        t = torch.clamp(s * t / (1 + (s - 1) * t), max=1.0) if s != 1 else t
        t = t.float().to(x.dtype)
        x = self.x_embedder(x)                                               # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y, self.training)           # (B, D)
        if rope_cos is None:
            if grid is None:
                raise ValueError("pass either grid or rope_cos/rope_sin")
            rope_cos, rope_sin = self.rope_from_grid(grid, size)
        freqs_cos = rope_cos.to(x.dtype).unsqueeze(1)                        # (B, 1, N, head_dim)
        freqs_sin = rope_sin.to(x.dtype).unsqueeze(1)
        global_adaln = self.global_adaLN_modulation(c) if self.global_adaLN_modulation is not None else 0.0
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, c, mask, freqs_cos, freqs_sin, global_adaln, use_reentrant=False)
            else:
                x = block(x, c, mask, freqs_cos, freqs_sin, global_adaln)
        x = self.final_layer(x, c)                                           # (B, N, p*p*C_out)
        x = x * mask[..., None].to(x.dtype)
        if not self.use_sit:
            x = x.transpose(1, 2)
        return x

    def forward_with_cfg(self, x, t, y, grid, mask, size, cfg_scale, scale_pow=0.0):
        """The official CFG forward: batch holds [cond; uncond] halves (2B, ...); returns (2B, ...).

        The guided channels are the same in both halves; the unguided rest keeps each half's own prediction.
        """
        b = len(x) // 2
        out = self.forward(torch.cat([x[:b], x[:b]]), t, y, grid, mask, size)
        dim = -1 if self.use_sit else 1
        n_guided = (self.config.cfg_channels or self.in_channels) * self.patch_size ** 2
        guided = guide(out, cfg_scale, t[:b], n_guided, channel_dim=dim, scale_pow=scale_pow)
        rest = out[b:].narrow(dim, n_guided, out.shape[dim] - n_guided)
        return torch.cat([guided, torch.cat([guided.narrow(dim, 0, n_guided), rest], dim=dim)])


def _float32(array, device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32), device=device)


class _SizeTable:
    """:func:`engines.rope.grid_frequencies` of every grid (h, w) with h * w <= capacity, on one device; row
    ``start[h] + w - 1`` holds (h, w). Each entry is what grid_frequencies gives for that size alone."""

    def __init__(self, settings, capacity: int, device):
        per_h = capacity // np.arange(1, capacity + 1)                     # widths 1..capacity // h for each h
        hs = np.repeat(np.arange(1, capacity + 1), per_h)
        ws = np.concatenate([np.arange(1, n + 1) for n in per_h])
        fh, fw, scale = grid_frequencies(settings, hs, ws)
        self.capacity = capacity
        self.start = torch.as_tensor(np.concatenate([[0, 0], np.cumsum(per_h)[:-1]]), device=device)
        self.fh, self.fw = _float32(fh, device), _float32(fw, device)
        self.scale = _float32(np.reshape(scale, (-1, 1, 1)), device)

    def lookup(self, hw: torch.Tensor):
        """hw: (B, 2) int (h, w) -> (freqs_h (B, 1, F), freqs_w (B, 1, F), scale (B, 1, 1))."""
        h, w = hw[:, 0].long(), hw[:, 1].long()
        valid = ((h >= 1) & (w >= 1) & (h * w <= self.capacity)).all()
        if hw.device.type == "cpu":
            if not valid:
                raise ValueError(f"online RoPE: every size (h, w) needs h, w >= 1 and h * w <= the sequence length; "
                                 f"got {hw.tolist()}")
        else:
            torch._assert_async(valid, "online RoPE: a size (h, w) has h * w beyond the sequence length")
        row = (self.start[h.clamp(1, self.capacity)] + w - 1).clamp(0, len(self.fh) - 1)
        return self.fh[row][:, None, :], self.fw[row][:, None, :], self.scale[row]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
