"""GPT-2: parameters as named views of one flat buffer, forward and backward of a micro-batch.

The parameter order and shapes are those of the Hugging Face GPT-2 checkpoint
(linear weights in the Conv1D layout, (in, out)), so export is a matter of naming.
A worker owns its ``Activations`` and its flat gradient segment; ``forward_backward``
reads the parameters and writes nothing else, so any number of threads may run it at once.

The gradient rule: ``forward_backward`` overwrites every tensor of the gradient segment.
Kernels that add into a gradient say so (LayerNorm's input gradient, the residual stream's;
the token embedding's, which the tied head writes first or which is zeroed when untied).
"""

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import dotbf16
from .attention import attention_backward, attention_forward
from .crossentropy import CHUNK_ROWS, head_loss, head_loss_backward
from .dropout import (EMBEDDING_SITE, Dropout, attention_residual_site, attention_site, bias_dropout_residual,
                      dropout_copy, dropout_forward, mlp_residual_site, site_key)
from .encoder import encoder_backward, encoder_forward
from .gelu import ACTIVATIONS
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward, linear_residual_forward
from .precision import FLOAT32, Products16


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 model and the members of the GPT-2 family it computes."""

    vocab_size: int
    block_size: int  # the number of learned positions, the longest context
    n_layer: int
    n_head: int
    n_embd: int
    n_inner: int | None = None  # the MLP's hidden width; None: 4 * n_embd
    activation: str = "gelu_new"  # a key of gelu.ACTIVATIONS: gelu_new (tanh approximation) or gelu (exact)
    ln_eps: float = 1e-5
    tied_head: bool = True  # the output head is the token embedding; False: its own lm_head matrix
    scale_attn_weights: bool = True  # scores divided by sqrt(head size)
    scale_attn_by_inverse_layer_idx: bool = False  # and by the layer's index + 1
    # Hugging Face computes such attention in float32 with the scale applied first: the same
    # function in float32, kept so an exported config says what was loaded
    reorder_and_upcast_attn: bool = False

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_size(self) -> int:
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    def attention_scale(self, layer: int) -> float:
        """The factor of layer ``layer``'s attention scores q.k."""
        scale = 1.0 / math.sqrt(self.head_size) if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


class Block(NamedTuple):
    ln_1_weight: np.ndarray
    ln_1_bias: np.ndarray
    c_attn_weight: np.ndarray
    c_attn_bias: np.ndarray
    attn_c_proj_weight: np.ndarray
    attn_c_proj_bias: np.ndarray
    ln_2_weight: np.ndarray
    ln_2_bias: np.ndarray
    c_fc_weight: np.ndarray
    c_fc_bias: np.ndarray
    mlp_c_proj_weight: np.ndarray
    mlp_c_proj_bias: np.ndarray


class Tensors(NamedTuple):
    """Named views of one flat buffer (parameters or a gradient segment)."""

    wte: np.ndarray
    wpe: np.ndarray
    blocks: tuple
    ln_f_weight: np.ndarray
    ln_f_bias: np.ndarray
    lm_head: np.ndarray | None  # None when the head is tied to wte (in ``Weights16.tensors``, the head in bfloat16)

    @property
    def head(self) -> np.ndarray:
        """The output head (V,C)."""
        return self.wte if self.lm_head is None else self.lm_head


def block_shapes(cfg: GPTConfig, i: int) -> list:
    C, M = cfg.n_embd, cfg.mlp_size
    h = f"h.{i}."
    return [
        (h + "ln_1.weight", (C,)),
        (h + "ln_1.bias", (C,)),
        (h + "attn.c_attn.weight", (C, 3 * C)),
        (h + "attn.c_attn.bias", (3 * C,)),
        (h + "attn.c_proj.weight", (C, C)),
        (h + "attn.c_proj.bias", (C,)),
        (h + "ln_2.weight", (C,)),
        (h + "ln_2.bias", (C,)),
        (h + "mlp.c_fc.weight", (C, M)),
        (h + "mlp.c_fc.bias", (M,)),
        (h + "mlp.c_proj.weight", (M, C)),
        (h + "mlp.c_proj.bias", (C,)),
    ]


