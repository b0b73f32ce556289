"""Bounded caches that make slider moves cheap without changing a single pixel.

`StepCache`: during the delayed-conditioning prefix (steps 0..start, W+ scale 0) nothing depends on the
identity, its edits or the adapter scale. After that prefix the latent, the scheduler (its step index
and, for multistep solvers, its stored model outputs) and the generator state are saved; a later request
that differs only in identity, edits or scale resumes from there. Entries are deep copies made only once
the prefix has completed, so a cancelled run never leaves a partial entry, and every hit hands out a
fresh copy so a resumed run cannot alter the entry.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """A small thread-safe least-recently-used map."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


@dataclass(frozen=True)
class StepKey:
    """Everything the identity-free prefix depends on (one variation)."""

    model_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    scheduler: str
    guidance: float
    freeu: bool
    prefix_end: int  # last step index of the prefix (inclusive)
    device: str
    dtype: str
    loras: tuple[Any, ...] = ()  # (file hash, UNet weight, text weight) per LoRA
    controls: tuple[Any, ...] = ()  # ControlSpec.key() per ControlNet (its image digest and settings)


@dataclass(eq=False)
class StepState:
    """The loop's state after step `step` (inclusive)."""

    step: int
    latents: Any  # torch.Tensor
    scheduler: Any
    generator_state: Any  # torch.ByteTensor (CPU generator state)

    def copy(self) -> StepState:
        return StepState(
            self.step, self.latents.clone(), copy.deepcopy(self.scheduler), self.generator_state.clone()
        )


class StepCache:
    """LRU of `StepState` by `StepKey`; stores and returns independent copies."""

    def __init__(self, capacity: int = 8) -> None:
        self._lru: LRU[StepState] = LRU(capacity)

    def get(self, key: StepKey) -> StepState | None:
        state = self._lru.get(key)
        return None if state is None else state.copy()

    def put(self, key: StepKey, state: StepState) -> None:
        if self._lru.capacity:
            self._lru.put(key, state.copy())

    def clear(self) -> None:
        self._lru.clear()

    @property
    def hits(self) -> int:
        return self._lru.hits

    @property
    def misses(self) -> int:
        return self._lru.misses

    def __len__(self) -> int:
        return len(self._lru)

    def __contains__(self, key: StepKey) -> bool:
        return key in self._lru
