"""How uint8 pixels become the network's float input; recorded in every model file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from nnx.backend import Backend

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class Preprocess:
    """x = (pixels / 255 - mean) / std, done on the device batch by batch."""

    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def named(cls, mode: str) -> Preprocess:
        return cls(MNIST_MEAN, MNIST_STD) if mode == "standard" else cls()

    def __call__(self, pixels: Any, backend: Backend) -> Any:
        """pixels: uint8 (N, 784) on the backend -> backend.dtype (N, 784)."""
        return backend.ops.normalize(pixels, *self._scale_shift(), backend.dtype)

    def rows(self, images: Any, idx: Any, backend: Backend) -> Any:
        """The same for the batch images[idx], gathered and converted in one go."""
        return backend.ops.normalize_rows(images, idx, *self._scale_shift(), backend.dtype)

    def _scale_shift(self) -> tuple[float, float]:
        return 1.0 / (255.0 * self.std), self.mean / self.std

    def to_dict(self) -> dict[str, Any]:
        return {"scale": "1/255", **asdict(self)}