class ParamLayout:
    """Names, shapes and offsets of every tensor in the flat buffer, in GPT-2 order; an untied
    head comes last, as ``lm_head.weight`` (V,C)."""

    def __init__(self, cfg: GPTConfig):
        self.cfg = cfg
        shapes = [("wte.weight", (cfg.vocab_size, cfg.n_embd)), ("wpe.weight", (cfg.block_size, cfg.n_embd))]
        for i in range(cfg.n_layer):
            shapes += block_shapes(cfg, i)
        shapes += [("ln_f.weight", (cfg.n_embd,)), ("ln_f.bias", (cfg.n_embd,))]
        if not cfg.tied_head:
            shapes += [("lm_head.weight", (cfg.vocab_size, cfg.n_embd))]
        self.shapes = dict(shapes)
        self.offsets = {}
        offset = 0
        for name, shape in shapes:
            self.offsets[name] = offset
            offset += int(np.prod(shape))
        self.size = offset

    def slice(self, name: str) -> slice:
        start = self.offsets[name]
        return slice(start, start + int(np.prod(self.shapes[name])))

    def views(self, flat: np.ndarray) -> dict:
        """name -> view of ``flat`` with the tensor's shape."""
        return {name: flat[self.slice(name)].reshape(shape) for name, shape in self.shapes.items()}

    def tensors(self, flat: np.ndarray) -> Tensors:
        v = self.views(flat)
        blocks = tuple(Block(*(v[name] for name, _ in block_shapes(self.cfg, i))) for i in range(self.cfg.n_layer))
        return Tensors(v["wte.weight"], v["wpe.weight"], blocks, v["ln_f.weight"], v["ln_f.bias"],
                       v.get("lm_head.weight"))


def init_params(cfg: GPTConfig, seed: int, dtype=np.float32) -> np.ndarray:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm gains, and the
    two residual output projections of each block scaled by 1/sqrt(2 * n_layer)."""
    layout = ParamLayout(cfg)
    flat = np.zeros(layout.size, dtype=dtype)
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / np.sqrt(2 * cfg.n_layer)
    for name, view in layout.views(flat).items():
        if name.endswith("bias"):
            continue
        if name.startswith("ln_") or ".ln_" in name:
            view[...] = 1.0
        elif name.endswith("c_proj.weight"):
            view[...] = rng.normal(0.0, residual_std, size=view.shape)
        else:
            view[...] = rng.normal(0.0, 0.02, size=view.shape)
    return flat


def activation_shapes(cfg: GPTConfig, B: int, T: int) -> dict:
    """name -> shape of every buffer a worker needs for a micro-batch of B sequences of T tokens."""
    L, C, H, V, M = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.mlp_size
    N = B * T
    return {
        "encoded": (N, C),
        "ln_1": (L, N, C), "ln_1_mean": (L, N), "ln_1_rstd": (L, N),
        "qkv": (L, N, 3 * C),
        "atty": (L, N, C), "lse": (L, B, H, T),
        "residual_2": (L, N, C),
        "ln_2": (L, N, C), "ln_2_mean": (L, N), "ln_2_rstd": (L, N),
        "fch": (L, N, M), "fch_gelu": (L, N, M),
        "residual_3": (L, N, C),
        "ln_f": (N, C), "ln_f_mean": (N,), "ln_f_rstd": (N,),
        "logits": (min(N, CHUNK_ROWS), V),  # one chunk of rows at a time
        # backward scratch, reused by every layer
        "dresidual": (N, C), "dln": (N, C), "datty": (N, C), "dqkv": (N, 3 * C), "dfch": (N, M),
        "dbranch": (N, C),  # the residual stream's gradient through a dropout mask
    }


def scratch16_sizes(cfg: GPTConfig, B: int, T: int) -> tuple:
    """Elements of the two bfloat16 buffers of a worker's products: (first operands, second operands).
    First: a linear layer's input, forward and backward, and a chunk of the head's logits' gradient;
    second: a linear layer's output gradient and a chunk of the head's input rows."""
    N, C, M = B * T, cfg.n_embd, cfg.mlp_size
    return max(N * max(C, M), min(N, CHUNK_ROWS) * cfg.vocab_size), N * max(3 * C, M)


def activation_bytes(cfg: GPTConfig, B: int, T: int, precision: str = "fp32") -> int:
    """Memory of one worker's ``Activations`` (float32 buffers, and bfloat16 scratch with ``precision`` bf16)."""
    scratch = 0
    if precision == "bf16":  # the rounded operands, and the product's packing buffers for its widest output
        widest = max(cfg.vocab_size, cfg.mlp_size, 3 * cfg.n_embd)
        scratch = 2 * sum(scratch16_sizes(cfg, B, T)) + dotbf16.packing_bytes(widest)
    return 4 * sum(int(np.prod(shape)) for shape in activation_shapes(cfg, B, T).values()) + scratch


