"""The one way kernels are compiled: numba, GIL released, cached on disk.

fastmath is limited to flags that allow reassociation and contraction (so reductions
vectorise) but keep NaN and infinity semantics: the trainer must see a non-finite loss.
Division follows IEEE (x/0 is inf or NaN) rather than raising, which also keeps loops
with a division vectorisable.
"""

import numba

FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def kernel(fn):
    """Compile ``fn`` as a nogil, cached numba kernel."""
    return numba.njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")(fn)


def kernel_of(signature):
    """``kernel`` compiled once, eagerly, for ``signature``: arguments are converted to its types
    (a C- or F-contiguous array to a strided one) instead of compiling one version per layout."""
    return numba.njit(signature, nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
