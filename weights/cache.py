"""One cache of loaded models for the whole pack, keyed by (kind, path, dtype, device).

A second run of the same workflow (or a second node using the same model) loads nothing.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class ModelCache:
    def __init__(self, max_items: int = 16):
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.RLock()
        self.max_items = max_items
        self.stats = CacheStats()

    @staticmethod
    def make_key(kind: str, path: Any, dtype: Any = None, device: Any = None, **extra) -> tuple:
        return (kind, str(path), str(dtype), str(device)) + tuple(sorted((k, str(v)) for k, v in extra.items()))

    def get_or_load(self, key: tuple, loader: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.stats.hits += 1
                return self._items[key]
            self.stats.misses += 1
            value = loader()
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return value

    def __contains__(self, key: tuple) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def evict(self, kind: str | None = None) -> int:
        with self._lock:
            keys = [k for k in self._items if kind is None or k[0] == kind]
            for k in keys:
                del self._items[k]
            return len(keys)

    def clear(self) -> None:
        self.evict(None)
        self.stats = CacheStats()


MODEL_CACHE = ModelCache()


def cached(kind: str, path: Any, loader: Callable[[], Any], dtype: Any = None, device: Any = None, **extra) -> Any:
    """Load through the shared cache; a model that cannot be loaded gives one line naming the model and its path."""
    return MODEL_CACHE.get_or_load(ModelCache.make_key(kind, path, dtype, device, **extra),
                                   lambda: load_clearly(kind, path, loader))


def load_clearly(kind: str, path: Any, loader: Callable[[], Any]) -> Any:
    """Run ``loader`` and turn what a damaged, incomplete or unsafe model file raises inside any library
    (transformers, diffusers, safetensors, torch) into one clear line; errors already phrased for the user
    (a missing model, a refused pickle) pass unchanged."""
    import pickle

    from ..errors import UserError, first_line
    from .safe_load import UnsafeCheckpointError, refusal
    try:
        return loader()
    except (UserError, UnsafeCheckpointError, FileNotFoundError, MemoryError):
        raise
    except pickle.UnpicklingError as e:  # transformers / diffusers loading a .bin weights-only
        raise refusal(path, e) from e
    except Exception as e:
        if type(e).__name__ == "SafetensorError" or isinstance(e, (OSError, ValueError, EOFError, KeyError)):
            raise UserError(f"Could not load the {kind} model at {path}: {first_line(e)}. The files may be damaged "
                            f"or incomplete: download the model again or check the folder.") from e
        raise