class Activations:
    """One worker's buffers for a micro-batch of B sequences of T tokens of model ``cfg``, allocated once,
    and how its matrix products run: ``mm``, float32, or bfloat16 with ``precision`` bf16 (the weights
    then come rounded, from ``Weights16.tensors``)."""

    def __init__(self, cfg: GPTConfig, B: int, T: int, dtype=np.float32, precision: str = "fp32"):
        self.cfg, self.B, self.T = cfg, B, T
        for name, shape in activation_shapes(cfg, B, T).items():
            setattr(self, name, np.zeros(shape, dtype=dtype))
        self.mm = Products16(*scratch16_sizes(cfg, B, T)) if precision == "bf16" else FLOAT32


def residual_branch(out, inp, weight, bias, residual, T: int, drop: Dropout | None, site: int, mm) -> None:
    """out (N,C) = residual + dropout(inp @ weight + bias), the dropout only with ``drop``."""
    if drop is None:
        linear_residual_forward(out, inp, weight, bias, residual, mm)
    else:
        mm(out, inp, weight)
        bias_dropout_residual(out, bias, residual, T, *drop.at(site))


def branch_gradient(acts: Activations, dres: np.ndarray, T: int, drop: Dropout | None, site: int) -> np.ndarray:
    """The gradient reaching a residual branch's output: ``dres`` itself, or through the branch's mask."""
    if drop is None:
        return dres
    dropout_copy(acts.dbranch, dres, T, *drop.at(site))
    return acts.dbranch


def hidden(w: Tensors, acts: Activations, tokens: np.ndarray, drop: Dropout | None = None) -> np.ndarray:
    """tokens (B,T) int32 -> the final LayerNorm's output (B*T,C), ``acts.ln_f``.

    With ``drop`` (training only) the embedding, the attention probabilities and both residual
    branches of every block go through dropout.
    """
    cfg, mm = acts.cfg, acts.mm
    B, T = tokens.shape
    gelu_forward = ACTIVATIONS[cfg.activation][0]
    encoder_forward(acts.encoded, tokens, w.wte, w.wpe)
    if drop is not None:
        dropout_forward(acts.encoded, T, *drop.at(EMBEDDING_SITE))
    residual = acts.encoded
    for l, p in enumerate(w.blocks):
        layernorm_forward(acts.ln_1[l], acts.ln_1_mean[l], acts.ln_1_rstd[l], residual, p.ln_1_weight, p.ln_1_bias,
                          cfg.ln_eps)
        linear_forward(acts.qkv[l], acts.ln_1[l], p.c_attn_weight, p.c_attn_bias, mm)
        attention_forward(acts.atty[l].reshape(B, T, -1), acts.lse[l], acts.qkv[l].reshape(B, T, -1), cfg.n_head,
                          cfg.attention_scale(l), drop and drop.at(attention_site(l)))
        residual_branch(acts.residual_2[l], acts.atty[l], p.attn_c_proj_weight, p.attn_c_proj_bias, residual, T, drop,
                        attention_residual_site(l), mm)
        layernorm_forward(acts.ln_2[l], acts.ln_2_mean[l], acts.ln_2_rstd[l], acts.residual_2[l], p.ln_2_weight,
                          p.ln_2_bias, cfg.ln_eps)
        linear_forward(acts.fch[l], acts.ln_2[l], p.c_fc_weight, p.c_fc_bias, mm)
        gelu_forward(acts.fch_gelu[l].reshape(-1), acts.fch[l].reshape(-1))
        residual_branch(acts.residual_3[l], acts.fch_gelu[l], p.mlp_c_proj_weight, p.mlp_c_proj_bias,
                        acts.residual_2[l], T, drop, mlp_residual_site(l), mm)
        residual = acts.residual_3[l]
    layernorm_forward(acts.ln_f, acts.ln_f_mean, acts.ln_f_rstd, residual, w.ln_f_weight, w.ln_f_bias, cfg.ln_eps)
    return acts.ln_f


