"""The prefix cache: finished prompts' KV states in memory, and on disk across restarts.

Seams, one sentence each (docs/decisions/prefix-cache-tiers.md says why):
- Keys are token prefixes. Turn N+1 of a conversation renders turn N's prompt and answer again,
  so turn N's entry (prompt + generated tokens) is a prefix of it up to where the chat template
  renders the answer differently from the tokens generated (usually the last token or two); an
  attention cache can be trimmed, so one entry serves every shorter prefix of itself: the end of
  the system prompt and tools, the history before the last user turn, the whole prompt.
- Memory tier: mlx-lm's `LRUPromptCache` (a token trie, least recently used out past a byte cap;
  an entry that extends another replaces it). A fetch returns a trimmed copy.
- Disk tier (`DiskTier`): every entry stored in memory is also written to
  `<dir>/<model>/<weights fingerprint>/<sha256 of the tokens>.safetensors`, plus a checkpoint
  file for the system prompt + tools of a chat (`want_checkpoint`), which new conversations with
  the same agent prompt share and which outlives the conversations' own files under the byte cap.
  Only caches of plain `KVCache` layers go to disk (a rotating or recurrent state cannot be cut
  at a prefix).
- A fetch takes the longest prefix of either tier; a disk entry is read only when it covers at
  least `min_disk_gain` tokens more than memory does, and is then kept in memory too.
- Writes leave the engine thread: it hands numpy views of the (evaluated) arrays (of copies on
  CUDA, see `_host_views`) to one writer thread through a short queue that keeps the newest jobs
  (a write superseded by a longer one of the same conversation is dropped); the writer evicts
  least recently used files until the new one fits the cap, writes a temporary file and renames
  it, so a kill mid-write leaves no file that a reader could take for whole. Reads happen on the
  engine thread, on a miss in memory, and cost less than the prefill they replace.
- The folder is scanned when the engine starts; a file that cannot be parsed, or was written for
  other weights or another model, is skipped with a warning (never an error to a client).
- Then (`preload`) the most recently used files are read into the memory tier, newest first, up
  to a byte budget: the conversation that was running before a restart finds its state in
  memory, read from disk while the server started rather than in its first turn (as
  PostgreSQL's autoprewarm reloads the buffers a server held). A file that is a prefix of one
  already read is skipped (the longer entry serves it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "impetus-prefix-cache/1"
SUFFIX = ".safetensors"
# safetensors dtype names of the KV dtypes, and the numpy dtype their bytes are moved as
# (numpy has no bfloat16: its bytes travel as uint16).
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16),
           "bfloat16": ("BF16", np.uint16)}  # fmt: skip
_WANTED_MAX = 64  # checkpoint prefixes remembered between admission and the sequence's end


def token_key(tokens: Any) -> str:
    """The file name stem of a token prefix."""
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:32]


def weights_fingerprint(model_dir: Path, *extra: str) -> str:
    """A cheap, stable name for the weights a KV state was computed with: the names, sizes and
    modification times of the folder's weight files and config (not their contents: hashing GBs
    at every load costs seconds), plus `extra` (how they were loaded, the MLX version). A model
    imported again, or loaded another way, gets a fresh folder rather than stale states."""
    h = hashlib.sha256()
    for f in sorted(model_dir.iterdir()):
        if f.suffix == ".safetensors" or f.name in ("config.json", "model.safetensors.index.json"):
            st = f.stat()
            h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(f"{e}\n".encode())
    return h.hexdigest()[:16]


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def _starts_with(tokens: np.ndarray, prefix: np.ndarray) -> bool:
    return len(prefix) <= len(tokens) and common_prefix(prefix, tokens) == len(prefix)


def _supersedes(job: _Job, tokens: np.ndarray, checkpoint: bool) -> bool:
    """Whether `job` makes a file (or pending job) of `tokens` useless: both hold a whole
    sequence, and `tokens` is a prefix of the job's (the job's cache trims to it)."""
    return not (job.checkpoint or checkpoint) and _starts_with(job.tokens[: job.length], tokens)


@dataclass
class PrefixStats:
    """What /api/metrics reports of the prefix cache (EngineStats carries it)."""

    memory_bytes: int = 0
    disk_bytes: int = 0
    disk_limit_bytes: int = 0  # 0: no disk tier
    memory_hits: int = 0
    disk_hits: int = 0  # read from disk by the fetch, or preloaded and hit for the first time
    misses: int = 0
    preloaded_bytes: int = 0  # read from disk into memory at start-up (`preload`)


# -- the disk tier ------------------------------------------------------------------------------


@dataclass
class DiskEntry:
    key: str
    tokens: np.ndarray
    nbytes: int
    used: float  # time of the last write or hit: the LRU order
    checkpoint: bool


@dataclass
class _Job:
    """One file for the writer: the first `length` tokens of `tokens`, and per layer the keys'
    and values' arrays (numpy views of evaluated MLX arrays, sliced to `length` when written)."""

    tokens: np.ndarray
    length: int
    layers: list[tuple[np.ndarray, np.ndarray]]
    dtype: str  # safetensors name
    checkpoint: bool
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = token_key(self.tokens[: self.length])

    def nbytes(self) -> int:
        per_token = sum(k[..., :1, :].nbytes + v[..., :1, :].nbytes for k, v in self.layers)
        return per_token * self.length


