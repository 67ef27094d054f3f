"""Models by name: ``org/repo[@rev][:QUANT]`` and ``hf://org/repo[@rev]/path/file.gguf`` resolved
to local GGUF files through ``huggingface_hub`` (its cache, ``HF_TOKEN``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``).

Invariants:
- Resolution runs only at start-up or on ``POST /v1/models/{id}/load``, never for a request.
- A file already in the hub cache is used as is: no request at all (no ETag check), so a cached
  model starts offline and a second start makes no request. To update, delete it from the cache
  (``hf cache delete``) or pin a revision.
- Every failure is a ``HubError`` whose message is one line naming the model.
- Nothing here is a default: the bundled model stays the default; this runs only for names the
  user gave.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, overload

log = logging.getLogger(__name__)

_REPO = r"[A-Za-z0-9][\w.-]*/[\w.-]+"
_NAME_RE = re.compile(rf"^(?P<repo>{_REPO})(?:@(?P<rev>[\w./-]+?))?(?::(?P<quant>[\w.-]+))?$")
_URL_RE = re.compile(rf"^hf://(?P<repo>{_REPO})(?:@(?P<rev>[\w.-]+))?/(?P<file>.+\.gguf)$",
                     re.IGNORECASE)
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
DEFAULT_QUANT = "Q4_K_M"  # llama.cpp's choice when a repo holds several quantisations


class HubError(ValueError):
    """A model name that cannot be resolved; the message is one line."""


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None
    filename: str | None = None  # hf:// form: one file
    quant: str | None = None  # name form: the quantisation tag, matched in file names

    @property
    def model_id(self) -> str:
        """The id clients use: the name as given, without ``hf://`` and ``.gguf``."""
        rev = f"@{self.revision}" if self.revision else ""
        if self.filename:
            return f"{self.repo}{rev}/{self.filename.removesuffix('.gguf')}"
        return f"{self.repo}{rev}" + (f":{self.quant}" if self.quant else "")

    def __str__(self) -> str:
        if self.filename:
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.repo}{rev}/{self.filename}"
        return self.model_id


def parse(name: str) -> HubRef | None:
    """The hub reference ``name`` stands for, or None for a local path. ``hf://`` is always the
    hub; ``org/repo[:QUANT]`` is the hub unless a file of that name exists or it ends in .gguf."""
    if name.startswith("hf://"):
        m = _URL_RE.match(name)
        if m is None:
            raise HubError(f"{name}: expected hf://ORG/REPO[@REVISION]/PATH/FILE.gguf")
        return HubRef(m["repo"], m["rev"], filename=m["file"])
    if name.lower().endswith(".gguf") or os.path.exists(name):
        return None
    m = _NAME_RE.match(name)
    return HubRef(m["repo"], m["rev"], quant=m["quant"]) if m else None


@overload
def resolve(ref: HubRef, *, download: Literal[True] = True) -> str: ...


@overload
def resolve(ref: HubRef, *, download: bool) -> str | None: ...


def resolve(ref: HubRef, *, download: bool = True) -> str | None:
    """The local path of ``ref``'s GGUF (the first part of a split model): from the cache, else
    downloaded with a progress bar when ``download``; None when not cached and not ``download``.
    Raises HubError."""
    try:
        cached = _from_cache(ref)
        if cached is not None or not download:
            return cached
        if _offline():
            raise HubError(f"model {ref} is not in the Hugging Face cache ({_cache_dir()}) "
                           "and HF_HUB_OFFLINE is set")
        files = [ref.filename] if ref.filename else _pick(ref, _repo_files(ref))
        return _download(ref, files)
    except HubError:
        raise
    except Exception as e:  # huggingface_hub's HTTP, offline, cache errors
        says = _explain(e)
        if says.startswith("no such repository") and not (ref.quant or ref.filename):
            says += "; nor a local file of that name"
        raise HubError(f"model {ref}: {says}") from None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _from_cache(ref: HubRef) -> str | None:
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    if ref.filename:
        path = try_to_load_from_cache(ref.repo, ref.filename, revision=ref.revision)
        return path if isinstance(path, str) else None
    try:  # the cached snapshot of the revision (no request with local_files_only)
        snap = Path(snapshot_download(ref.repo, revision=ref.revision, local_files_only=True))
    except Exception:
        return None
    have = [p.relative_to(snap).as_posix() for p in snap.rglob("*.gguf")]
    try:
        files = _pick(ref, have)
    except HubError:
        return None
    if not all((snap / f).is_file() for f in files):  # a split model partly downloaded
        return None
    return str(snap / files[0])


