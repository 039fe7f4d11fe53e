"""Memory a network needs, checked before anything is allocated: a typo such as
``filters=1000000000`` or ``--size 60000,60000`` is refused with a message instead of ending
in an out-of-memory error (or the kernel killing the process) halfway through."""
from __future__ import annotations

import os
from dataclasses import dataclass

from netsurgery.errors import UsageError

GIB = 1 << 30


def _meminfo(key: str) -> int | None:
    """A /proc/meminfo entry in bytes (None when unknown: not Linux, or no such entry)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def physical_memory() -> int:
    """Bytes of RAM of this machine (MemTotal; 0 when unknown)."""
    total = _meminfo("MemTotal")
    if total is not None:
        return total
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def available_memory() -> int:
    """Bytes of RAM that can be allocated now without swapping (MemAvailable; the machine's
    RAM when unknown, 0 when that is unknown too)."""
    available = _meminfo("MemAvailable")
    return available if available is not None else physical_memory()


@dataclass(frozen=True)
class MemoryEstimate:
    """float32 bytes of a network: its parameters and the outputs of all its layers for
    one image (an upper bound of what inference keeps at once)."""

    params: int
    activations: int

    def total(self, batch: int = 1) -> int:
        return self.params + self.activations * batch


def estimate(network) -> MemoryEstimate:
    params = sum(a.count for spec in network.layers for a in spec.weight_arrays())
    outputs = sum(spec.out_shape.c * spec.out_shape.h * spec.out_shape.w
                  for spec in network.layers)
    net = network.net
    outputs += net.channels * net.width * net.height
    return MemoryEstimate(4 * params, 4 * outputs)


def check_fits(network, batch: int = 1, limit: int | None = None) -> MemoryEstimate:
    """Refuse a network that would need more memory than the machine has."""
    need = estimate(network)
    limit = physical_memory() if limit is None else limit
    if limit and need.total(batch) > limit:
        net = network.net
        raise UsageError(
            f"{network.path or 'network'} at {net.width}x{net.height}: needs about "
            f"{need.total(batch) / GIB:.1f} GiB ({need.params / GIB:.1f} GiB of parameters, "
            f"{need.activations * batch / GIB:.1f} GiB of layer outputs), more than the "
            f"{limit / GIB:.1f} GiB of this machine; check the cfg's sizes and --size")
    return need
