"""Fused CUDA kernels for the chains in nnx/ops.py (imported by the backend on a GPU only).

Each replaces several CuPy kernel launches with one; `Ops` (plain xp) stays the reference that
the GPU tests compare these against.
"""

from __future__ import annotations

from typing import Any

import cupy

from nnx.ops import Ops, output_size, smallest_normal, windows_tile

_normalize = cupy.ElementwiseKernel(
    "uint8 pixel, T scale, T shift", "T x", "x = (T)pixel * scale - shift", "nnx_normalize"
)

# max(a + b, 0), letting NaN through as the reference's xp.maximum does.
_bias_relu = cupy.ElementwiseKernel(
    "T a, T b", "T y", "T s = a + b; y = (s > (T)0 || isnan(s)) ? s : (T)0;", "nnx_bias_relu"
)

# dy * 1[y > 0] as a product, like the reference: a NaN or inf in dy stays NaN where y <= 0 too.
_relu_backward = cupy.ElementwiseKernel("T dy, T y", "T dx", "dx = dy * (y > (T)0 ? (T)1 : (T)0)", "nnx_relu_backward")

_sgd = cupy.ElementwiseKernel("T g, T lr, T wd", "T p", "p -= lr * (g + wd * p)", "nnx_sgd")

# flush(x): x * 0 where |x| < tiny, the smallest normal number of T (nnx/ops.py's flush_subnormals).
_sgd_momentum = cupy.ElementwiseKernel(
    "T g, T lr, T mu, T wd, T nesterov, T tiny",
    "T p, T v",
    """
    T d = g + wd * p;
    v = mu * v + d;
    if (-tiny < v && v < tiny) v *= (T)0;
    p -= lr * (nesterov != (T)0 ? d + mu * v : v);
    """,
    "nnx_sgd_momentum",
)

# Constants such as 1 - b2 come from the host, computed in double as the reference does: in float32
# on the device, 1 - 0.999f is 0.99998713e-3, not 1e-3.
_adam = cupy.ElementwiseKernel(
    "T g, T lr, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps, T c1, T c2, T wd, T decay, T decoupled, T tiny",
    "T p, T m, T v",
    """
    if (decoupled != (T)0) p *= decay;
    T d = decoupled != (T)0 ? g : g + wd * p;
    m = b1 * m + one_minus_b1 * d;
    v = b2 * v + one_minus_b2 * (d * d);
    if (-tiny < m && m < tiny) m *= (T)0;
    if (-tiny < v && v < tiny) v *= (T)0;
    p -= lr * (m / c1) / (sqrt(v / c2) + eps);
    """,
    "nnx_adam",
)

_rmsprop = cupy.ElementwiseKernel(
    "T g, T lr, T rho, T one_minus_rho, T eps, T wd, T tiny",
    "T p, T s",
    """
    T d = g + wd * p;
    s = rho * s + one_minus_rho * (d * d);
    if (-tiny < s && s < tiny) s *= (T)0;
    p -= lr * d / (sqrt(s) + eps);
    """,
    "nnx_rmsprop",
)

# The counter-based generator of Ops.uniform, one thread per number: the same bits as the reference.
_uniform = cupy.ElementwiseKernel(
    "uint32 key, uint32 offset",
    "T u",
    """
    unsigned int h = ((unsigned int)i + offset) * 0x9E3779B1u + key;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    u = (T)(h >> 8) * (T)(1.0 / 16777216.0);
    """,
    "nnx_uniform",
)

# im2col, one thread per column entry cols[n, oy, ox, a, b, ch] (N, OH, OW, kh, kw, C), copied from
# x (N, H, W, C) at (oy * stride + a - padding, ox * stride + b - padding), or 0 in the padding:
# the reference's copies bit for bit, in one pass instead of a padded copy and kh * kw strided ones.
_im2col = cupy.ElementwiseKernel(
    "raw T x, int32 h, int32 w, int32 c, int32 oh, int32 ow, int32 kh, int32 kw, int32 stride, int32 padding",
    "T cols",
    """
    const long long ch = i % c, b = (i / c) % kw, a = (i / c / kw) % kh;
    const long long ox = (i / c / kw / kh) % ow, oy = (i / c / kw / kh / ow) % oh, img = i / c / kw / kh / ow / oh;
    const long long y = oy * stride + a - padding, xx = ox * stride + b - padding;
    cols = (y >= 0 && y < h && xx >= 0 && xx < w) ? x[((img * h + y) * w + xx) * c + ch] : (T)0;
    """,
    "nnx_im2col",
)

