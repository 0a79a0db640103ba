"""The data identity of a processed dataset: hashes of what a reader gets from it, wherever its folder is.

Resume and the feature caches of the training core compare them (through `VideoStore.identity` and
`VideoStore.fingerprint`); `iic-prep check` recomputes each shard's content digest from its videos
(`VideoStore.digest_from_videos`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

import numpy as np

from .format import DIGEST_ITEMS, FormatError, ManifestRow, content_digest, slot_name

# VideoStore.identity per (resolved folder, flow, state stamp of its files), for this process.
_IDENTITIES: dict[tuple, str] = {}


class DataIdentity:
    """The identity methods of `VideoStore` (its base class). They read through the store's own attributes:
    ``data_dir``, ``meta``, ``rows``, ``has_flow``, ``flow_manifest_path``, ``flow_meta`` and ``_file(shard)``
    (the open shard)."""

    def fingerprint(self) -> str:
        """Hash of the manifest(s): changes whenever the extracted videos or their flow change."""
        h = hashlib.sha256()
        for p in (self.data_dir / "manifest.csv", self.flow_manifest_path):
            if p.exists():
                h.update(p.read_bytes())
        return h.hexdigest()[:16]

    def identity(self, flow: bool = False) -> str:
        """Hash of what a reader gets from this dataset, wherever its folder is: the manifest, the content
        settings of dataset.json (not the library versions), the byte offsets and CRC32s of every stored JPEG
        stream (the size and checksum of each compressed frame, through each shard's `content_digest`) and,
        with ``flow``, the flow manifest and settings.

        `fingerprint` hashes the manifest files only: two extractions of the same video list with other
        pixels (another synthetic seed, --size or --quality) have the same manifest, and adding flow later
        changes it. This tells them apart and ignores flow unless asked. Cost: one attribute read per shard
        (shards written before the attribute existed: one small read per video, 0.65 ms), computed once per
        process for each state of the files it reads (`_state_stamp`: a stat of each, no read).
        """
        key = (str(self.data_dir.resolve()), bool(flow and self.has_flow), self._state_stamp())
        if key not in _IDENTITIES:
            _IDENTITIES[key] = self._compute_identity(flow, self._shard_digest)
        return _IDENTITIES[key]

    def legacy_identity(self, flow: bool = False) -> str:
        """`identity` as versions before per-shard digests computed it (one running hash over every video's
        items): what checkpoints written by them recorded. Reads every video."""
        return self._compute_identity(flow, None)

    def _state_stamp(self) -> tuple:
        """(name, size, mtime) of the manifests, dataset.json and every shard holding an extracted video: any
        rewrite of what `identity` reads changes it (each stage publishes by replacing files)."""
        names = ["dataset.json", "manifest.csv", "flow/manifest.csv", "flow/flow.json"]
        names += sorted({r.shard for r in self.rows if r.ok})
        stamp = []
        for name in names:
            try:
                st = (self.data_dir / name).stat()
                stamp.append((name, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                stamp.append((name, -1, -1))
        return tuple(stamp)

    def _items(self, row: ManifestRow) -> dict[str, np.ndarray]:
        """The `DIGEST_ITEMS` a stored video's group holds, read."""
        group = self._file(row.shard)[slot_name(row.slot)]
        return {name: group[name][()] for name in DIGEST_ITEMS if name in group}

    def digest_from_videos(self, shard: str, rows: Iterable[ManifestRow]) -> str:
        """`content_digest` of ``shard`` computed from the stored items of its videos ``rows`` (what
        `ShardWriter.commit` stored, if nothing changed since)."""
        return content_digest((r.id, self._items(r)) for r in sorted(rows, key=lambda r: r.slot))

    def _shard_digest(self, shard: str, rows: list[ManifestRow]) -> str:
        """The shard's stored `content_digest`, or the same digest computed from its videos (older shards)."""
        stored = self._file(shard).attrs.get("content_digest")
        return str(stored) if stored is not None else self.digest_from_videos(shard, rows)

    def _compute_identity(
        self, flow: bool, shard_digest: Callable[[str, list[ManifestRow]], str] | None
    ) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({k: v for k, v in self.meta.items() if k != "versions"}, sort_keys=True).encode())
        h.update((self.data_dir / "manifest.csv").read_bytes())
        by_shard: dict[str, list[ManifestRow]] = {}
        for row in sorted((r for r in self.rows if r.ok), key=lambda r: (r.shard, r.slot)):
            by_shard.setdefault(row.shard, []).append(row)
        for shard, rows in by_shard.items():  # in shard order
            try:
                if shard_digest is not None:
                    h.update(f"{shard}:{shard_digest(shard, rows)}".encode())
                else:  # the legacy form: every video's items in one running hash
                    for row in rows:
                        for name, array in self._items(row).items():
                            h.update(f"{row.id}/{name}".encode())
                            h.update(np.ascontiguousarray(array, np.int64).tobytes())
            except (OSError, KeyError) as err:
                raise FormatError(f"{self.data_dir}: cannot read {shard}: {err}") from None
        if flow and self.has_flow:
            h.update(self.flow_manifest_path.read_bytes())
            h.update(json.dumps(self.flow_meta.get("settings"), sort_keys=True).encode())
        return h.hexdigest()[:16]
