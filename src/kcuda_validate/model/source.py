"""Where the model comes from: a local file, the Hugging Face Hub, or the built-in synthetic generator."""

from __future__ import annotations

import errno
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcuda_validate import defaults
from kcuda_validate.errors import ModelInvalidError, UsageError
from kcuda_validate.paths import special_kind

if TYPE_CHECKING:
    from kcuda_validate.model.hub_transfer import OnProgress


@dataclass(frozen=True)
class ModelSpec:
    """The user's choice, as parsed from the command line."""

    model_path: Path | None = None
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    synthetic: str | None = None  # size, e.g. "1GiB"
    synthetic_type: str = defaults.SYNTHETIC_TYPE
    synthetic_seed: int = 0

    @property
    def origin(self) -> str:
        """Where resolve_model gets the file: `local`, `synthetic` or `hub` (the default model is on the Hub)."""
        if self.model_path is not None:
            return "local"
        return "synthetic" if self.synthetic is not None else "hub"

    def hub_file(self) -> tuple[str, str, str]:
        """(repo, filename, revision) a Hub model resolves to; --repo-id without --filename is a usage error."""
        from kcuda_validate.model import hub

        repo = self.repo_id or hub.DEFAULT_REPO_ID
        filename = self.filename or (hub.DEFAULT_FILENAME if self.repo_id is None else None)
        if filename is None:
            raise UsageError(
                f"--repo-id {repo}: --filename is required with --repo-id",
                fix="Name the .gguf file in the repo, e.g. --filename model-q4_k_m.gguf.",
            )
        return repo, filename, self.revision or hub.DEFAULT_REVISION

    def validate(self) -> None:
        chosen = [
            name
            for name, on in (
                ("--model-path", self.model_path is not None),
                ("--repo-id", self.repo_id is not None),
                ("--synthetic", self.synthetic is not None),
            )
            if on
        ]
        if len(chosen) > 1:
            raise UsageError(
                f"{' and '.join(chosen)}: choose one model source",
                fix="Pass only one of --model-path, --repo-id/--filename, --synthetic.",
            )
        if self.synthetic is not None:  # a size that cannot be is a usage error before anything runs
            from kcuda_validate.model.synthetic_spec import parse_size

            parse_size(self.synthetic)
        if self.origin == "hub" and self.filename is not None:  # a split model's other part: before any network
            from kcuda_validate.model.hub import split_parts

            split_parts(self.filename)
        if self.filename is not None and self.repo_id is None and self.model_path is None and not self.synthetic:
            # --filename alone means "this file from the default repo".
            return
        source = "--model-path" if self.model_path is not None else "--synthetic" if self.synthetic else None
        if source is not None and (self.filename or self.revision):
            raise UsageError(
                "--filename/--revision: only valid with --repo-id",
                fix=f"Drop them, or use --repo-id instead of {source}.",
            )


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    origin: str  # local | hub | synthetic
    detail: dict[str, Any]
    resolve_s: float

    def describe(self) -> str:
        if self.origin == "hub":
            src = "cache" if self.detail.get("source") == "cache" else "downloaded"
            if self.detail.get("parts"):
                src = f"{self.detail['parts']} parts, {src}"
            return (
                f"{self.detail['repo_id']}/{self.detail['filename']} @ {self.detail.get('revision') or 'main'} ({src})"
            )
        if self.origin == "synthetic":
            return f"synthetic {self.detail['size']} {self.detail['qtype']} (seed {self.detail['seed']})"
        return str(self.path)


