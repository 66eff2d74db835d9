"""3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016).

Each 2x2 block of outputs y of one (output k, input c) channel pair comes from a 4x4 tile d of the
input and the 3x3 kernel g as

    y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

with the constant matrices below. Summed over the input channels, the elementwise product becomes
16 matrix products, one per tile position (ξ, ν):  M[ξν] = V[ξν] U[ξν],  V[ξν]: (tiles, C) the
transformed input, U[ξν]: (C, K) the transformed kernel. That is 16 multiply-adds per channel
pair for 4 outputs where im2col's product does 36: 2.25x fewer, for a few additions per tile.
Everything is NHWC, as inside Conv2D, and written with xp; the CPU's ops choose it (Ops.conv_by_winograd)
and the plain im2col product stays the reference the tests compare it with.

Backward, with Z = A dy A^T for each 2x2 block of dy (the output transform's adjoint), which
both gradients share:
    dU[ξν] = V[ξν]^T Z[ξν]  summed over tiles,   dg = G^T dU G;
    dV[ξν] = Z[ξν] U[ξν]^T,   dd = B dV B^T for each tile,   dx = the tiles' dd added where they
    overlap (the input transform's adjoint).
"""

from __future__ import annotations

from typing import Any

import numpy as np

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
# On tiles flattened row by row: U = GG g (16 x 9), y = AA M (4 x 16).
GG = np.kron(G, G)
AA = np.kron(A_T, A_T)


def applies(kernel: int, stride: int, padding: int) -> bool:
    """F(2x2, 3x3) covers 3x3 kernels at stride 1, with any padding."""
    return kernel == 3 and stride == 1 and padding >= 0


def tiles(out_h: int, out_w: int) -> tuple[int, int]:
    """Tiles down and across: 2x2 outputs each (an odd size gets a last tile half outside)."""
    return -(-out_h // 2), -(-out_w // 2)


def kernel_transform(xp: Any, W: Any) -> Any:
    """U[ξν, c, k] = (G g_kc G^T)[ξ, ν] for W: (K, C, 3, 3); U: (16, C, K), contiguous."""
    k, c = W.shape[:2]
    U = W.reshape(k, c, 9) @ xp.asarray(GG.T, dtype=W.dtype)  # (K, C, 16)
    return xp.ascontiguousarray(U.transpose(2, 1, 0))


def input_transform(xp: Any, x: Any, padding: int, th: int, tw: int, out: Any = None) -> Any:
    """V[ξν, (n, i, j), c] = (B^T d B)[ξ, ν] for the 4x4 tile d at rows 2i.., columns 2j.. of x
    padded by `padding` (and by zeros below and right as far as the last tile reaches).
    x: (N, H, W, C); V: (16, N * th * tw, C). B^T combines the rows of a tile as (d0 - d2,
    d1 + d2, d2 - d1, d1 - d3), and B its columns the same way: 4 + 16 passes over strided views."""
    n, h, w, c = x.shape
    d = xp.zeros((n, 2 * th + 2, 2 * tw + 2, c), dtype=x.dtype)
    d[:, padding : padding + h, padding : padding + w, :] = x
    rows = [d[:, r : r + 2 * th : 2] for r in range(4)]  # row r of every tile: (N, th, 2 tw + 2, C)
    t = (rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3])
    V = xp.empty((4, 4, n, th, tw, c), dtype=x.dtype) if out is None else out
    for a in range(4):
        cols = [t[a][:, :, r : r + 2 * tw : 2] for r in range(4)]
        xp.subtract(cols[0], cols[2], out=V[a, 0])
        xp.add(cols[1], cols[2], out=V[a, 1])
        xp.subtract(cols[2], cols[1], out=V[a, 2])
        xp.subtract(cols[1], cols[3], out=V[a, 3])
    return V.reshape(16, n * th * tw, c)


def output_transform(xp: Any, M: Any, out: Any) -> Any:
    """out[n, 2i + a, 2j + b, k] = (A^T M A)[a, b] of tile (n, i, j): one (4 x 16) product over all
    tiles, then four strided copies (the last tile's outputs past an odd edge are dropped).
    M: (16, N * th * tw, K); out: (N, OH, OW, K)."""
    n, oh, ow, k = out.shape
    th, tw = tiles(oh, ow)
    y4 = (xp.asarray(AA, dtype=M.dtype) @ M.reshape(16, -1)).reshape(2, 2, n, th, tw, k)
    for a in range(2):
        for b in range(2):
            rows, cols = (oh - a + 1) // 2, (ow - b + 1) // 2
            out[:, a::2, b::2, :] = y4[a, b, :, :rows, :cols, :]
    return out


