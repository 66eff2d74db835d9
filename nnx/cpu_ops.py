"""The CPU's ops: the reference chains of nnx/ops.py, spread over the machine's cores.

NumPy runs every elementwise pass and copy on one core, while BLAS spreads its matrix products
over all of them (and PyTorch spreads both). A network of products and little else (an MLP)
leaves the spreading to BLAS: each product one call, the rest in one piece, as the reference
does. A network with convolutions, whose per-image copies (im2col) only we can spread, hands its
per-row work to `parallel_for`, which cuts the rows into chunks and runs them on a small pool of
threads: NumPy releases the GIL inside its loops and BLAS calls, and a chunk's copies and product
stay in cache between one pass and the next. Meanwhile BLAS is held at one thread: its own idle
threads spin for ~0.1 s after each threaded call and would take the cores from the chunks.
`network_built` chooses, from the layers, once, before any step.

Chunk boundaries depend only on the sizes of the work, never on the number of threads or on
timing, and every chunk writes its own rows: a network with convolutions gives the same numbers
bit for bit on 1 thread or 16, and every run gives them again when resumed (OpenBLAS's results
themselves change with its thread count, which is why BLAS's threads are never given or taken
by timing). The plain reference in nnx/ops.py (one chunk of everything) stays what the tests
compare against.
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util
import importlib
import math
import os
import platform
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np

from nnx.nn import winograd
from nnx.ops import Ops, smallest_normal

# About this many array elements a chunk should touch: enough to pay for the hand-over to a thread
# (tens of microseconds), small enough that a chunk's temporaries stay in a core's cache.
CHUNK_ELEMENTS = 1 << 20
# Below this many elements in all, the work runs in the calling thread, in one piece.
SERIAL_ELEMENTS = 1 << 16
# Work that one chunk would hold is cut in two halves, for both cores, when each half touches at
# least this many elements; below it the hand-over to a thread costs more than the half saves
# (the measurements behind each constant here: docs/explanations/performance.md).
MIN_HALF_ELEMENTS = 1 << 18
# The optimizer's update runs over at most this many parameters at a time (its scratch arrays are
# that long): in one piece up to 4M parameters, which was faster than cache-sized pieces.
UPDATE_PIECE_ELEMENTS = 1 << 22
# matmul_tn splits a product's output rows into chunks of at least this many.
MIN_OUTPUT_ROWS = 256
# A product of at least this many multiply-adds is cut over the threads (cpu_products): smaller
# ones finish before a second thread would have started.
PARALLEL_PRODUCT_MACS = 1 << 20
# Products in chunks go through np.dot, not np.matmul (@): matmul lets go of the GIL only when its
# result has over 500 elements (NumPy's threshold), so chunks with small results (a first
# convolution's 32 x 9 dW, the sums of rows) would run one at a time.


# A 3x3 stride-1 convolution is a candidate for Winograd's F(2x2, 3x3) (nnx/nn/winograd.py) when
# C K / (C + K) is at least this (C, K: input and output channels): it saves 20 C K multiply-adds
# per 2x2 outputs and pays passes over the tiles in proportion to C + K, so narrower ones cannot
# gain (mnist_fast's 12 -> 32, 8.7: 2.69 against 2.64 ms by im2col). Whether the candidates do
# gain depends on how fast BLAS's products are here: nnx/cpu_choice.py measures both ways.
WINOGRAD_MIN_CHANNEL_RATIO = 16


def winograd_candidate(layer: Any) -> bool:
    """Whether Winograd's F(2x2, 3x3) could pay for this Conv2D: 3x3, stride 1, wide enough."""
    c, k = layer.in_channels, layer.out_channels
    wide = c * k >= WINOGRAD_MIN_CHANNEL_RATIO * (c + k)
    return wide and winograd.applies(layer.kernel, layer.stride, layer.padding)


