"""Atomic checkpoint writes and safe loads: every unusable file is refused in one line naming it and why.

A checkpoint is a ``torch.save`` dict. `save_atomic` adds ``format`` (`FORMAT_VERSION`); `load` refuses a
newer one and reads files without the key (written before it existed) as format 0. Loads use
``weights_only=True`` (tensors and plain containers only): a pickle that would import and call anything
else is refused as unsafe, never run.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..pipeline.storage import storage_errors

FORMAT_VERSION = 1  # of the saved dict; bump when a reader of the old layout would misread the new one


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as asked (one-line message)."""


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, rename: never a half-written file. A full
    disk or a folder that cannot be written is one `StorageError` line naming the folder; the file as it was
    (the last good checkpoint) is kept and the temporary one removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    before = path.stat().st_size if path.exists() else None
    kept = f"{path.name} as it was is kept" if before is not None else "nothing was written"
    try:
        with storage_errors(
            path.parent,
            lambda: before,
            what=path.name,
            kept=kept,
            then="run the same command again (a run continues with --resume)",
        ):
            with open(tmp, "wb") as f:
                torch.save({**obj, "format": FORMAT_VERSION}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, required: Iterable[str] = (), what: str = "an iic checkpoint") -> dict:
    """Load with ``weights_only=True``; the result is a dict of format <= `FORMAT_VERSION` holding every
    ``required`` key, or a `CheckpointError` names the file and the cause."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"cannot read checkpoint {path}: it is a folder, not a file")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # any failure of a foreign or damaged file is a one-line refusal
        raise CheckpointError(f"cannot read checkpoint {path}: {diagnose(path, err)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not {what}: it holds a {type(obj).__name__}, not a dict")
    version = obj.get("format", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"{path} is not {what}: its format key is {version!r}, not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is checkpoint format {version}, newer than this iic reads "
            f"({FORMAT_VERSION}): update iic to use it"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(
            f"{path} is not {what}: no {_few([repr(k) for k in missing])} "
            f"(it holds {_few([repr(k) for k in obj]) or 'nothing'})"
        )
    return obj


def load_state(module: nn.Module, state: dict, what: str, path: Path | None = None) -> None:
    """``load_state_dict`` that refuses any missing or unexpected key, naming them (and the file)."""
    where = f"checkpoint {path}" if path is not None else "the checkpoint"
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{what} does not match {where}: it holds a {type(state).__name__}, not weights"
        )
    try:
        result = module.load_state_dict(state, strict=False)
    except Exception as err:  # shape mismatches are raised even with strict=False
        raise CheckpointError(f"{what} does not match {where}: {_last_line(err)}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {_few(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected {_few(result.unexpected_keys)}")
    if problems:
        raise CheckpointError(f"{what} does not match {where}: {'; '.join(problems)}")


# ----------------------------------------------------------------------------------------------------------
# why a file does not load


def diagnose(path: Path, err: Exception) -> str:
    """One line: why ``torch.load(path, weights_only=True)`` raised ``err``."""
    with open(path, "rb") as f:
        head = f.read(8)
    pickled = _pickle_bytes(path, head)
    imports = _imports(pickled) if pickled is not None else None
    if isinstance(err, pickle.UnpicklingError) and imports:
        return f"unsafe: it would run code (it imports {_few(imports)}); refused"
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return f"truncated or corrupt: not a whole zip archive ({path.stat().st_size} bytes)"
        return f"corrupt checkpoint archive ({describe_error(err)})"
    if imports is not None:  # a whole pickle without imports that torch still refused
        return f"not a PyTorch checkpoint (a pickle torch cannot load safely: {describe_error(err)})"
    if _is_text(path):
        return "not a PyTorch checkpoint (a text file)"
    return f"not a PyTorch checkpoint (unknown content starting {head.hex(' ')})"


def _pickle_bytes(path: Path, head: bytes, limit: int = 1 << 26) -> bytes | None:
    """The pickle stream of a file: the ``data.pkl`` member of a torch zip archive, or the file itself."""
    try:
        if head.startswith(b"PK"):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                return z.read(names[0]) if names else None
        if head[:1] == b"\x80":  # pickle protocol 2+
            with open(path, "rb") as f:
                return f.read(limit)
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError):
        pass
    return None


_SAFE_PREFIXES = ("torch.", "collections.OrderedDict", "_codecs.encode")
_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}


def _imports(data: bytes) -> list[str] | None:
    """Globals a whole pickle imports beyond those of a torch checkpoint; None when it is not a whole
    pickle."""
    found: list[str] = []
    strings: list[str] = []  # strings pushed so far (STACK_GLOBAL takes module and name from the stack)
    memo: dict[int, object] = {}
    last: object = None
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
            if name in _STRING_OPS:
                last = arg
                strings.append(str(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = last
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = last
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(arg)
                if isinstance(last, str):
                    strings.append(last)
            elif name == "STOP":
                return [g for g in dict.fromkeys(found) if not g.startswith(_SAFE_PREFIXES)]
            elif name != "FRAME":
                last = None
    except Exception:  # not a pickle
        return None
    return None


def _is_text(path: Path) -> bool:
    with open(path, "rb") as f:
        sample = f.read(4096)
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def describe_error(err: Exception) -> str:
    """The informative sentence of an exception: torch's weights-only refusals wrap it in boilerplate."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    skip = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [ln for ln in lines if not ln.startswith(skip)] or lines
    text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    text = text.removeprefix("WeightsUnpickler error:").strip()
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _last_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")
