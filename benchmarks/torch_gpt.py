"""The PyTorch peer for the benchmarks: the same GPT-2 in fp32 eager mode, at its fastest.

Same architecture and step as CLLM's: pre-LayerNorm blocks, fused causal attention
(``scaled_dot_product_attention``, which skips the masked half on CPU), tanh GELU, the head
tied to the token embedding, cross-entropy, clipping to norm 1 and AdamW. Used only by
``benchmarks/``; CLLM never imports torch.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, C: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    def forward_cached(self, x, k_cache, v_cache, start):
        """x (1,n,C) at positions start..start+n-1; the caches (H,maxT,hs) gain their keys and values."""
        _, n, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(n, H, C // H).transpose(0, 1) for t in (q, k, v))
        k_cache[:, start:start + n] = k
        v_cache[:, start:start + n] = v
        keys, values = k_cache[:, :start + n], v_cache[:, :start + n]
        mask = torch.ones(n, start + n, dtype=torch.bool).tril(start) if n > 1 else None
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        x = x + self.attn_proj(y.transpose(0, 1).reshape(1, n, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.n_head, self.n_embd = n_head, n_embd
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif name.endswith("weight") and p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T

    def train_step(self, optimizer, tokens, targets, bf16: bool = False) -> float:
        """One step; with ``bf16`` the forward runs under CPU autocast to bfloat16 (oneDNN's products)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = self(tokens)
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.parameters(), 1.0)
        optimizer.step()
        return float(loss)

    @torch.no_grad()
    def generate(self, prompt, n_new: int, block_size: int):
        """Greedy decoding with a key-value cache; returns the new token ids."""
        H, hs = self.n_head, self.n_embd // self.n_head
        caches = [(torch.zeros(H, block_size, hs), torch.zeros(H, block_size, hs)) for _ in self.blocks]
        tokens, out, start = prompt, [], 0
        for _ in range(n_new):
            n = tokens.shape[0]
            x = (self.wte(tokens) + self.wpe(torch.arange(start, start + n)))[None]
            for block, (k, v) in zip(self.blocks, caches):
                x = block.forward_cached(x, k, v, start)
            logits = self.ln_f(x[0, -1]) @ self.wte.weight.T
            start += n
            tokens = logits.argmax().reshape(1)
            out.append(int(tokens))
        return out