# glibc malloc: arrays up to this size come from the heap, which keeps this much freed memory.
MALLOC_HEAP_ARRAYS = 32 << 20
MALLOC_KEEP_FREED = 64 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory for NumPy's temporaries. By default it maps every
    array over 128 KB afresh and unmaps it on free (raising that threshold only as it sees frees),
    and the kernel zeroes the pages again: a chunked CNN step allocates and frees tens of MB, and
    7% of its time went to the system here (32 -> 30 ms a step with this). Skipped when the user
    set MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_, or off glibc. Once per process; returns
    whether it is in effect."""
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        user_set = any(f"MALLOC_{name}_" in os.environ for name in ("MMAP_THRESHOLD", "TRIM_THRESHOLD"))
        if not user_set and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
            except (OSError, AttributeError):
                return False
            # both together: setting either alone turns off glibc's own adjustment of the other
            _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_HEAP_ARRAYS)) and bool(
                mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_FREED)
            )
    return _malloc_tuned


def blas_pools() -> list[dict[str, Any]]:
    """threadpoolctl's description of each of NumPy's BLAS libraries (version, threads, kernels)."""
    import numpy  # noqa: F401 (threadpoolctl finds only the BLAS libraries already loaded)
    from threadpoolctl import threadpool_info

    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where the platform has one: macOS and
    Windows do not, and os.sched_getaffinity does not exist there)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads() -> int:
    """The threads BLAS was given (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, threadpoolctl limits)
    or else the cores this process may run on."""
    if _POOL.limited:  # a parallel section holds BLAS at one thread: what it had before
        return _POOL.threads_outside
    blas = [pool["num_threads"] for pool in blas_pools()]
    return max(1, min(blas)) if blas else usable_cpus()


def blas_kernels() -> str:
    """What does NumPy's matrix products on this machine: e.g. "OpenBLAS 0.3.31, 2 threads,
    Haswell kernels (OPENBLAS_CORETYPE=Haswell)". The kernel family sets the vector width (Haswell:
    AVX2, SkylakeX: AVX-512), and with it most of a CNN's speed; an environment that forces one is
    named, since it is the first thing to check when training runs slower than expected."""
    blas = blas_pools()
    if not blas:
        return "none found"
    described = []
    for pool in blas:
        text = f"{pool.get('internal_api', 'BLAS')} {pool.get('version') or ''}".strip()
        text = text.replace("openblas", "OpenBLAS").replace("mkl", "MKL")
        text += f", {pool.get('num_threads')} threads"
        if pool.get("architecture"):
            text += f", {pool['architecture']} kernels"
        described.append(text)
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return "; ".join(described) + (f" (OPENBLAS_CORETYPE={forced})" if forced else "")


_kernels: ModuleType | None | bool = False  # False: not looked for yet
_LARGEST: dict[np.dtype, float] = {}  # the largest finite number of each float dtype (np.finfo takes ~1 us)


def numba_turned_off() -> bool:
    """Whether the user set NNX_NUMBA=0: NumPy's chains even where Numba is installed."""
    return os.environ.get("NNX_NUMBA", "1") == "0"


def compiled_kernels() -> ModuleType | None:
    """nnx/cpu_kernels.py (the fused loops Numba compiles), or None where Numba is not installed or
    NNX_NUMBA=0 is set: the CPU's ops then run the NumPy reference's chains. Looked for once."""
    global _kernels
    if _kernels is False:
        _kernels = None
        if not numba_turned_off():
            try:
                _kernels = importlib.import_module("nnx.cpu_kernels")
            except ImportError:  # no Numba (the GPU check carries none): the reference's chains
                pass
            except Exception as exc:  # e.g. Numba's RuntimeError when no folder takes its cache
                warnings.warn(f"Numba could not set up nnx's CPU kernels ({exc}); using NumPy's", stacklevel=2)
    return _kernels


_products: ModuleType | None | bool = False  # False: not looked for yet


def products_turned_off() -> bool:
    """Whether the user set NNX_PRODUCTS=blas: BLAS does every matrix product."""
    return os.environ.get("NNX_PRODUCTS", "") == "blas"


def cpu_has_avx512() -> bool:
    """Whether this CPU has AVX-512F, as LLVM (which compiles the loops) sees it; False where
    llvmlite, which comes with Numba, is missing."""
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return False
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


def avx512_products() -> ModuleType | None:
    """nnx/cpu_products.py (float32 products on 16 lanes), where the compiled loops are on and this
    CPU has AVX-512F (Numba compiles for the CPU it runs on); else None: BLAS does every product.
    NNX_PRODUCTS=blas turns them off. Looked for once."""
    global _products
    if _products is False:
        _products = None
        if compiled_kernels() is not None and not products_turned_off() and cpu_has_avx512():
            try:
                _products = importlib.import_module("nnx.cpu_products")
            except Exception as exc:  # an extension Numba refuses here: BLAS does the products
                warnings.warn(f"Numba could not set up nnx's AVX-512 products ({exc}); using BLAS", stacklevel=2)
    return _products


def _loop_ready(*arrays: Any) -> bool:
    """Whether the compiled loops take these: C-contiguous NumPy arrays of one floating dtype (the
    first is never None; None among the others is allowed). Others go the reference's way. (A
    plain loop: this runs several times a step, and a generator's version took 1.1 us.)"""
    dtype = arrays[0].dtype
    if dtype.kind != "f":
        return False
    for a in arrays:
        if a is not None and (type(a) is not np.ndarray or a.dtype is not dtype or not a.flags.c_contiguous):
            return False
    return True


def _flat(*arrays: Any) -> tuple[Any, ...] | None:
    """1-d views of arrays the compiled loops take (None passes through), or None where they don't."""
    if not _loop_ready(*arrays):
        return None
    return tuple([a if a is None or a.ndim == 1 else a.reshape(-1) for a in arrays])


