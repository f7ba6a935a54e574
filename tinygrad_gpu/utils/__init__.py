"""tg.utils: helpers around training (data sharding for several processes)."""

from . import data

__all__ = ["data"]