def _repo_files(ref: HubRef) -> list[str]:
    from huggingface_hub import HfApi

    info = HfApi().model_info(ref.repo, revision=ref.revision)
    return [s.rfilename for s in info.siblings or []]


def _pick(ref: HubRef, files: list[str]) -> list[str]:
    """The files of ``ref``'s quantisation among ``files`` (all parts of a split model, first
    part first). Raises HubError listing what the repo offers when none or several match."""
    ggufs = [f for f in files if f.lower().endswith(".gguf")
             and not PurePosixPath(f).name.lower().startswith("mmproj")]
    if not ggufs:
        raise HubError(f"model {ref}: the repository has no GGUF file")
    quant = ref.quant
    if quant is None and len(_groups(ggufs)) == 1:
        return sorted(ggufs)
    pat = re.compile(rf"(?:^|[-._]){re.escape(quant or DEFAULT_QUANT)}(?:[-.])", re.IGNORECASE)
    groups = _groups([f for f in ggufs if pat.search(PurePosixPath(f).name)])
    if len(groups) == 1:
        return groups[0]
    offered = ", ".join(sorted(PurePosixPath(g[0]).name for g in _groups(ggufs)))
    if not groups:
        what = f"no {quant} file" if quant else "several GGUF files"
        raise HubError(f"model {ref}: {what}; the repository has {offered} "
                       "(name one as ORG/REPO:QUANT or hf://ORG/REPO/FILE.gguf)")
    raise HubError(f"model {ref}: several files match; name one as hf://{ref.repo}/FILE.gguf "
                   f"among {offered}")


def _groups(files: list[str]) -> list[list[str]]:
    """Files grouped so that the parts of one split model (``-00001-of-00003.gguf``) are one."""
    by_stem: dict[str, list[str]] = {}
    for f in sorted(files):
        by_stem.setdefault(_SPLIT_RE.sub("", f), []).append(f)
    return list(by_stem.values())


def _download(ref: HubRef, files: list[str]) -> str:
    import inspect

    from huggingface_hub import hf_hub_download

    progress = {}
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 1.0
        progress["tqdm_class"] = _progress_class()
    paths = []
    for f in files:
        paths.append(hf_hub_download(ref.repo, f, revision=ref.revision, **progress))
        log.info("downloaded %s from %s (%s) to %s", f, ref.repo, ref.revision or "main",
                 paths[-1])
    return paths[0]


class _LogWriter:
    """tqdm's output as log records: a log file or a container log gets one line per update
    (JSON with --log-format json) instead of carriage returns, or, as tqdm does by default off a
    terminal, nothing."""

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            log.info("%s", text)

    def flush(self) -> None:
        pass


def _progress_class():
    """huggingface_hub's progress bar: as is on a terminal; off one, a line every 5 s."""
    import sys

    from huggingface_hub.utils import tqdm as hf_tqdm

    class Progress(hf_tqdm):
        def __init__(self, *args, **kwargs) -> None:
            if not sys.stderr.isatty() and kwargs.get("disable") is None:
                kwargs |= {"disable": False, "mininterval": 5.0, "ascii": True,
                           "file": _LogWriter()}
            super().__init__(*args, **kwargs)

    return Progress


# huggingface_hub's error classes moved between modules across versions: match them by name.
_EXPLAINED = (
    ("GatedRepoError", "the repository is gated: accept its terms on the Hub and set HF_TOKEN"),
    ("RepositoryNotFoundError", "no such repository (or it is private: set HF_TOKEN)"),
    ("RevisionNotFoundError", "no such revision"),
    ("LocalEntryNotFoundError", "not in the Hugging Face cache and the Hub cannot be reached"),
    ("EntryNotFoundError", "no such file in the repository"),
    ("OfflineModeIsEnabled", "not in the Hugging Face cache and HF_HUB_OFFLINE is set"),
)


def _explain(e: BaseException) -> str:
    names = {c.__name__ for c in type(e).__mro__}
    for cls, says in _EXPLAINED:
        if cls in names:
            return says
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
