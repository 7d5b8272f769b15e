"""Qwen3-MoE's forward pass in plain torch, for training on a CPU.

transformers' Qwen3MoeForCausalLM runs its experts one Python loop iteration per routed expert and
token group, which on 2 cores is too slow to train in minutes; this module computes the same function
(RMSNorm, Q/K norms, rotary embedding, grouped-query causal attention, softmax router with normalised
top-k, SwiGLU experts) with the experts' weights stacked, and names its tensors as transformers does,
so its state dict loads into Qwen3MoeForCausalLM (train.py checks that both give the same loss).
"""
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x / rms(x) * weight, in float32."""

    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, c.hidden_size, bias=False)
        self.q_norm = RMSNorm(self.d, c.rms_norm_eps)
        self.k_norm = RMSNorm(self.d, c.rms_norm_eps)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.h, self.d)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, t, self.kv, self.d)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.h // self.kv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.h * self.d))


class Experts(nn.Module):
    """E SwiGLU experts; parameters named experts.J.{gate,up,down}_proj.weight as transformers names them."""

    def __init__(self, c):
        super().__init__()
        h, i = c.hidden_size, c.moe_intermediate_size
        self.experts = nn.ModuleList(
            nn.ModuleDict({"gate_proj": nn.Linear(h, i, bias=False), "up_proj": nn.Linear(h, i, bias=False),
                           "down_proj": nn.Linear(i, h, bias=False)})
            for _ in range(c.num_experts)
        )


class SparseMoe(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.k, self.norm_topk = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)
        self.experts = Experts(c).experts

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.gate(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        w, idx = probs.topk(self.k, dim=-1)
        if self.norm_topk:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, ex in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            xe = x[tok]
            ye = ex["down_proj"](F.silu(ex["gate_proj"](xe)) * ex["up_proj"](xe))
            out.index_add_(0, tok, ye * w[tok, slot, None])
        return out.view(shape), logits


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = SparseMoe(c)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        y, logits = self.mlp(self.post_attention_layernorm(x))
        return x + y, logits


class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class MoeLM(nn.Module):
    """Qwen3MoeForCausalLM's function; forward returns (logits, router logits per layer)."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Body(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        d = c.head_dim
        self.register_buffer(
            "inv_freq", 1.0 / (c.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)), persistent=False
        )
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=c.initializer_range)

    def forward(self, ids):
        t = ids.shape[1]
        f = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.model.embed_tokens(ids)
        routers = []
        for layer in self.model.layers:
            x, r = layer(x, cos, sin)
            routers.append(r)
        return self.lm_head(self.model.norm(x)), routers


def aux_loss(routers, n_experts, k):
    """Switch-style load balancing, as transformers' load_balancing_loss_func (no padding mask)."""
    logits = torch.cat(routers, dim=0)
    probs = F.softmax(logits, dim=-1, dtype=torch.float32)
    _, idx = probs.topk(k, dim=-1)
    mask = F.one_hot(idx, n_experts).float()
    tokens_per_expert = mask.mean(0)
    router_prob = probs.mean(0)
    return (tokens_per_expert * router_prob.unsqueeze(0)).sum() * n_experts
