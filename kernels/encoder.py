"""Token + learned position embedding."""

from .jit import kernel


@kernel
def encoder_forward(out, tokens, wte, wpe):
    # tokens (B,T) int, wte (V,C), wpe (maxT,C) -> out (B*T,C)
    B, T = tokens.shape
    C = wte.shape[1]
    for b in range(B):
        for t in range(T):
            row = b * T + t
            tok = tokens[b, t]
            for c in range(C):
                out[row, c] = wte[tok, c] + wpe[t, c]


@kernel
def encoder_backward(dwte, dwpe, dout, tokens):
    # dout (B*T,C). dwte is accumulated into (the tied head wrote it first, or it was zeroed);
    # dwpe is overwritten, rows past T set to zero.
    B, T = tokens.shape
    C = dwte.shape[1]
    dwpe[:] = 0.0
    for b in range(B):
        for t in range(T):
            row = b * T + t
            tok = tokens[b, t]
            for c in range(C):
                g = dout[row, c]
                dwte[tok, c] += g
                dwpe[t, c] += g