class _Pool:
    """Worker threads shared by every CpuOps of the process, and the BLAS limit they need."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # one parallel section at a time (the BLAS limit is global)
        self.executor: ThreadPoolExecutor | None = None
        self.workers = 0
        self.blas: Any = None
        self.limited = False  # a section holds BLAS at one thread now
        self.threads_outside = 1  # default_threads() before it did
        self.local = threading.local()  # .inside: this thread is running a chunk

    def blas_libraries(self) -> list[Any]:
        if self.blas is None:
            from threadpoolctl import ThreadpoolController

            self.blas = ThreadpoolController().select(user_api="blas").lib_controllers
        return self.blas

    @contextmanager
    def one_blas_thread(self) -> Iterator[None]:
        """BLAS on one thread inside (about 1.5 us to set and to restore; call with the lock held)."""
        libraries = self.blas_libraries()
        before = [lib.get_num_threads() for lib in libraries]
        self.threads_outside = min(before, default=self.threads_outside)
        for lib in libraries:
            lib.set_num_threads(1)
        self.limited = True
        try:
            yield
        finally:
            self.limited = False
            for lib, threads in zip(libraries, before, strict=True):
                lib.set_num_threads(threads)

    def run_alone(self, chunks: list[slice], work: Callable[[slice], None]) -> None:
        """work(rows) for each chunk in this thread, with BLAS on one thread as in a section."""
        if not self.lock.acquire(blocking=False):  # inside a section, or beside another thread's
            for rows in chunks:
                work(rows)
            return
        try:
            with self.one_blas_thread():
                for rows in chunks:
                    work(rows)
        finally:
            self.lock.release()

    def run(self, chunks: list[slice], work: Callable[[slice], None], threads: int) -> None:
        with self.lock:
            if self.workers < threads - 1:
                if self.executor is not None:
                    self.executor.shutdown()
                self.executor = ThreadPoolExecutor(threads - 1, thread_name_prefix="nnx-cpu")
                self.workers = threads - 1
            next_chunk = iter(chunks)
            take = threading.Lock()

            def drain() -> None:
                self.local.inside = True
                try:
                    while True:
                        with take:
                            rows = next(next_chunk, None)
                        if rows is None:
                            return
                        work(rows)
                finally:
                    self.local.inside = False

            # BLAS on one thread while the chunks run: BLAS's own threads would compete with them.
            # Each helper runs in a copy of the caller's context, so that the caller's np.errstate
            # holds in every chunk (a diverging run's overflow warnings came from the helpers).
            with self.one_blas_thread():
                helpers = [
                    self.executor.submit(contextvars.copy_context().run, drain)
                    for _ in range(min(threads, len(chunks)) - 1)
                ]
                try:
                    drain()
                finally:  # the helpers write into the caller's arrays: wait for them even on an error
                    errors = [f.exception() for f in helpers]
            errors = [e for e in errors if e is not None]
            if errors:
                raise errors[0]


_POOL = _Pool()
# One product at a time on Numba's threads: its 'workqueue' layer (where neither OpenMP nor TBB is
# found) aborts the process when two threads start parallel work at once, as `nnx serve`'s may.
_PRODUCT_LOCK = threading.Lock()


class CpuOps(Ops):
    """Ops for NumPy arrays. With `own_threads` (set by `network_built` for a network with
    convolutions), the per-row work of layers and the elementwise chains of the optimizers are
    spread over `threads` threads (1: the same chunks, one after another) with BLAS on one
    thread; without, BLAS spreads the products and everything runs in one piece."""

    # Convolutions by Winograd where they are candidates (the "+winograd" of a path); im2col else.
    winograd = False

    def __init__(
        self, threads: int | None = None, own_threads: bool = False, compiled: bool = True, products: bool = True
    ) -> None:
        super().__init__(np)
        self._threads = threads
        self.own_threads = own_threads
        self._local = threading.local()
        # The fused loops of nnx/cpu_kernels.py where Numba is there (and `compiled`), else None.
        self.kernels = compiled_kernels() if compiled else None
        # The float32 products of nnx/cpu_products.py on a CPU with AVX-512 (and `products`), else None (BLAS).
        self.products = avx512_products() if compiled and products else None
        self._dtypes: set[np.dtype] = set()  # what the networks built on these ops compute in

    @property
    def path(self) -> str:
        """Which of nnx/cpu_choice.py's paths these ops take: numpy, compiled or tiles, and
        "+winograd" when convolutions may go by Winograd."""
        base = "numpy" if self.kernels is None else "compiled" if self.products is None else "tiles"
        return base + ("+winograd" if self.winograd else "")

    def use_path(self, path: str) -> None:
        """Take `path` (numpy, compiled or tiles, with "+winograd" or not) from now on, loading and
        compiling what it needs for the networks already built: a run's path is chosen once its
        network and data are known (nnx/cpu_choice.py). Where Numba or AVX-512 is missing, the path
        falls back as __init__ does."""
        base, _, conv = path.partition("+")
        self.winograd = conv == "winograd"
        self.kernels = compiled_kernels() if base in ("compiled", "tiles") else None
        self.products = avx512_products() if base == "tiles" else None
        if self.kernels is not None:
            for dtype in self._dtypes:
                self._warm(dtype)

    def network_built(self, layers: list[Any]) -> None:
        if any(layer.kind == "conv2d" for layer in layers):
            self.own_threads = True
            keep_freed_memory()
        if layers:
            self._dtypes.add(np.dtype(layers[0].backend.dtype))
        if self.kernels is not None and layers:
            self._warm(layers[0].backend.dtype)

    def _warm(self, dtype: Any) -> None:
        """Compile the kernels for `dtype` now, before a training loop starts its clock (about a
        second per dtype the first time; later runs load them from Numba's cache in ~0.1 s). A
        kernel Numba cannot compile here leaves these ops on the reference's chains, with a warning."""
        try:
            self.kernels.warm(dtype)
        except Exception as exc:  # numba.core.errors.NumbaError and LLVM's errors share no base
            warnings.warn(f"Numba could not compile nnx's CPU kernels ({exc}); using NumPy's", stacklevel=2)
            self.kernels = None
        if self.products is not None and np.dtype(dtype) == np.float32:
            try:
                self.products.warm()
            except Exception as exc:  # as above
                warnings.warn(f"Numba could not compile nnx's AVX-512 products ({exc}); using BLAS", stacklevel=2)
                self.products = None

    def conv_by_winograd(self, layer: Any) -> bool:
        """Winograd for the candidates (winograd_candidate) when this run's path says so
        (nnx/cpu_choice.py measured it faster here); im2col, the reference's, otherwise."""
        return self.winograd and winograd_candidate(layer)

    @property
    def threads(self) -> int:
        if self._threads is None:  # asked on first use: threadpoolctl takes milliseconds to look
            self._threads = default_threads()
        return self._threads

    def chunks(self, n: int, cost: int, shared: int = 0) -> list[slice]:
        """Row slices covering 0..n: as many as it takes for each to be at most `rows` long, of
        nearly equal lengths. rows: about CHUNK_ELEMENTS / cost, or more where `shared` (elements
        every chunk reads whatever its length: a weight matrix) would be over an eighth of a chunk's
        work; an even number of them. Work that fits one chunk goes in two halves when each is at
        least MIN_HALF_ELEMENTS (and `shared` allows), else in one slice, as small work does. A
        function of the sizes alone."""
        cost = max(int(cost), 1)
        rows = max(-(-CHUNK_ELEMENTS // cost), -(-8 * shared // cost), 1)
        if n * cost <= SERIAL_ELEMENTS:
            return [slice(0, n)]
        if rows >= n:  # one chunk would hold it all: two halves, one per core, where they pay
            half = -(-n // 2)
            if half * cost < MIN_HALF_ELEMENTS or half * cost < 8 * shared:  # (n = 1: half is all)
                return [slice(0, n)]
            rows = half
        # An even number of nearly equal length, so that two threads end together (5 chunks on 2
        # threads left one idle for a fifth of the section); the count cannot follow the thread count.
        count = -(-n // rows)
        count = min(n, count + count % 2)
        return [slice(n * k // count, n * (k + 1) // count) for k in range(count)]

    def parallel_for(self, n: int, work: Callable[[slice], None], cost: int, shared: int = 0) -> None:
        """work(rows) for each of `chunks(n, cost, shared)` on all threads, BLAS on one; or, without
        own threads, work(all rows) as the reference does, BLAS spreading its products."""
        if not self.own_threads:
            work(slice(0, n))
            return
        chunks = self.chunks(n, cost, shared)
        if len(chunks) == 1 or self.threads == 1 or getattr(_POOL.local, "inside", False):
            _POOL.run_alone(chunks, work)
        else:
            _POOL.run(chunks, work, self.threads)

    def parallel_sum(self, n: int, term: Callable[[slice], Any], cost: int, shared: int = 0) -> Any:
        """The sum of term(rows) over `chunks(n, cost, shared)`: each chunk's term on some thread,
        then added in chunk order (so the result does not depend on which thread finished first).
        `shared`: the size of a term, which each chunk adds once."""
        terms: dict[int, Any] = {}

        def work(rows: slice) -> None:
            terms[rows.start] = term(rows)

        self.parallel_for(n, work, cost, shared)
        starts = sorted(terms)
        total = terms[starts[0]]
        for start in starts[1:]:
            total += terms[start]
        return total

    def _takes(self, a: Any, b: Any, m: int, n: int, k: int) -> bool:
        """Whether nnx/cpu_products.py does this product: float32 2-d NumPy arrays, a C-contiguous,
        b C-contiguous or the transpose of such an array, c (m, n) at least one tile, a sum over k.
        Not with own threads (a network with convolutions): Numba's threads spin for a while after
        each product and took the cores from the chunks' threads (mnist_fast: 15 -> 25-28 s)."""
        return (
            self.products is not None
            and not self.own_threads
            and type(a) is np.ndarray
            and type(b) is np.ndarray
            and a.dtype == np.float32
            and b.dtype == np.float32
            and a.ndim == 2
            and b.ndim == 2
            and a.flags.c_contiguous
            and (b.flags.c_contiguous or b.flags.f_contiguous)
            and self.products.applies(m, n, k)
        )

    def _takes_sum(self, x: Any, out: Any) -> bool:
        """Whether nnx/cpu_products.py sums x's rows (float32, C-contiguous, as the products)."""
        if self.products is None or self.own_threads or (out is not None and out.shape != x.shape[1:]):
            return False
        arrays = (x,) if out is None else (x, out)
        return all(type(v) is np.ndarray and v.dtype == np.float32 and v.flags.c_contiguous for v in arrays)

    def _product(self, a: Any, b: Any, c: Any, sa_i: int, sa_k: int) -> Any:
        """c (m, n) = a b by nnx/cpu_products.py, a(i, kk) at a.flat[i sa_i + kk sa_k] (a C-contiguous
        a's rows or, for a^T, its columns), b (k, n) or a transposed view of a (n, k) array: on
        Numba's threads when large enough and no other thread has them, else in this thread."""
        m, n = c.shape
        k = len(b)
        sb_k, sb_j = (n, 1) if b.flags.c_contiguous else (1, k)
        a, b, c_flat = a.reshape(-1), (b if b.flags.c_contiguous else b.T).reshape(-1), c.reshape(-1)
        parts = min(self.threads, m // self.products.NARROW_ROWS) if m * n * k >= PARALLEL_PRODUCT_MACS else 1
        if parts > 1 and _PRODUCT_LOCK.acquire(blocking=False):
            try:
                self.products.product(a, b, c_flat, m, n, k, sa_i, sa_k, sb_k, sb_j, parts)
            finally:
                _PRODUCT_LOCK.release()
        else:
            self.products.product_rows(a, b, c_flat, 0, m, n, k, sa_i, sa_k, sb_k, sb_j)
        return c

    def matmul(self, a: Any, b: Any, row_cost: int, shared: int = 0) -> Any:
        if self._takes(a, b, len(a), b.shape[-1], len(b)) and a.shape[1] == len(b):
            out = np.empty((len(a), b.shape[1]), dtype=np.float32)
            return self._product(a, b, out, sa_i=a.shape[1], sa_k=1)
        if not self.own_threads:  # BLAS spreads the one product
            return np.matmul(a, b)
        out = np.empty((len(a), b.shape[1]), dtype=np.result_type(a, b))

        def rows(i: slice) -> None:
            np.dot(a[i], b, out=out[i])  # (np.dot lets go of the GIL for any size; matmul over 500 elements)

        self.parallel_for(len(a), rows, row_cost, shared)
        return out

    def matmul_tn(self, a: Any, b: Any, out: Any = None) -> Any:
        """a^T b for a: (N, P), b: (N, Q), a sum over the N rows (dW = x^T dy). With many output
        rows (P), chunks of them, each a whole product; otherwise partial sums over chunks of N."""
        if self._takes(a, b, a.shape[-1], b.shape[-1], len(a)) and b.flags.c_contiguous and len(a) == len(b):
            if out is None or (
                type(out) is np.ndarray
                and out.shape == (a.shape[1], b.shape[1])
                and out.dtype == np.float32
                and out.flags.c_contiguous
            ):
                out = np.empty((a.shape[1], b.shape[1]), dtype=np.float32) if out is None else out
                return self._product(a, b, out, sa_i=1, sa_k=a.shape[1])
        if not self.own_threads:  # BLAS spreads the one product (an MLP's step: no bookkeeping)
            return np.matmul(a.T, b, out=out)
        n, p = a.shape
        q = b.shape[1]
        row_cost = p + q + p * q // 16  # a row of a and b, and its p * q multiply-adds
        out = np.empty((p, q), dtype=np.result_type(a, b)) if out is None else out
        if len(self.chunks(n, row_cost, p * q)) == 1:  # one product, no copies
            self.parallel_for(1, lambda _: np.matmul(a.T, b, out=out), n * row_cost)
            return out
        if p >= 2 * MIN_OUTPUT_ROWS:

            def outputs(j: slice) -> None:
                np.matmul(a[:, j].T, b, out=out[j])

            output_cost = n + n * q // 16  # a column of a, and its n * q multiply-adds
            # all of b read by every chunk, and chunks of at least MIN_OUTPUT_ROWS rows
            shared = max(b.size, MIN_OUTPUT_ROWS * output_cost // 8)
            self.parallel_for(p, outputs, output_cost, shared)
            return out
        return _into(out, self.parallel_sum(n, lambda i: np.dot(a[i].T, b[i]), row_cost, shared=p * q))

    def sum_rows(self, x: Any, out: Any = None) -> Any:
        """sum_n x[n] as the product 1^T x: BLAS's gemv reads x once, at memory speed, while NumPy's
        reduction along the rows of a narrow array is several times slower. One call: handing
        chunks of it to a thread costs more than it saves."""
        if x.ndim != 2 or len(x) == 0:
            return Ops.sum_rows(self, x, out)
        if self._takes_sum(x, out):
            out = np.empty(x.shape[1], dtype=np.float32) if out is None else out
            self.products.sum_rows(x.reshape(-1), out)
            return out
        ones = self._constant(1, len(x), x.dtype)
        if not self.own_threads:
            return np.dot(ones, x, out=out)
        out = np.empty(x.shape[1:], dtype=x.dtype) if out is None else out
        self.parallel_for(1, lambda _: np.dot(ones, x, out=out), x.size)
        return out

    def add_bias(self, a: Any, b: Any) -> Any:
        if self.kernels is not None and a.ndim == 2 and b.shape == (a.shape[1],) and _loop_ready(a, b):
            self.kernels.add_bias(a, b)
            return a
        return Ops.add_bias(self, a, b)

    def bias_relu(self, a: Any, b: Any) -> Any:
        """The reference's max(a + b, 0), against an array of zeros: NumPy (2.4) has no vector loop
        for maximum with a scalar, and that pass took 2-4x as long as with an array (a first
        convolution's 16-image chunk: bias and ReLU 0.20 -> 0.11 ms)."""
        if self.kernels is not None and b.ndim == 1 and a.ndim and a.shape[-1] == b.size and _loop_ready(a, b):
            self.kernels.bias_relu(a if a.ndim == 2 else a.reshape(-1, b.size), b)  # one pass
            return a
        a += b
        return np.maximum(a, self._constant(0, a.size, a.dtype).reshape(a.shape), out=a)

    # The elementwise chains: each element's arithmetic is the reference's, only spread out.

    def normalize(self, pixels: Any, scale: float, shift: float, dtype: Any) -> Any:
        return self.normalize_rows(pixels, slice(None), scale, shift, dtype)

    def normalize_rows(self, images: Any, idx: Any, scale: float, shift: float, dtype: Any) -> Any:
        if self.kernels is not None and images.dtype == np.uint8 and images.flags.c_contiguous and images.ndim >= 1:
            return self._normalize_compiled(images, idx, scale, shift, dtype)
        if not self.own_threads:
            return Ops.normalize(self, images[idx], scale, shift, dtype)
        # Each chunk gathers its rows and converts them while they are in cache.
        rows = images[idx] if isinstance(idx, slice) else None
        n = len(rows) if rows is not None else len(idx)
        x = np.empty((n, *images.shape[1:]), dtype=dtype)

        def part(i: slice) -> None:
            x[i] = Ops.normalize(self, rows[i] if rows is not None else images[idx[i]], scale, shift, dtype)

        self.parallel_for(n, part, 4 * x[:1].size)
        return x

    def _normalize_compiled(self, images: Any, idx: Any, scale: float, shift: float, dtype: Any) -> Any:
        """normalize_rows by the compiled gather-and-convert loop, in chunks on own threads."""
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(len(images)))
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            return Ops.normalize(self, images[idx], scale, shift, dtype)
        x = np.empty((len(idx), *images.shape[1:]), dtype=dtype)
        rows_in = images if images.ndim == 2 else images.reshape(len(images), -1)
        rows_out = x if x.ndim == 2 else x.reshape(len(idx), -1)
        scale, shift = x.dtype.type(scale), x.dtype.type(shift)
        if self.own_threads:
            self.parallel_for(
                len(idx), lambda i: self._gather(rows_in, idx[i], scale, shift, rows_out[i]), 4 * rows_out.shape[1]
            )
        else:  # one call, no closure or views (at a batch of 64 the wrapping took 2.6 us around a 3 us loop)
            self._gather(rows_in, idx, scale, shift, rows_out)
        return x

    def _gather(self, images: Any, idx: Any, scale: Any, shift: Any, x: Any) -> None:
        """x = images[idx] * scale - shift by the compiled loop; an index out of range raises."""
        bad = self.kernels.normalize_rows(images, idx, scale, shift, x)
        if bad >= 0:
            raise IndexError(f"index {idx[bad]} is out of bounds for axis 0 with size {len(images)}")

    def first_max_slot(self, packed: Any, y: Any, out: Any) -> Any:
        """The reference's slot as first = b_0 (1 + b_1 (1 + ... (1 + b_{S-2}))), b_p = [packed[p] < y]:
        one-byte passes, where NumPy's argmin along the first axis took ~7x as long."""
        out[...] = 0
        for p in reversed(range(len(packed) - 1)):
            out += 1
            out *= packed[p] < y
        return out

    def softmax_cross_entropy(self, z: Any, y: Any) -> tuple[Any, Any]:
        """The compiled loops (the exponents, NumPy's exp, then loss and gradient; any labels) where
        they can run; otherwise the reference's arithmetic on the transposed logits (C, N): NumPy
        reduces a (N, 10) array along its short rows ten times slower than along the long axis of
        its transpose. That only for the usual batch whose labels are all in 0..C-1 (a cheap check
        on the host); any other batch goes to the reference, NaN rows and all."""
        n, c = z.shape
        if self.kernels is not None and _loop_ready(z) and n and y.shape == (n,) and y.dtype.kind in "iu":
            dz = np.empty_like(z)  # the compiled loops: any labels, bad ones giving NaN rows
            limit = _LARGEST.get(z.dtype) or _LARGEST.setdefault(z.dtype, float(np.finfo(z.dtype).max))
            self.kernels.shift_by_row_max(z, dz)
            np.exp(dz, out=dz)  # the reference's own exp, vectorised
            return z.dtype.type(self.kernels.cross_entropy_from_exp(z, y, dz, limit)), dz
        if n == 0 or y.min() < 0 or y.max() >= c:
            return Ops.softmax_cross_entropy(self, z, y)
        rows = np.arange(n)
        shifted = z.T.copy()
        shifted -= shifted.max(axis=0)
        e = np.exp(shifted)
        sum_e = e.sum(axis=0)
        row_loss = np.log(sum_e)
        row_loss -= shifted[y, rows]
        dz = e
        dz /= sum_e
        dz[y, rows] -= 1
        dz /= n
        return row_loss.mean(), np.ascontiguousarray(dz.T)

    def count_correct(self, z: Any, y: Any) -> Any:
        if self.kernels is not None and _loop_ready(z) and z.ndim == 2 and y.shape == (len(z),):
            return self.kernels.count_correct(z, y)
        return Ops.count_correct(self, z, y)

    def relu_backward(self, dy: Any, y: Any) -> Any:
        flat = _flat(dy, y) if self.kernels is not None and dy.shape == y.shape else None
        if flat is not None:
            dx = np.empty_like(dy)
            self._run(self.kernels.relu_backward, (*flat, dx.reshape(-1)), (), 3)
            return dx
        if not self.own_threads or dy.size * 3 <= SERIAL_ELEMENTS:
            return Ops.relu_backward(self, dy, y)
        dx = np.empty_like(dy)

        def rows(i: slice) -> None:
            np.multiply(dy[i], y[i] > 0, out=dx[i])

        self.parallel_for(dy.shape[0], rows, dy[:1].size * 3)
        return dx

    def uniform(self, shape: tuple[int, ...], key: int, dtype: Any, offset: int = 0) -> Any:
        u = np.empty(shape, dtype=dtype)
        flat = u.reshape(-1)

        def part(i: slice) -> None:
            flat[i] = Ops.uniform(self, (i.stop - i.start,), key, dtype, offset + i.start)

        self.parallel_for(flat.size, part, 4)
        return u

    def _update_in_chunks(self, update: Callable[..., None], arrays: tuple[Any, ...], args: tuple, passes: int) -> None:
        """update(*arrays[i], *scratch, *args) over chunks of rows i, with three scratch arrays (of
        p[i]'s shape) the update writes its temporaries into: NumPy would otherwise allocate them
        afresh at every step, and glibc hands arrays of a few hundred KB back to the system and
        faults them in again (several times the arithmetic's time for a small network). A chunk longer
        than UPDATE_PIECE_ELEMENTS goes in pieces of that, so the scratch stays that small however
        large the network (scratch as long as all its parameters would be three more copies of it)."""
        p = arrays[0]
        if not self.own_threads and p.size <= UPDATE_PIECE_ELEMENTS:  # one piece: one call, no closure
            update(*arrays, *self._scratch(p.shape, p.dtype), *args)
            return
        row = max(p[:1].size, 1)
        piece = max(UPDATE_PIECE_ELEMENTS // row, 1)

        def part(i: slice) -> None:
            start, stop, _ = i.indices(p.shape[0])
            for first in range(start, stop, piece):
                j = slice(first, min(first + piece, stop))
                scratch = self._scratch((j.stop - first, *p.shape[1:]), p.dtype)
                update(*(None if a is None else a[j] for a in arrays), *scratch, *args)

        self.parallel_for(p.shape[0], part, passes * row)

    def _scratch(self, shape: tuple[int, ...], dtype: Any) -> tuple[Any, ...]:
        """Three arrays of `shape`, views of buffers kept per thread (chunks run on several; two
        trainers may share these ops) and grown as needed; the views are kept too (a step asks for
        the same shapes as the last)."""
        kept = getattr(self._local, "scratch", None)
        if kept is None:
            kept = self._local.scratch = {}
        views = kept.get((shape, dtype))
        if views is None:
            n = math.prod(shape)
            buffers = kept.get(dtype)
            if buffers is None or len(buffers[0]) < n:
                kept.clear()  # views of the old buffers would keep them alive
                buffers = kept[dtype] = tuple(np.empty(n, dtype=dtype) for _ in range(3))
            views = kept[(shape, dtype)] = tuple(b[:n].reshape(shape) for b in buffers)
        return views

    def _update_compiled(self, kernel: Callable[..., None], arrays: tuple[Any, ...], args: tuple) -> bool:
        """kernel(*flat arrays, *args), one pass over the parameters: True, or False where the
        arrays are not all contiguous of one dtype (the chains below take those)."""
        flat = _flat(*arrays) if self.kernels is not None else None
        if flat is None:
            return False
        self._run(kernel, flat, args, 2 + 3 * len(arrays))
        return True

    def _run(self, kernel: Callable[..., None], flat: tuple[Any, ...], args: tuple, cost: int) -> None:
        """kernel(*flat, *args) over 1-d arrays of one length (None passes through): in one call,
        or over chunks of them on own threads. (One call without closures or views: at a batch of
        64 the step is 0.12 ms, and each wrapper's microsecond showed.)"""
        if not self.own_threads:
            kernel(*flat, *args)
            return

        def part(i: slice) -> None:
            kernel(*(None if a is None else a[i] for a in flat), *args)

        self.parallel_for(flat[0].size, part, cost)

    def sgd_update(self, p: Any, g: Any, v: Any, lr: float, mu: float, nesterov: bool, wd: float) -> None:
        t = p.dtype.type
        if v is None:
            done = self._update_compiled(self.kernels and self.kernels.sgd, (p, g), (t(lr), t(wd)))
        else:
            args = (t(lr), t(mu), bool(nesterov), t(wd), smallest_normal(p.dtype))
            done = self._update_compiled(self.kernels and self.kernels.sgd_momentum, (p, g, v), args)
        if not done:
            self._update_in_chunks(_sgd, (p, g, v), (lr, mu, nesterov, wd), passes=6)

    def adam_update(
        self, p: Any, g: Any, m: Any, v: Any, lr: float, b1: float, b2: float, eps: float, step: int, wd: float,
        decoupled: bool,
    ) -> None:  # fmt: skip
        t = p.dtype.type
        # the reference's constants, computed in double and then cast, as NumPy casts a Python float
        args = (t(lr), t(b1), t(1 - b1), t(b2), t(1 - b2), t(eps), t(1 - b1**step), t(1 - b2**step), t(wd))
        args += (t(1 - lr * wd), bool(decoupled), smallest_normal(p.dtype))
        if not self._update_compiled(self.kernels and self.kernels.adam, (p, g, m, v), args):
            args = (lr, b1, b2, eps, step, wd, decoupled)
            self._update_in_chunks(_adam, (p, g, m, v), args, passes=10)

    def rmsprop_update(self, p: Any, g: Any, s: Any, lr: float, rho: float, eps: float, wd: float) -> None:
        t = p.dtype.type
        args = (t(lr), t(rho), t(1 - rho), t(eps), t(wd), smallest_normal(p.dtype))
        if not self._update_compiled(self.kernels and self.kernels.rmsprop, (p, g, s), args):
            self._update_in_chunks(_rmsprop, (p, g, s), (lr, rho, eps, wd), passes=8)


# The updates of nnx/ops.py, each operation the same (the same operands, in the same order, so
# the same bits: tests/test_cpu_ops.py checks), with the temporaries written into t1, t2, t3.


def _decayed(p: Any, g: Any, wd: float, t: Any) -> Any:
    """d = g + wd p (in t), or g itself without weight decay."""
    if not wd:
        return g
    np.multiply(p, wd, out=t)
    t += g
    return t


def _flush(a: Any, t: Any, spare: Any) -> None:
    """flush_subnormals(np, a) of nnx/ops.py, with |a| written into t and the mask into spare's
    memory (scratch of a's shape and dtype, as t)."""
    np.abs(a, out=t)
    mask = spare.reshape(-1).view(np.bool_)[: a.size].reshape(a.shape)
    np.greater_equal(t, smallest_normal(a.dtype), out=mask)
    np.multiply(a, mask, out=a)


def _sgd(p: Any, g: Any, v: Any, t1: Any, t2: Any, t3: Any, lr: float, mu: float, nesterov: bool, wd: float) -> None:
    d = _decayed(p, g, wd, t2)
    if v is None:
        p -= np.multiply(d, lr, out=t1)  # p -= lr d
        return
    v *= mu
    v += d
    _flush(v, t1, t3)
    if nesterov:  # p -= lr (d + mu v)
        np.multiply(v, mu, out=t1)
        t1 += d
        t1 *= lr
    else:  # p -= lr v
        np.multiply(v, lr, out=t1)
    p -= t1


def _adam(
    p: Any, g: Any, m: Any, v: Any, t1: Any, t2: Any, t3: Any,
    lr: float, b1: float, b2: float, eps: float, step: int, wd: float, decoupled: bool,
) -> None:  # fmt: skip
    if decoupled and wd:
        p *= 1 - lr * wd
    d = _decayed(p, g, 0.0 if decoupled else wd, t3)
    m *= b1
    m += np.multiply(d, 1 - b1, out=t1)  # m <- b1 m + (1 - b1) d
    np.multiply(d, d, out=t1)
    t1 *= 1 - b2
    v *= b2
    v += t1  # v <- b2 v + (1 - b2) d^2
    _flush(m, t1, t2)
    _flush(v, t1, t2)
    np.divide(m, 1 - b1**step, out=t1)  # m_hat
    np.divide(v, 1 - b2**step, out=t2)  # v_hat
    np.sqrt(t2, out=t2)
    t2 += eps
    t1 *= lr
    t1 /= t2
    p -= t1  # p -= lr m_hat / (sqrt(v_hat) + eps)


def _rmsprop(p: Any, g: Any, s: Any, t1: Any, t2: Any, t3: Any, lr: float, rho: float, eps: float, wd: float) -> None:
    d = _decayed(p, g, wd, t3)
    np.multiply(d, d, out=t1)
    t1 *= 1 - rho
    s *= rho
    s += t1  # s <- rho s + (1 - rho) d^2
    _flush(s, t1, t2)
    np.multiply(d, lr, out=t1)
    np.sqrt(s, out=t2)
    t2 += eps
    t1 /= t2
    p -= t1  # p -= lr d / (sqrt(s) + eps)


def _into(out: Any, total: Any) -> Any:
    """`total`, written into `out` when one was given."""
    if out is None:
        return total
    out[...] = total
    return out