def forward(w: Tensors, acts: Activations, tokens: np.ndarray, drop: Dropout | None = None) -> np.ndarray:
    """tokens (B,T) int32 -> logits (B*T,V), a new array (training never makes all of them)."""
    x = hidden(w, acts, tokens, drop)
    logits = np.empty((x.shape[0], acts.cfg.vocab_size), x.dtype)
    acts.mm(logits, x, w.head.T)
    return logits


def scores(w: Tensors, acts: Activations, tokens: np.ndarray, targets: np.ndarray) -> tuple:
    """Forward only (no dropout): (sum over the B*T positions of the cross-entropy, positions whose
    target is the likeliest token)."""
    return head_loss(hidden(w, acts, tokens), w.head, targets.reshape(-1), acts.logits, acts.mm)


def forward_backward(w: Tensors, g: Tensors, acts: Activations, tokens: np.ndarray, targets: np.ndarray,
                     dloss: float, drop: Dropout | None = None) -> float:
    """Forward and backward of one micro-batch; returns the summed cross-entropy.

    Every tensor of ``g`` is overwritten with d(dloss * summed loss)/d(parameter); with
    dloss = 1/(tokens in the global batch) the segments of all workers add up to the
    gradient of the mean loss.
    """
    cfg, mm = acts.cfg, acts.mm
    B, T = tokens.shape
    gelu_backward = ACTIVATIONS[cfg.activation][1]
    # the head and the loss, fused, chunk by chunk of rows; then the final LayerNorm
    total = head_loss_backward(hidden(w, acts, tokens, drop), w.head, targets.reshape(-1), dloss, acts.dln, g.head,
                               acts.logits, mm)
    residual_last = acts.residual_3[-1] if w.blocks else acts.encoded
    dres = acts.dresidual
    dres[...] = 0.0
    layernorm_backward(dres, g.ln_f_weight, g.ln_f_bias, acts.dln, residual_last, w.ln_f_weight, acts.ln_f_mean,
                       acts.ln_f_rstd)
    for l in range(len(w.blocks) - 1, -1, -1):
        p, q = w.blocks[l], g.blocks[l]
        residual = acts.residual_3[l - 1] if l > 0 else acts.encoded
        # MLP: residual_3 = residual_2 + dropout(proj(gelu(fc(ln_2(residual_2)))))
        dbranch = branch_gradient(acts, dres, T, drop, mlp_residual_site(l))
        linear_backward(acts.dfch, q.mlp_c_proj_weight, q.mlp_c_proj_bias, dbranch, acts.fch_gelu[l],
                        p.mlp_c_proj_weight, mm)
        gelu_backward(acts.dfch.reshape(-1), acts.fch[l].reshape(-1))
        linear_backward(acts.dln, q.c_fc_weight, q.c_fc_bias, acts.dfch, acts.ln_2[l], p.c_fc_weight, mm)
        layernorm_backward(dres, q.ln_2_weight, q.ln_2_bias, acts.dln, acts.residual_2[l], p.ln_2_weight,
                           acts.ln_2_mean[l], acts.ln_2_rstd[l])
        # attention: residual_2 = residual + dropout(proj(attn(ln_1(residual))))
        dbranch = branch_gradient(acts, dres, T, drop, attention_residual_site(l))
        linear_backward(acts.datty, q.attn_c_proj_weight, q.attn_c_proj_bias, dbranch, acts.atty[l],
                        p.attn_c_proj_weight, mm)
        attention_backward(acts.dqkv.reshape(B, T, -1), acts.datty.reshape(B, T, -1), acts.qkv[l].reshape(B, T, -1),
                           acts.atty[l].reshape(B, T, -1), acts.lse[l], cfg.n_head, cfg.attention_scale(l),
                           drop and drop.at(attention_site(l)))
        linear_backward(acts.dln, q.c_attn_weight, q.c_attn_bias, acts.dqkv, acts.ln_1[l], p.c_attn_weight, mm)
        layernorm_backward(dres, q.ln_1_weight, q.ln_1_bias, acts.dln, residual, p.ln_1_weight, acts.ln_1_mean[l],
                           acts.ln_1_rstd[l])
    if drop is not None:
        dropout_forward(dres, T, *drop.at(EMBEDDING_SITE))  # the mask is its own backward
    if g.lm_head is not None:
        g.wte[...] = 0.0  # the untied head did not write it; the embedding adds into it
    encoder_backward(g.wte, g.wpe, dres, tokens)
    return total
