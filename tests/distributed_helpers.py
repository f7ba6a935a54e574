"""Simulated ranks in one process: a process group whose collectives complete on flush()."""


from tinygrad_gpu import backend


class SimulatedGroup:
    """world_size ranks in one process; each rank's collectives are recorded and completed by flush().

    flush() checks that every rank issued the same collectives (op, size, dtype) in the same order,
    as NCCL requires, then computes them on the recorded arrays in place.
    """

    def __init__(self, world_size):
        self.world_size = world_size
        self.calls = [[] for _ in range(world_size)]
        self.completed = []  # (kind, size) of every collective flushed so far

    def rank(self, rank):
        """The group as seen from one rank (what DistributedDataParallel is given)."""
        return _RankView(self, rank)

    def flush(self):
        lengths = {len(calls) for calls in self.calls}
        assert len(lengths) == 1, f"ranks issued different numbers of collectives: {lengths}"
        for entries in zip(*self.calls):
            kinds = {(kind, arg, a.size, a.dtype) for kind, arg, a in entries}
            assert len(kinds) == 1, f"ranks disagree on a collective: {kinds}"
            kind, arg, first = entries[0]
            arrays = [a for _, _, a in entries]
            xp = backend.array_module(backend.device_of(first))
            if kind == "all_reduce":
                stacked = xp.stack([a.copy() for a in arrays])
                result = {"sum": stacked.sum(0), "avg": stacked.mean(0), "max": stacked.max(0),
                          "min": stacked.min(0)}[arg]
            else:  # broadcast from rank `arg`
                result = arrays[arg].copy()
            for a in arrays:
                a[...] = result
            self.completed.append((kind, first.size))
        self.calls = [[] for _ in range(self.world_size)]


class _RankView:
    def __init__(self, group, rank):
        self.group, self.rank, self.world_size = group, rank, group.world_size

    def all_reduce(self, array, op="sum", stream=None):
        assert array.flags.c_contiguous
        self.group.calls[self.rank].append(("all_reduce", op, array))

    def broadcast(self, array, src=0, stream=None):
        assert array.flags.c_contiguous
        self.group.calls[self.rank].append(("broadcast", src, array))