# col2im of the column gradient dcols (N, OH, OW, kh, kw, C): one thread per element of dx (N, H + 2p,
# W + 2p, C), adding up the kh * kw column entries that are copies of it, in the reference's order
# (offset row a, then column b). Each dx element is written by its own thread: no atomics.
_col2im = cupy.ElementwiseKernel(
    "raw T dcols, int32 oh, int32 ow, int32 kh, int32 kw, int32 stride, int32 hp, int32 wp, int32 c",
    "T dx",
    """
    const long long ch = i % c, x = (i / c) % wp, y = (i / c / wp) % hp, img = i / c / wp / hp;
    T s = 0;
    for (int a = 0; a < kh; ++a) {
        const long long ty = y - a;  // = oy * stride for the window (oy, ox) whose offset a covers y
        if (ty < 0 || ty % stride != 0 || ty / stride >= oh) continue;
        for (int b = 0; b < kw; ++b) {
            const long long tx = x - b;
            if (tx < 0 || tx % stride != 0 || tx / stride >= ow) continue;
            s += dcols[((((img * oh + ty / stride) * ow + tx / stride) * kh + a) * kw + b) * c + ch];
        }
    }
    dx += s;
    """,
    "nnx_col2im",
)

# Max pooling, one thread per window (an element of y: (N, OH, OW, C)), reading its size x size
# elements of x (N, H, W, C): y = their max and first = the slot of the first maximum, as the
# reference; a window holding a NaN gives NaN and slot 0, as the reference's max and argmin do.
_max_pool = cupy.ElementwiseKernel(
    "raw T x, int32 h, int32 w, int32 size, int32 stride, int32 oh, int32 ow, int32 c",
    "T y, uint8 first",
    """
    const long long ch = i % c, ox = (i / c) % ow, oy = (i / c / ow) % oh, img = i / c / ow / oh;
    const T* corner = &x[((img * h + oy * stride) * w + ox * stride) * c + ch];
    T m = corner[0];
    int slot = 0;
    for (int a = 0; a < size; ++a) {
        for (int b = 0; b < size; ++b) {
            const T v = corner[((long long)a * w + b) * c];
            if (!isnan(m) && (isnan(v) || v > m)) {  // a NaN, once met, stays the result
                m = v;
                slot = a * size + b;
            }
        }
    }
    y = m;
    first = isnan(m) ? 0 : slot;
    """,
    "nnx_max_pool",
)

# Its gradient for windows that tile x (stride = size), one thread per element of dx (N, H, W, C):
# dy of its window where it is the window's first maximum, else 0, as a product like the
# reference's (a NaN or inf in dy stays NaN); with relu, times the ReLU's mask 1[y > 0] too.
_max_pool_backward = cupy.ElementwiseKernel(
    "raw T dy, raw T y, raw uint8 first, int32 h, int32 w, int32 size, int32 c, int32 relu",
    "T dx",
    """
    const long long ch = i % c, xx = (i / c) % w, yy = (i / c / w) % h, img = i / c / w / h;
    const int oh = h / size, ow = w / size;
    const long long o = ((img * oh + yy / size) * ow + xx / size) * c + ch;
    T d = dy[o];
    if (relu) d = d * (y[o] > (T)0 ? (T)1 : (T)0);
    dx = d * (first[o] == (yy % size) * size + xx % size ? (T)1 : (T)0);
    """,
    "nnx_max_pool_backward",
)