class DiskTier:
    """Files of KV states under one folder, at most `cap_bytes` together (see the module
    docstring). The engine thread calls `best`, `load` and `put`; one writer thread writes."""

    def __init__(
        self, folder: Path, cap_bytes: int, *, model: str, weights: str, queue_size: int = 2
    ) -> None:
        self.folder = folder
        self.cap_bytes = cap_bytes
        self.model = model
        self.weights = weights
        self.queue_size = queue_size
        self.dropped = 0  # jobs left unwritten: superseded, over the cap, or the queue full
        self._entries: dict[str, DiskEntry] = {}
        self._lock = threading.Lock()  # guards _entries and _pending
        self._wake = threading.Condition(self._lock)
        self._pending: deque[_Job] = deque()
        self._closing = False
        folder.mkdir(parents=True, exist_ok=True)
        self._scan()
        self._writer = threading.Thread(target=self._write_loop, name="prefix-disk", daemon=True)
        self._writer.start()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def entries(self) -> list[DiskEntry]:
        """The files indexed now (what `close` has flushed, once it returns)."""
        with self._lock:
            return list(self._entries.values())

    def has(self, key: str) -> bool:
        with self._lock:
            return key in self._entries or any(j.key == key for j in self._pending)

    # -- reading (engine thread) -----------------------------------------------------------------

    def best(self, tokens: np.ndarray) -> tuple[DiskEntry | None, int]:
        """The entry sharing the longest prefix with `tokens`, and that prefix's length."""
        with self._lock:
            entries = list(self._entries.values())
        found, best = None, 0
        for e in entries:
            n = common_prefix(e.tokens, tokens)
            if n > best:
                found, best = e, n
        return found, best

    def load(self, entry: DiskEntry) -> list[Any] | None:
        """The entry's cache as `KVCache` layers, or None (with a warning) if its file is gone or
        unreadable; an unreadable file (its header was ours) is removed."""
        path = self._path(entry.key)
        try:
            cache = _read_cache(path)
            os.utime(path)
        except Exception as exc:
            log.warning("prefix cache: skipping %s: %s", path, exc)
            with self._lock:
                if self._entries.get(entry.key) is entry:  # not rewritten meanwhile
                    del self._entries[entry.key]
                    path.unlink(missing_ok=True)
            return None
        with self._lock:
            entry.used = time.time()
        return cache

    # -- writing ---------------------------------------------------------------------------------

    def put(self, job: _Job) -> None:
        """Queue a file; a pending job for a prefix of it, or the oldest past `queue_size`, is
        dropped (the newest state of a conversation is the one worth writing)."""
        with self._lock:
            if job.key in self._entries:
                self._entries[job.key].used = time.time()
                return
            for old in list(self._pending):
                if _supersedes(job, old.tokens[: old.length], old.checkpoint):
                    self._pending.remove(old)
                    self.dropped += 1
            self._pending.append(job)
            while len(self._pending) > self.queue_size:
                self._pending.popleft()
                self.dropped += 1
            self._wake.notify()

    def close(self, timeout_s: float = 60.0) -> None:
        """Write what is queued (for up to `timeout_s`), then stop the writer."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._writer.join(timeout_s)

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
            try:
                self._write(job)
            except Exception:  # a full disk, a removed folder: log it, keep serving
                log.exception("prefix cache: could not write %s", self._path(job.key))

    def _write(self, job: _Job) -> None:
        size = job.nbytes()
        header = self._header(job)
        size += len(header) + 8
        if size > self.cap_bytes:
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            victims = self._make_room(size, job)
        for key in victims:
            self._path(key).unlink(missing_ok=True)
        path = self._path(job.key)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for k, v in job.layers:
                for a in (k, v):  # f.write releases the GIL: the engine thread keeps stepping
                    f.write(np.ascontiguousarray(a[..., : job.length, :]).data)
        os.replace(tmp, path)
        with self._lock:
            self._entries[job.key] = DiskEntry(
                job.key, job.tokens[: job.length].copy(), size, time.time(), job.checkpoint
            )

    def _make_room(self, size: int, job: _Job) -> list[str]:
        """Under the lock: drop the entries that the new file supersedes (a conversation's
        earlier turn, a prefix of it), then the least recently used, until `size` fits."""
        victims = []
        for e in list(self._entries.values()):
            if _supersedes(job, e.tokens, e.checkpoint):
                victims.append(e.key)
            elif e.checkpoint and _starts_with(job.tokens, e.tokens):
                e.used = time.time()  # a system prompt in use stays
        for key in victims:
            del self._entries[key]
        total = sum(e.nbytes for e in self._entries.values())
        for e in sorted(self._entries.values(), key=lambda e: e.used):
            if total + size <= self.cap_bytes:
                break
            del self._entries[e.key]
            victims.append(e.key)
            total -= e.nbytes
        return victims

    def _header(self, job: _Job) -> bytes:
        meta = {
            "format": FORMAT,
            "model": self.model,
            "weights": self.weights,
            "checkpoint": "1" if job.checkpoint else "0",
            "tokens": json.dumps(job.tokens[: job.length].tolist()),
        }
        head: dict[str, Any] = {"__metadata__": meta}
        offset = 0
        for i, (k, v) in enumerate(job.layers):
            for name, a in (("keys", k), ("values", v)):
                shape = [*a.shape[:-2], job.length, a.shape[-1]]
                n = int(np.prod(shape)) * a.itemsize
                head[f"{i}.{name}"] = {
                    "dtype": job.dtype, "shape": shape, "data_offsets": [offset, offset + n],
                }  # fmt: skip
                offset += n
        raw = json.dumps(head).encode()
        return raw + b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes

    # -- the folder ------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def _scan(self) -> None:
        """Index the folder's files; remove temporary files of a write that was killed."""
        for tmp in self.folder.glob(f".*{SUFFIX}.tmp"):
            tmp.unlink(missing_ok=True)
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                entry = self._read_entry(path)
            except Exception as exc:
                log.warning("prefix cache: skipping %s: %s", path, exc)
                continue
            self._entries[entry.key] = entry

    def _read_entry(self, path: Path) -> DiskEntry:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 64 << 20:
                raise ValueError("not a safetensors file")
            meta = json.loads(f.read(n))["__metadata__"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"not a prefix-cache file ({meta.get('format')!r})")
        if (meta.get("model"), meta.get("weights")) != (self.model, self.weights):
            raise ValueError(f"written for {meta.get('model')!r} with other weights")
        tokens = np.asarray(json.loads(meta["tokens"]), dtype=np.int32)
        if token_key(tokens) != path.stem:
            raise ValueError("its name does not match its tokens")
        st = path.stat()
        return DiskEntry(path.stem, tokens, st.st_size, st.st_mtime, meta.get("checkpoint") == "1")


