"""Out of memory: an error that says how much was asked for and what is in use, and a process that goes on.

CuPy raises its own OutOfMemoryError (a MemoryError) after its pool has already given its cached
blocks back to the driver and retried. The kernel table, matmul, the factories and device moves
turn that (and NumPy's MemoryError in the factories) into ``tg.OutOfMemoryError`` with the size
asked for and the pool's figures. Nothing is left half-done: free tensors (``del``) and go on.
"""

from __future__ import annotations


class OutOfMemoryError(RuntimeError, MemoryError):
    """An allocation failed; the message names the size asked for and the memory in use."""


def format_bytes(count: int | None) -> str:
    """'3.64 TiB (4,000,000,000,000 bytes)'; 'an unknown amount' for None."""
    if count is None:
        return "an unknown amount"
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{value:.2f} {unit} ({count:,} bytes)" if unit != "B" else f"{count:,} bytes"


def cuda_pool_bytes() -> tuple[int, int] | None:
    """(bytes in use by arrays, bytes held from the driver) of CuPy's default pool; None without CuPy."""
    try:
        from .backend import cupy_module

        pool = cupy_module().get_default_memory_pool()
        return pool.used_bytes(), pool.total_bytes()
    except Exception:  # no CuPy or no GPU: the error message simply leaves the figures out
        return None


def out_of_memory(error: MemoryError, device: str, what: str,
                  requested: int | None = None) -> OutOfMemoryError:
    """The OutOfMemoryError to raise from `error`, for `what` (an op or factory) on `device`."""
    if requested is None:
        requested = getattr(error, "_size", None)  # CuPy's OutOfMemoryError knows the request
    message = f"{what}: out of memory on {device} asking for {format_bytes(requested)}"
    pool = cuda_pool_bytes() if device == "cuda" else None
    if pool is not None:
        used, held = pool
        message += (f"; CuPy's memory pool has {format_bytes(used)} in use by arrays and holds "
                    f"{format_bytes(held)} from the driver")
    message += (". Free tensors you no longer need (del them, and their gradients and optimizer state), "
                "or use smaller batches, and try again")
    return OutOfMemoryError(message)