# One thread per row: max, exp, sum, the loss term and dL/dz = (p - onehot) / N for that row.
# A label outside 0..c-1 is never used as an index: that row's loss and gradient are NaN, as in
# the reference, and the trainer's divergence guard names the batch.
_SOFTMAX_XENT = r"""
extern "C" __global__ void nnx_softmax_xent_{T}(
        const {T}* z, const long long* y, {T}* dz, {T}* row_loss, const int n, const int c) {{
    const int row = blockDim.x * blockIdx.x + threadIdx.x;
    if (row >= n) return;
    const {T}* zr = z + (long long)row * c;
    {T}* dr = dz + (long long)row * c;
    const long long t = y[row];
    if (t < 0 || t >= c) {{
        for (int k = 0; k < c; ++k) dr[k] = {nan};
        row_loss[row] = {nan};
        return;
    }}
    {T} m = zr[0];
    for (int k = 1; k < c; ++k) m = {max}(m, zr[k]);
    {T} s = 0;
    for (int k = 0; k < c; ++k) {{
        dr[k] = {exp}(zr[k] - m);
        s += dr[k];
    }}
    for (int k = 0; k < c; ++k) dr[k] = (dr[k] / s - (k == t ? ({T})1 : ({T})0)) / ({T})n;
    row_loss[row] = {log}(s) - (zr[t] - m);
}}
"""
_MATH = {
    "float": {"max": "fmaxf", "exp": "expf", "log": "logf", "nan": "__int_as_float(0x7fc00000)"},
    "double": {"max": "fmax", "exp": "exp", "log": "log", "nan": "__longlong_as_double(0x7ff8000000000000LL)"},
}
_C_TYPES = {"float32": "float", "float64": "double"}
_softmax_kernels: dict[str, Any] = {}


def _softmax_kernel(dtype: Any) -> Any:
    c_type = _C_TYPES[cupy.dtype(dtype).name]
    if c_type not in _softmax_kernels:
        source = _SOFTMAX_XENT.format(T=c_type, **_MATH[c_type])
        _softmax_kernels[c_type] = cupy.RawKernel(source, f"nnx_softmax_xent_{c_type}")
    return _softmax_kernels[c_type]