def conv3x3(xp: Any, x: Any, U: Any, padding: int, out: Any, tiles_out: Any = None) -> Any:
    """out = the stride-1 correlation of x (N, H, W, C) with the kernel U transforms (16, C, K),
    padded by `padding`: out (N, H + 2 padding - 2, W + 2 padding - 2, K). `tiles_out`: a
    (4, 4, N, th, tw, C) array to keep the transformed input in (for backward_term)."""
    th, tw = tiles(*out.shape[1:3])
    V = input_transform(xp, x, padding, th, tw, tiles_out)
    return output_transform(xp, xp.matmul(V, U), out)


def backward_term(xp: Any, x: Any, dy: Any, U: Any, padding: int, V: Any = None, dx: Any = None) -> Any:
    """For some images (x: (N, H, W, C), dy: (N, OH, OW, K)): dU = sum over their tiles of
    V[ξν]^T Z[ξν] (16, C, K), to be added over the batch and taken back by `kernel_grad`; and, when
    `dx` (N, H, W, C) is given, their input gradient written into it. V: the forward's transformed
    input (4, 4, N, th, tw, C) if kept, else transformed again. U: the forward's kernel transform."""
    n, oh, ow, k = dy.shape
    th, tw = tiles(oh, ow)
    c = x.shape[3]
    V = input_transform(xp, x, padding, th, tw) if V is None else V.reshape(16, n * th * tw, c)
    dy4 = xp.zeros((2, 2, n, th, tw, k), dtype=dy.dtype)  # zeros for outputs past an odd edge
    for a in range(2):
        for b in range(2):
            part = dy[:, a::2, b::2, :]
            dy4[a, b, :, : part.shape[1], : part.shape[2], :] = part
    Z = (xp.asarray(AA.T, dtype=dy.dtype) @ dy4.reshape(4, -1)).reshape(16, -1, k)  # A dy A^T per tile
    if dx is not None:
        input_transform_adjoint(xp, xp.matmul(Z, U.transpose(0, 2, 1)), padding, dx)
    return xp.matmul(V.transpose(0, 2, 1), Z)


def input_transform_adjoint(xp: Any, dV: Any, padding: int, out: Any) -> Any:
    """out = dL/dx from dV (16, N * th * tw, C): each tile's B dV B^T, whose row r lands on row
    2i + r of the padded input, so even rows take rows 0 and 2 of two neighbouring tiles and odd
    rows rows 1 and 3 (B^T's columns: row 0 = v0, 1 = v1 - v2 + v3, 2 = v1 + v2 - v0, 3 = -v3);
    columns the same way, first. out: (N, H, W, C), the part of the padded input that is x."""
    n, h, w, c = out.shape
    th, tw = tiles(h + 2 * padding - 2, w + 2 * padding - 2)
    v = dV.reshape(4, 4, n, th, tw, c)
    cols = xp.empty((4, n, th, 2 * tw + 2, c), dtype=dV.dtype)
    for a in range(4):
        _overlap_add(xp, *v[a], cols[a, :, :, 0::2], cols[a, :, :, 1::2], axis=2)
    d = xp.empty((n, 2 * th + 2, 2 * tw + 2, c), dtype=dV.dtype)
    _overlap_add(xp, *cols, d[:, 0::2], d[:, 1::2], axis=1)
    out[...] = d[:, padding : padding + out.shape[1], padding : padding + out.shape[2]]
    return out


def _overlap_add(xp: Any, v0: Any, v1: Any, v2: Any, v3: Any, even: Any, odd: Any, axis: int) -> None:
    """Rows (along `axis`) 0..3 of each tile, B^T's columns applied to v0..v3, added into the even
    and odd rows of the padded array (one more of each than there are tiles along the axis)."""
    t = v0.shape[axis]

    def rows(a: Any, part: slice) -> Any:
        return a[(slice(None),) * axis + (part,)]

    rows(even, slice(0, t))[...] = v0
    rows(even, slice(t, None))[...] = 0
    row2 = v1 + v2
    row2 -= v0
    rows(even, slice(1, None))[...] += row2
    row1 = v1 - v2
    row1 += v3
    rows(odd, slice(0, t))[...] = row1
    rows(odd, slice(t, None))[...] = 0
    rows(odd, slice(1, None))[...] -= v3


def kernel_grad(xp: Any, dU: Any) -> Any:
    """dg = G^T dU G for each channel pair: (16, C, K) -> (K, C, 3, 3)."""
    _, c, k = dU.shape
    dW = dU.reshape(16, c * k).T @ xp.asarray(GG, dtype=dU.dtype)  # (C * K, 9)
    return dW.reshape(c, k, 3, 3).transpose(1, 0, 2, 3)
