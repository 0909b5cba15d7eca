"""The runner's heap once it has started: frozen, and young garbage collected in larger steps.

After start-up a runner holds a large heap that never changes (modules, compiled flows, schemas,
adapters); every full collection walked all of it again, and the default threshold (700
allocations) ran a young collection every few messages. A page of 500 meter readings promoted enough
objects to trigger full collections of ~60 ms each (gc.callbacks, bench/meter_pull.py: 14 of them,
840 ms, in one run). `settle()` moves the start-up heap out of the collector's sight (`gc.freeze`)
and collects young objects every GEN0 allocations; cyclic garbage is still collected, a little later.
"""

from __future__ import annotations

import gc

GEN0 = 20_000


def settle() -> None:
    """Call once the runner has started (runner.py run; the benchmarks, as a runner does)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0, gen1, gen2)