def resolve_model(spec: ModelSpec, on_progress: OnProgress | None = None) -> ResolvedModel:
    """Get the file onto this machine; errors are the project's one-line KcudaErrors.

    `on_progress` hears of a Hub download's bytes (the CLI draws the bar). A split Hub model (gguf-split) comes
    whole: every part into one snapshot folder, the path its first part's (llama.cpp opens the others itself)."""
    spec.validate()
    start = time.perf_counter()
    if spec.model_path is not None:
        check_model_file(spec.model_path)
        return ResolvedModel(spec.model_path, "local", {"path": str(spec.model_path)}, time.perf_counter() - start)
    if spec.synthetic is not None:
        from kcuda_validate.model.synthetic import ensure_synthetic
        from kcuda_validate.model.synthetic_spec import parse_size

        size = parse_size(spec.synthetic)
        path = ensure_synthetic(size, spec.synthetic_type, spec.synthetic_seed)
        return ResolvedModel(
            path,
            "synthetic",
            {"size": spec.synthetic, "size_bytes": size, "qtype": spec.synthetic_type, "seed": spec.synthetic_seed},
            time.perf_counter() - start,
        )
    from kcuda_validate.model import hub

    repo, filename, _ = spec.hub_file()
    mf = hub.fetch_model(repo, filename, spec.revision, on_progress=on_progress)
    detail: dict[str, Any] = {
        "repo_id": mf.repo_id,
        "filename": mf.filename,  # a split model's first part: what llama.cpp loads, the others beside it
        "revision": mf.revision,
        "commit": mf.commit_hash,
        "source": mf.source,  # "download" when any part was fetched
        "size_bytes": mf.size_bytes,  # all parts together
        "download_s": mf.download_s,
    }
    if mf.parts > 1:
        detail["parts"] = mf.parts
    return ResolvedModel(mf.path, "hub", detail, time.perf_counter() - start)


REGULAR_FIX = "Pass a regular .gguf file (a symlink to one is fine)."


def check_model_file(path: Path) -> None:
    """Only a regular file, or a symlink that ends at one, is a model; anything else is refused at once.

    Decided by `os.stat` alone, never by opening the path: opening a FIFO blocks until something writes to
    it, and that open would happen here, in the parent, where `--timeout` does not apply. A device, a socket
    or a directory is never a GGUF file either. Raises ModelInvalidError (exit 5) naming the path."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ModelInvalidError(
                f"{path}: a symlink to {os.readlink(path)}, which does not exist",
                fix="Point the link at the .gguf file, or pass the file itself.",
            ) from None
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", str(path)):  # a URL (pathlib kept one of its two slashes)
            raise ModelInvalidError(
                f"{path}: no such file (--model-path takes a local file, not a URL)",
                fix="Download the file and pass its path, or use --repo-id/--filename for a Hugging Face model.",
            ) from None
        raise ModelInvalidError(f"{path}: no such file", fix="Check the path passed to --model-path.") from None
    except PermissionError:
        raise ModelInvalidError(
            f"{path}: permission denied (a directory on the path cannot be searched)",
            fix="Make every directory on the path searchable (`chmod u+x DIR`), or pass a path you can read.",
        ) from None
    except NotADirectoryError:
        raise ModelInvalidError(
            f"{path}: no such file (a part of the path before the file name is not a directory)",
            fix="Check the path passed to --model-path.",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelInvalidError(
                f"{path}: a symlink loop (the links never reach a file)",
                fix=f"Point the link at the .gguf file itself (`ls -l {path}` shows where it goes), or pass the file.",
            ) from None
        raise ModelInvalidError(
            f"{path}: cannot be read ({exc.strerror or exc})", fix="Check the path passed to --model-path."
        ) from None
    if stat.S_ISREG(st.st_mode):
        if not os.access(path, os.R_OK):
            raise ModelInvalidError(f"{path}: permission denied", fix=f"Make it readable: `chmod u+r {path}`.")
        return
    if stat.S_ISDIR(st.st_mode):
        raise ModelInvalidError(f"{path}: is a directory, not a GGUF file", fix="Pass the .gguf file itself.")
    kind = special_kind(st.st_mode)
    via = f" (the symlink leads to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise ModelInvalidError(f"{path}: is {kind}, not a regular file{via}", fix=REGULAR_FIX)
