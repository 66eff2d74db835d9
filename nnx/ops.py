"""The hot chains of elementwise work and copies (activations, the loss, optimizer updates, the
copies of convolution and pooling), as plain `xp` code.

These are the reference implementations: the GPU backend swaps in fused CUDA kernels
(nnx/gpu_kernels.py) and the CPU spreads them over its cores (nnx/cpu_ops.py); tests compare both
against these. Layers and optimizers call them through `backend.ops`, so they never know which
one they got.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

_M1, _M2, _GOLDEN = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B1
_MASK32 = 0xFFFFFFFF


def mix_key(*parts: int) -> int:
    """Fold integers (seed, epoch, batch, layer...) into one 32-bit key (murmur3's finaliser)."""
    h = 0
    for part in parts:
        h = (h ^ (int(part) & _MASK32)) * _GOLDEN & _MASK32
        h ^= h >> 16
        h = h * _M1 & _MASK32
        h ^= h >> 13
        h = h * _M2 & _MASK32
        h ^= h >> 16
    return h


_TINY: dict[Any, Any] = {}  # np.finfo takes ~1 us: once per dtype


def smallest_normal(dtype: Any) -> Any:
    """tiny: the smallest normal number of a float dtype (float32: 1.18e-38), as that dtype's scalar."""
    key = np.dtype(dtype)
    tiny = _TINY.get(key)
    if tiny is None:
        tiny = _TINY[key] = key.type(np.finfo(key).tiny)
    return tiny


def flush_subnormals(xp: Any, a: Any) -> Any:
    """a <- a * [|a| >= tiny] in place (tiny: smallest_normal): subnormal numbers become zeros of
    their sign; NaN and infinities stay. The optimizers' state goes through this after every
    update: a unit whose gradient is (almost) always zero has its momentum decay geometrically
    (v <- mu v), into the subnormal range within a few hundred steps, and some CPUs take a
    microcode assist on every subnormal operand. Nothing below tiny can move a parameter anyway:
    it is below the last bit of any parameter larger than about 1e-31 (float32). A product by the
    mask, not a masked store, so the work does not depend on the values."""
    a *= xp.abs(a) >= smallest_normal(a.dtype)
    return a


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """How many windows of `kernel` fit along `size` (padded by `padding` at both ends) at `stride`."""
    return (size + 2 * padding - kernel) // stride + 1


def window_offsets(size: int, stride: int, oh: int, ow: int) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of an image, one per offset (i, j) in a size x size pooling window: each
    selects that offset's element of every window, so size^2 strided views cover all windows."""
    s = stride
    return [(slice(i, i + s * oh, s), slice(j, j + s * ow, s)) for i in range(size) for j in range(size)]


def windows_tile(size: int, stride: int, h: int, w: int, oh: int, ow: int) -> bool:
    """Whether pooling windows tile an h x w image exactly (stride = size, no border left over):
    each element is then in one window, whose gradient it takes or not."""
    return stride == size and h == oh * size and w == ow * size


def im2col(xp: Any, x: Any, kh: int, kw: int, stride: int, padding: int, out: Any = None) -> Any:
    """x: (N, C, H, W) -> cols: (N, OH, OW, kh, kw, C) with cols[n, y, x, i, j, c] =
    x_padded[n, c, y * stride + i, x * stride + j]: one row of kh * kw * C per output pixel.

    Channels go last (the input is copied to NHWC once) so every copy below moves contiguous
    runs of C values, and reshaping to (N * OH * OW, kh * kw * C) costs nothing. `out`: the array
    to fill instead of a new one."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
    x = x.transpose(0, 2, 3, 1)
    if padding:  # zeros and a copy: a third of xp.pad's time for a chunk of images here
        padded = xp.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=x.dtype)
        padded[:, padding : padding + h, padding : padding + w, :] = x
        x = padded
    cols = xp.empty((n, oh, ow, kh, kw, c), dtype=x.dtype) if out is None else out
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :]
    return cols


class Ops:
    def __init__(self, xp: Any) -> None:
        self.xp = xp
        self._constants: dict[tuple[int, Any], Any] = {}

    def _constant(self, value: int, n: int, dtype: Any) -> Any:
        """n elements equal to value (the ones of a sum as a product): a view of one array kept
        per (value, dtype) on this device and grown as needed, not made afresh at every step."""
        key = (value, self.xp.dtype(dtype))
        kept = self._constants.get(key)
        if kept is None or len(kept) < n:
            kept = self._constants[key] = self.xp.full(n, value, dtype=dtype)
        return kept[:n]

    def network_built(self, layers: list[Any]) -> None:
        """Told the layers of each network built on these ops, before its first step (the CPU's ops
        choose from them who spreads the work over the cores)."""

    def conv_by_winograd(self, layer: Any) -> bool:
        """Whether a Conv2D computes by Winograd's F(2x2, 3x3) (nnx/nn/winograd.py) instead of an
        im2col product. The reference: never (im2col is what the tests compare the other with)."""
        return False

    def parallel_for(self, n: int, work: Callable[[slice], None], cost: int, shared: int = 0) -> None:
        """Run work(rows) over row slices that cover 0..n; each row's work must touch only its own
        outputs. The reference does it in one call; the CPU's ops (nnx/cpu_ops.py) may cut the rows
        into chunks run on all cores. `cost`: the elements one row's work reads and writes, plus its
        multiply-adds / 16; `shared`: the elements every chunk reads (a weight matrix)."""
        work(slice(0, n))

    def parallel_sum(self, n: int, term: Callable[[slice], Any], cost: int, shared: int = 0) -> Any:
        """The sum over rows of term(rows) (an array or a tuple of arrays), for sums over the batch
        such as dW = x^T dy: here one term of all rows; the CPU's ops add up one term per chunk."""
        return term(slice(0, n))

    def matmul(self, a: Any, b: Any, row_cost: int, shared: int = 0) -> Any:
        """a b for a: (N, P), b: (P, Q), a product row by row of the batch, such as y = x W or
        dx = dy W^T. The CPU's ops may cut the rows into chunks on all cores (`row_cost`, `shared`:
        as for parallel_for)."""
        return self.xp.matmul(a, b)

    def matmul_tn(self, a: Any, b: Any, out: Any = None) -> Any:
        """a^T b for a: (N, P), b: (N, Q): a sum over the batch's rows, such as dW = x^T dy."""
        return self.xp.matmul(a.T, b, out=out)

    def sum_rows(self, x: Any, out: Any = None) -> Any:
        """sum_n x[n] for x: (N, F), such as db = sum over the batch of dy."""
        return x.sum(axis=0, out=out)

    def im2col(self, x: Any, kh: int, kw: int, stride: int, padding: int, out: Any = None) -> Any:
        """im2col (above) of x (N, C, H, W) on this device: (N, OH, OW, kh, kw, C)."""
        return im2col(self.xp, x, kh, kw, stride, padding, out)

    def col2im_product(
        self, dy2: Any, weights: Any, shape: tuple[int, ...], stride: int, padding: int, out: Any = None
    ) -> Any:
        """col2im(dy2 @ W), the adjoint of im2col (above) applied to the column gradient of
        a convolution, without building the columns: dx = sum over offsets (i, j) of dy2 @ W[:, i, j, :]
        added at that offset. Half the time of building them on the CPU: each partial product is
        contiguous, a column slice strided. dy2: (N * OH * OW, O); weights: (O, kh, kw, C), contiguous;
        shape: x's (N, C, H, W). `out`: a zeroed (N, H + 2 padding, W + 2 padding, C) array to
        accumulate into instead of a new one. Returns dx: (N, C, H, W), a view of `out`."""
        n, c, h, w = shape
        _, kh, kw, _ = weights.shape
        oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
        dx = self.xp.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=dy2.dtype) if out is None else out
        for i in range(kh):
            for j in range(kw):
                part = (dy2 @ weights[:, i, j, :]).reshape(n, oh, ow, c)
                dx[:, i : i + stride * oh : stride, j : j + stride * ow : stride, :] += part
        return dx[:, padding : padding + h, padding : padding + w, :].transpose(0, 3, 1, 2)

    def uniform(self, shape: tuple[int, ...], key: int, dtype: Any, offset: int = 0) -> Any:
        """Counter-based uniform numbers in [0, 1): u_i = fmix32(i * golden + key) / 2^32, kept to
        24 bits so float32 holds them exactly. A pure function of (key, i): the same on every
        backend, and nothing to save or restore when a run resumes mid-epoch. The counters start at
        `offset`: a data-parallel rank holding rows a.. of a batch draws exactly those rows' numbers."""
        xp = self.xp
        u32 = xp.uint32
        n = math.prod(shape)
        h = xp.arange(offset, offset + n, dtype=u32)
        h *= u32(_GOLDEN)
        h += u32(key & _MASK32)
        h ^= h >> u32(16)
        h *= u32(_M1)
        h ^= h >> u32(13)
        h *= u32(_M2)
        h ^= h >> u32(16)
        return ((h >> u32(8)).astype(dtype) * (1.0 / (1 << 24))).reshape(shape)

    def normalize(self, pixels: Any, scale: float, shift: float, dtype: Any) -> Any:
        """x = pixels * scale - shift, from uint8 to `dtype`."""
        x = pixels.astype(dtype)
        x *= scale
        if shift:
            x -= shift
        return x

    def normalize_rows(self, images: Any, idx: Any, scale: float, shift: float, dtype: Any) -> Any:
        """normalize(images[idx]): a batch gathered from a split and converted."""
        return self.normalize(images[idx], scale, shift, dtype)

    def add_bias(self, a: Any, b: Any) -> Any:
        """y = a + b for a: (N, F), b: (F,), written over `a` (the fresh result of a matmul)."""
        a += b
        return a

    def bias_relu(self, a: Any, b: Any) -> Any:
        """y = max(a + b, 0), written over `a` (the fresh result of a matmul)."""
        a += b
        return self.xp.maximum(a, 0, out=a)

    def first_max_slot(self, packed: Any, y: Any, out: Any) -> Any:
        """out = the first slot p with packed[p] not below y = max_p packed[p]: the element of each
        pooling window that takes its gradient (ties go to the first). A window with a NaN (y NaN)
        gives slot 0."""
        out[...] = self.xp.argmin(packed < y, axis=0)
        return out

    def max_pool(self, xn: Any, size: int, stride: int, out: Any, first: Any) -> None:
        """out = the max over each size x size window of xn (N, H, W, C), channels-last: (N, OH, OW, C);
        first = the slot (i * size + j) of each window's first maximum, for backward.

        The window offsets of the images are packed into one array, slot p holding every window's
        p-th element: the passes below then run over contiguous memory (in cache, for the CPU's
        chunks of a few images) instead of strided views."""
        views = window_offsets(size, stride, *out.shape[1:3])
        packed = self.xp.empty((len(views), *out.shape), dtype=xn.dtype)
        for p, (rows, cols) in enumerate(views):
            packed[p] = xn[:, rows, cols, :]
        self.xp.max(packed, axis=0, out=out)
        self.first_max_slot(packed, out, out=first)

    def max_pool_backward(
        self, dyn: Any, y: Any, first: Any, size: int, stride: int, relu_before: bool, out: Any
    ) -> None:
        """out = dL/dxn (N, H, W, C) for max_pool's y and first, dyn = dL/dy (N, OH, OW, C): each
        window's dy goes to its first maximum; overlapping windows (stride < size) add up. With
        relu_before, a preceding ReLU's gradient mask 1[y > 0] is applied here too."""
        _, h, w, _ = out.shape
        oh, ow = y.shape[1:3]
        # Windows that tile x exactly each write their own elements once: no zero fill and no
        # read-add-write, just stores.
        tiles = windows_tile(size, stride, h, w, oh, ow)
        if not tiles:
            out[...] = 0
        dy = dyn * (y > 0) if relu_before else dyn
        for p, (rows, cols) in enumerate(window_offsets(size, stride, oh, ow)):
            if tiles:  # straight into out's strided view: no temporary (1.36 -> 1.20 ms, pool 1 of mnist_cnn)
                self.xp.multiply(dy, first == p, out=out[:, rows, cols, :])
            else:
                out[:, rows, cols, :] += dy * (first == p)

    def count_correct(self, z: Any, y: Any) -> Any:
        """How many rows of logits z (N, C) have their largest value at label y (N,): sum_n [argmax_k z_nk = y_n]."""
        return (z.argmax(axis=1) == y).sum()

    def relu_backward(self, dy: Any, y: Any) -> Any:
        """dx = dy * 1[y > 0]   (y = relu(x), so y > 0 exactly where x > 0)."""
        return dy * (y > 0)

    def softmax_cross_entropy(self, z: Any, y: Any) -> tuple[Any, Any]:
        """(mean loss, dL/dz) for logits z (N, C) and labels y (N,).

        log p_k = (z_k - m) - log sum_j exp(z_j - m), m = max_j z_j   (stable log-sum-exp)
        L = -(1/N) sum_n log p[n, y_n];   dL/dz = (p - onehot(y)) / N

        A label outside 0..C-1 makes that row's loss and gradient NaN (never an index out of
        bounds, nor a silent wrap-around for -1): the trainer's divergence guard then names the
        batch, and no check has to read the labels back from a GPU. An empty batch has loss 0.
        """
        xp = self.xp
        n, c = z.shape
        if n == 0:
            return xp.zeros((), dtype=z.dtype), xp.empty_like(z)
        valid = (y >= 0) & (y < c)
        t = xp.where(valid, y, 0)
        shifted = z - z.max(axis=1, keepdims=True)
        e = xp.exp(shifted)
        sum_e = e.sum(axis=1, keepdims=True)
        rows = xp.arange(n)
        row_loss = xp.log(sum_e[:, 0]) - shifted[rows, t]
        row_loss[...] = xp.where(valid, row_loss, xp.nan)
        loss = row_loss.mean()
        dz = e
        dz /= sum_e
        dz[rows, t] -= 1
        dz /= n
        dz += xp.where(valid, 0, xp.nan).astype(z.dtype)[:, None]  # NaN rows for bad labels
        return loss, dz

    def flush_subnormals(self, a: Any) -> Any:
        """The updates' flush of their state (flush_subnormals above), in place."""
        return flush_subnormals(self.xp, a)

    def sgd_update(self, p: Any, g: Any, v: Any, lr: float, mu: float, nesterov: bool, wd: float) -> None:
        """In place: d = g + wd p;  v <- flush(mu v + d);  p <- p - lr (d + mu v) (Nesterov) or p - lr v.
        With no velocity buffer (mu = 0): p <- p - lr d. flush: `flush_subnormals`."""
        d = g + wd * p if wd else g
        if v is None:
            p -= lr * d
            return
        v *= mu
        v += d
        self.flush_subnormals(v)
        p -= lr * (d + mu * v if nesterov else v)

    def adam_update(
        self,
        p: Any,
        g: Any,
        m: Any,
        v: Any,
        lr: float,
        b1: float,
        b2: float,
        eps: float,
        step: int,
        wd: float,
        decoupled: bool,
    ) -> None:
        """In place, Adam (Kingma & Ba 2015), with L2 (Adam) or decoupled (AdamW) weight decay:
        d = g (+ wd p);  m <- flush(b1 m + (1 - b1) d);  v <- flush(b2 v + (1 - b2) d^2);
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)  (- lr wd p for AdamW)."""
        xp = self.xp
        if decoupled and wd:
            p *= 1 - lr * wd
        d = g + wd * p if (wd and not decoupled) else g
        m *= b1
        m += (1 - b1) * d
        v *= b2
        v += (1 - b2) * (d * d)
        self.flush_subnormals(m)
        self.flush_subnormals(v)
        m_hat = m / (1 - b1**step)
        v_hat = v / (1 - b2**step)
        p -= lr * m_hat / (xp.sqrt(v_hat) + eps)

    def rmsprop_update(self, p: Any, g: Any, s: Any, lr: float, rho: float, eps: float, wd: float) -> None:
        """In place, RMSprop: d = g + wd p;  s <- flush(rho s + (1 - rho) d^2);  p <- p - lr d / (sqrt(s) + eps)."""
        d = g + wd * p if wd else g
        s *= rho
        s += (1 - rho) * (d * d)
        self.flush_subnormals(s)
        p -= lr * d / (self.xp.sqrt(s) + eps)
