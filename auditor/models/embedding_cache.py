"""Embeddings of a pretrained network, cached on disk so that a rescan does not embed again.

A cache entry is one file ``<key>.pt`` holding the float32 embeddings ``(n, h)`` of one
set of images; the key is a SHA-256 over everything the embeddings depend on: the
architecture, the weights file's SHA-256, the input size and preprocessing, and the bytes
of the images' features themselves (the data's fingerprint). The folder is
``$AUDITOR_CACHE/embeddings`` when ``AUDITOR_CACHE`` is set, else
``$XDG_CACHE_HOME/auditor/embeddings`` (``~/.cache/auditor/embeddings``). Deleting it is
always safe. An unreadable or corrupt entry is ignored (and written again); a cache that
cannot be written is skipped.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

#: The environment variable naming the cache's root folder.
CACHE_ENV = "AUDITOR_CACHE"
#: Bumped when what an entry holds, or how the embeddings are computed, changes.
FORMAT = "auditor-embeddings-1"


def cache_root() -> Path:
    """``$AUDITOR_CACHE``, else ``$XDG_CACHE_HOME/auditor`` or ``~/.cache/auditor``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "auditor"


def embeddings_dir() -> Path:
    """The folder of the cached embeddings."""
    return cache_root() / "embeddings"


def cache_key(x: torch.Tensor, *parts: str) -> str:
    """The key of the embeddings of features ``x`` ``(n, d)`` under a network and
    preprocessing described by ``parts``: a SHA-256 over both (``x`` as float32, so the
    scan's ``--dtype`` does not matter)."""
    digest = hashlib.sha256()
    for part in (FORMAT, *parts, f"{tuple(x.shape)}"):
        digest.update(part.encode() + b"\x00")
    digest.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def load(key: str, rows: int, dim: int) -> torch.Tensor | None:
    """The cached float32 embeddings ``(rows, dim)`` of ``key`` on the CPU, or ``None``
    when there are none or the entry is unreadable, of another shape or not finite."""
    path = embeddings_dir() / f"{key}.pt"
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, corrupt: embed again and rewrite it
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    embeddings = entry.get("embeddings")
    if (
        not isinstance(embeddings, torch.Tensor)
        or embeddings.dtype != torch.float32
        or tuple(embeddings.shape) != (rows, dim)
        or not bool(torch.isfinite(embeddings).all())
    ):
        return None
    return embeddings


def store(key: str, embeddings: torch.Tensor) -> bool:
    """Write the embeddings ``(n, h)`` of ``key`` (as float32, atomically: a reader sees
    the old entry or the whole new one); ``False`` when the cache cannot be written."""
    folder = embeddings_dir()
    entry = {"key": key, "embeddings": embeddings.detach().to("cpu", torch.float32).contiguous()}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(entry, f)
            os.replace(tmp, folder / f"{key}.pt")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return False
    return True