class FusedOps(Ops):
    def __init__(self) -> None:
        super().__init__(cupy)

    def sum_rows(self, x: Any, out: Any = None) -> Any:
        """sum_n x[n] as the product 1^T x (cuBLAS's gemv): CuPy's reduction along the rows of a tall,
        narrow array is slow (a first convolution's dY, (100352, 32) at batch 128: 1.03 ms on an
        H200, 7.2 ms at batch 512; the product 0.03 and 0.05 ms, benchmarks/gpu_parts.py)."""
        if x.ndim != 2 or len(x) == 0:
            return super().sum_rows(x, out)
        ones = self._constant(1, len(x), x.dtype)
        if out is None:
            return ones @ x
        out[...] = ones @ x  # one row copied: the product's result is a single row
        return out

    def im2col(self, x: Any, kh: int, kw: int, stride: int, padding: int, out: Any = None) -> Any:
        """The reference's columns in one kernel: its padded copy and nine strided copies took 0.16 ms
        for mnist_cnn's first convolution at batch 128 on an H200 (benchmarks/gpu_parts.py)."""
        n, c, h, w = x.shape
        oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
        cols = cupy.empty((n, oh, ow, kh, kw, c), dtype=x.dtype) if out is None else out
        if n:
            xn = cupy.ascontiguousarray(x.transpose(0, 2, 3, 1))
            i32 = cupy.int32
            sizes = (h, w, c, oh, ow, kh, kw, stride, padding)
            _im2col(xn, *(i32(v) for v in sizes), cols)
        return cols

    def col2im_product(
        self, dy2: Any, weights: Any, shape: tuple[int, ...], stride: int, padding: int, out: Any = None
    ) -> Any:
        """The reference's dx, from one product for all kernel offsets, dcols = dy2 W (N * OH * OW,
        kh * kw * C), and one gathering kernel: the reference's kh * kw products and strided
        additions took 0.80 ms on an H200 for mnist_cnn's second convolution at batch 128, the one
        product 0.05 ms (benchmarks/gpu_parts.py)."""
        n, c, h, w = shape
        o, kh, kw, _ = weights.shape
        oh, ow = output_size(h, kh, stride, padding), output_size(w, kw, stride, padding)
        dx = cupy.zeros((n, h + 2 * padding, w + 2 * padding, c), dtype=dy2.dtype) if out is None else out
        if n:
            dcols = cupy.ascontiguousarray(dy2) @ weights.reshape(o, kh * kw * c)
            hp, wp = dx.shape[1:3]
            i32 = cupy.int32
            _col2im(dcols, i32(oh), i32(ow), i32(kh), i32(kw), i32(stride), i32(hp), i32(wp), i32(c), dx)
        return dx[:, padding : padding + h, padding : padding + w, :].transpose(0, 3, 1, 2)

    def max_pool(self, xn: Any, size: int, stride: int, out: Any, first: Any) -> None:
        """The reference's y and first in one kernel: its copies, max and compare took 0.18 ms for
        mnist_cnn's first pooling at batch 128 on an H200, where one pass over x takes 0.03 ms."""
        if first.dtype != cupy.uint8 or len(out) == 0:
            return super().max_pool(xn, size, stride, out, first)
        _, h, w, c = xn.shape
        oh, ow = out.shape[1:3]
        i32 = cupy.int32
        _max_pool(
            cupy.ascontiguousarray(xn), i32(h), i32(w), i32(size), i32(stride), i32(oh), i32(ow), i32(c), out, first
        )

    def max_pool_backward(
        self, dyn: Any, y: Any, first: Any, size: int, stride: int, relu_before: bool, out: Any
    ) -> None:
        """The reference's dx in one kernel where the windows tile the image (stride = size, no
        border left over: each dx element has one window); other pooling goes to the reference."""
        _, h, w, c = out.shape
        if not windows_tile(size, stride, h, w, *y.shape[1:3]) or first.dtype != cupy.uint8 or len(out) == 0:
            return super().max_pool_backward(dyn, y, first, size, stride, relu_before, out)
        i32 = cupy.int32
        dy = cupy.ascontiguousarray(dyn)
        _max_pool_backward(dy, y, first, i32(h), i32(w), i32(size), i32(c), i32(relu_before), out)

    def normalize(self, pixels: Any, scale: float, shift: float, dtype: Any) -> Any:
        t = cupy.dtype(dtype).type
        return _normalize(pixels, t(scale), t(shift), cupy.empty(pixels.shape, dtype=dtype))

    def bias_relu(self, a: Any, b: Any) -> Any:
        return _bias_relu(a, b, a)

    def relu_backward(self, dy: Any, y: Any) -> Any:
        return _relu_backward(dy, y)

    def softmax_cross_entropy(self, z: Any, y: Any) -> tuple[Any, Any]:
        z = cupy.ascontiguousarray(z)
        y = cupy.ascontiguousarray(y, dtype=cupy.int64)
        n, c = z.shape
        dz = cupy.empty_like(z)
        if n == 0:  # no grid to launch; the mean over no rows is taken as 0, as in the reference
            return cupy.zeros((), dtype=z.dtype), dz
        row_loss = cupy.empty(n, dtype=z.dtype)
        threads = 128
        _softmax_kernel(z.dtype)(
            ((n + threads - 1) // threads,), (threads,), (z, y, dz, row_loss, cupy.int32(n), cupy.int32(c))
        )
        return row_loss.mean(), dz

    def uniform(self, shape: tuple[int, ...], key: int, dtype: Any, offset: int = 0) -> Any:
        return _uniform(cupy.uint32(key & 0xFFFFFFFF), cupy.uint32(offset), cupy.empty(shape, dtype=dtype))

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, lr: float, b1: float, b2: float, eps: float, step: int, wd: float,
        decoupled: bool,
    ) -> None:  # fmt: skip
        t = p.dtype.type
        c1, c2 = 1 - b1**step, 1 - b2**step  # bias corrections, in double on the host
        decay = 1 - lr * wd if decoupled else 1.0
        _adam(
            g, t(lr), t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), t(c1), t(c2), t(wd), t(decay),
            t(1 if decoupled else 0), smallest_normal(t), p, m, v,
        )  # fmt: skip

    def rmsprop_update(self, p: Any, g: Any, s: Any, lr: float, rho: float, eps: float, wd: float) -> None:
        t = p.dtype.type
        _rmsprop(g, t(lr), t(rho), t(1 - rho), t(eps), t(wd), smallest_normal(t), p, s)

    def sgd_update(self, p: Any, g: Any, v: Any, lr: float, mu: float, nesterov: bool, wd: float) -> None:
        t = p.dtype.type
        if v is None:
            _sgd(g, t(lr), t(wd), p)
        else:
            _sgd_momentum(g, t(lr), t(mu), t(wd), t(1 if nesterov else 0), smallest_normal(t), p, v)
