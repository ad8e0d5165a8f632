"""Target-domain reference images drawn by the pixel-alignment baselines (FDA, histogram matching)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from monai.transforms import LoadImage

__all__ = ["TargetReferences"]


class TargetReferences:
    """A list of target-domain references, loaded on first use (files) and optionally cached.

    Args:
        items: channel-first arrays/tensors, or image file paths (loaded with MONAI
            ``LoadImage(ensure_channel_first=True)``). Target labels are never needed.
        transform: applied to each loaded reference (e.g. the images' intensity normalisation).
        cache: keep loaded references in memory.
    """

    def __init__(self, items: Sequence[Any], transform: Callable | None = None, cache: bool = True) -> None:
        self.items = list(items)
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, Any] = {}
        self._loader = LoadImage(image_only=True, ensure_channel_first=True)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        if i in self._cache:
            return self._cache[i]
        ref = self.items[i]
        if isinstance(ref, (str, bytes)) or hasattr(ref, "__fspath__"):
            ref = self._loader(ref)
        if self.transform is not None:
            ref = self.transform(ref)
        if self.cache:
            self._cache[i] = ref
        return ref