def _read_cache(path: Path) -> list[Any]:
    """`KVCache` layers from a file `DiskTier` wrote; raises on anything short or malformed.

    `mx.load` reads the file into the arrays' own memory (one copy, where reading into numpy
    and building arrays from it made two: 110 MB in 9 ms against 17-78 ms here). Its reading is
    lazy, so the arrays are evaluated here: a short file fails now, not in a decode step."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    arrays = mx.load(str(path), format="safetensors")
    assert isinstance(arrays, dict)  # a safetensors file loads as a dict of arrays
    layers = len(arrays) // 2
    if layers <= 0 or len(arrays) % 2:
        raise ValueError("no layers")
    cache = []
    for i in range(layers):
        c = KVCache()
        c.keys, c.values = arrays[f"{i}.keys"], arrays[f"{i}.values"]
        c.offset = int(c.keys.shape[2])
        cache.append(c)
    mx.eval(*arrays.values())
    return cache


# -- both tiers ---------------------------------------------------------------------------------


class PrefixStore:
    """The engine's prefix cache: `fetch` at admission, `insert` when a sequence ends (both on
    the engine thread), `close` at shutdown."""

    def __init__(
        self,
        model: str,
        memory_bytes: int,
        disk: DiskTier | None = None,
        *,
        min_disk_gain: int = 16,
    ) -> None:
        from mlx_lm.models.cache import LRUPromptCache

        self.model = model
        self.memory = (
            LRUPromptCache(max_size=1 << 30, max_bytes=memory_bytes) if memory_bytes > 0 else None
        )
        self.disk = disk
        self.min_disk_gain = min_disk_gain
        self._stats = PrefixStats()
        self._wanted: OrderedDict[str, int] = OrderedDict()  # checkpoint key -> length
        self._preloaded: list[np.ndarray] = []  # tokens of preloaded entries not yet hit

    def stats(self) -> PrefixStats:
        """A snapshot; any thread may ask."""
        memory, disk, s = self.memory, self.disk, self._stats
        return PrefixStats(
            memory_bytes=memory.nbytes if memory is not None else 0,
            disk_bytes=disk.nbytes if disk is not None else 0,
            disk_limit_bytes=disk.cap_bytes if disk is not None else 0,
            memory_hits=s.memory_hits,
            disk_hits=s.disk_hits,
            misses=s.misses,
            preloaded_bytes=s.preloaded_bytes,
        )

    def preload(self, budget_bytes: int) -> int:
        """Read the disk tier's most recently used entries into the memory tier, newest first,
        while they fit `budget_bytes` and the memory tier's cap; one that is a prefix of another
        chosen is left out (the longer one serves it). Returns the bytes read. On CUDA the
        arrays are copied on the device once read: `mx.load` fills host-side pages of managed
        memory, which the GPU would otherwise migrate during the first turn's prefill (~37 ms
        against ~10 on an H200)."""
        if self.disk is None or self.memory is None:
            return 0
        import mlx.core as mx

        budget = min(budget_bytes, self.memory.max_bytes)
        chosen: list[DiskEntry] = []  # newest first
        for entry in sorted(self.disk.entries(), key=lambda e: e.used, reverse=True):
            if any(_starts_with(c.tokens, entry.tokens) for c in chosen):
                continue  # a prefix of one chosen: served by it
            kept = [c for c in chosen if not _starts_with(entry.tokens, c.tokens)]
            if sum(c.nbytes for c in kept) + entry.nbytes <= budget:
                chosen = [*kept, entry]  # the memory tier would drop its prefixes anyway
        used = 0
        for entry in sorted(chosen, key=lambda e: e.used):  # the newest inserted last
            cache = self.disk.load(entry)
            if cache is None:
                continue
            if _device_memory(mx):
                for c in cache:
                    c.keys, c.values = c.keys + 0, c.values + 0  # written by the GPU: on it
                mx.eval([c.state for c in cache])
            self.memory.insert_cache(self.model, entry.tokens.tolist(), Layers(cache))
            self._preloaded.append(entry.tokens)
            used += entry.nbytes
        self._stats.preloaded_bytes = used
        return used

    @property
    def preloaded_tokens(self) -> list[np.ndarray]:
        """The tokens of the entries read at load and not yet hit, newest first."""
        return self._preloaded[::-1]

    def fetch(self, tokens: list[int]) -> tuple[list[Any] | None, list[int]]:
        """The cache of the longest cached prefix of `tokens` (a copy, trimmed to it) and the
        tokens left to prefill: at least the last one, whose logits start the answer."""
        from mlx_lm.models.cache import trim_prompt_cache

        cache, rest = None, tokens
        if self.memory is not None:
            cache, rest = self.memory.fetch_nearest_cache(self.model, tokens)
        if cache is not None and not rest:  # an exact hit: recompute the last token
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        in_memory = len(tokens) - len(rest)
        loaded = self._fetch_disk(tokens, in_memory)
        if loaded is not None:
            self._stats.disk_hits += 1
            return loaded
        if cache is None:
            self._stats.misses += 1
        elif self._from_preload(tokens, in_memory):
            self._stats.disk_hits += 1  # read from disk at start-up
        else:
            self._stats.memory_hits += 1
        return cache, rest

    def _from_preload(self, tokens: list[int], cached: int) -> bool:
        """Whether a memory hit of `cached` tokens is the first one on a preloaded entry."""
        if not self._preloaded:
            return False
        ids = np.asarray(tokens[:cached], dtype=np.int32)
        for i, entry in enumerate(self._preloaded):
            if common_prefix(entry, ids) >= cached:
                del self._preloaded[i]
                return True
        return False

    def _fetch_disk(self, tokens: list[int], in_memory: int) -> tuple[list[Any], list[int]] | None:
        from mlx_lm.models.cache import trim_prompt_cache

        if self.disk is None:
            return None
        entry, n = self.disk.best(np.asarray(tokens, dtype=np.int32))
        use = min(n, len(tokens) - 1)
        if entry is None or use < in_memory + self.min_disk_gain:
            return None
        cache = self.disk.load(entry)
        if cache is None:
            return None
        if self.memory is not None:  # the next turn finds it in memory
            self.memory.insert_cache(self.model, entry.tokens.tolist(), Layers(cache).copy_layers())
        trim_prompt_cache(cache, len(entry.tokens) - use)
        return cache, tokens[use:]

    def want_checkpoint(self, prefix: list[int]) -> None:
        """Keep `prefix` (a chat's system prompt and tools) as its own disk file once a sequence
        that starts with it ends."""
        if self.disk is None:
            return
        key = token_key(prefix)
        self._wanted[key] = len(prefix)
        self._wanted.move_to_end(key)
        while len(self._wanted) > _WANTED_MAX:
            self._wanted.popitem(last=False)

    def insert(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep a finished sequence's cache (its arrays evaluated) for later prompts."""
        if self.memory is not None:
            self.memory.insert_cache(self.model, tokens, Layers(cache))
        if self.disk is None or not _disk_ready(cache):
            return
        import mlx.core as mx

        ids = np.asarray(tokens, dtype=np.int32)
        length = min(len(ids), int(cache[0].offset))
        dtype = str(cache[0].keys.dtype).removeprefix("mlx.core.")
        layers = _host_views(mx, cache, length)
        name = _DTYPES[dtype][0]
        self.disk.put(_Job(ids, length, layers, name, checkpoint=False))
        for key, n in list(self._wanted.items()):
            if n < length and token_key(ids[:n]) == key and not self.disk.has(key):
                self.disk.put(_Job(ids, n, layers, name, checkpoint=True))

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
        self.memory = None


class Layers(list[Any]):
    """A cached prompt's layers as the memory tier holds them. mlx-lm's LRU cache hands out a
    `copy.deepcopy` of an entry (a fetch trims its copy), which walks each layer object's
    attributes in Python: 0.14 ms of a 0.2 ms fetch for a 16-layer model, paid for every
    request admitted from the cache (64 rows of a burst; admitting them took 20 ms on an H100
    machine before their first decode step). A layer's arrays are never written in place (a cache's update
    rebinds its attributes to new arrays), so a copy needs only new layer objects holding new
    handles of the same arrays, which is what `copy.deepcopy` of an `mx.array` gives too."""

    def copy_layers(self) -> Layers:
        return Layers(_copy_layer(c) for c in self)

    def __deepcopy__(self, memo: dict[int, Any]) -> Layers:
        return self.copy_layers()


def _copy_layer(layer: Any) -> Any:
    from mlx_lm.models.cache import KVCache

    if type(layer) is not KVCache:  # other kinds (rotating, arrays) keep mlx-lm's deep copy
        return copy.deepcopy(layer)
    new = KVCache.__new__(KVCache)
    new.__dict__.update(layer.__dict__)
    if layer.keys is not None:
        new.keys, new.values = copy.copy(layer.keys), copy.copy(layer.values)
    return new


def _disk_ready(cache: list[Any]) -> bool:
    """Whether a cache can be written: plain attention layers of a dtype the files know."""
    from mlx_lm.models.cache import KVCache

    return bool(cache) and all(
        type(c) is KVCache
        and c.keys is not None
        and str(c.keys.dtype).removeprefix("mlx.core.") in _DTYPES
        for c in cache
    )


def _host_views(mx: Any, cache: list[Any], length: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Numpy views of each layer's keys and values for the writer thread (its first `length`
    tokens are what it writes).

    Where memory is unified (Apple silicon, the CPU backend) the views are of the cache's own
    arrays: no copy. On CUDA, MLX keeps a kernel's output in device memory and moves an array
    to managed (host-visible) memory for good the first time the host asks for its data; the
    writer's reads then pull those pages to the host, and the next turn's forward, reading the
    same arrays from the memory tier, faults them back. There the writer gets copies made on
    the device (one kernel a layer), and the cache's own arrays stay where the GPU reads them."""
    pairs = [(c.keys, c.values) for c in cache]
    if _device_memory(mx):
        pairs = [
            (mx.contiguous(k[..., :length, :]), mx.contiguous(v[..., :length, :])) for k, v in pairs
        ]
        mx.eval(pairs)
    return [(_numpy(mx, k), _numpy(mx, v)) for k, v in pairs]


def _device_memory(mx: Any) -> bool:
    """Whether arrays are computed into memory the host cannot read in place (CUDA)."""
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def _numpy(mx: Any, a: Any) -> np.ndarray:
    """A zero-copy numpy view of an evaluated array, its first `offset` tokens' worth later."""
    return np.asarray(a.view(mx.uint16) if a.dtype == mx.bfloat16 else a)


def open_store(
    model: str,
    model_dir: Path,
    *,
    memory_bytes: int,
    disk_dir: Path | None,
    disk_bytes: int,
    load_mode: str,
) -> PrefixStore | None:
    """The engine's store, or None when both tiers are off."""
    disk = None
    if disk_dir is not None and disk_bytes > 0:
        from importlib.metadata import version

        weights = weights_fingerprint(model_dir, load_mode, f"mlx {version('mlx')}")
        folder = disk_dir / re.sub(r"[^A-Za-z0-9._-]", "_", model) / weights
        disk = DiskTier(folder, disk_bytes, model=model, weights=weights)
    if memory_bytes <= 0 and disk is None:
        return None
    return PrefixStore(model, memory_bytes, disk)
