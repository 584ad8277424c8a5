"""Hugging Face Hub downloads into the model repository, atomic: a half download never looks like a model."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from app.errors import CheckpointError
from app.repository.model_dir import MANIFEST_FILE, WEIGHT_FILES

# Hub commits (main branch, weights present) pinned per repository; `--hub-revision` overrides. For
# apple/mobilevitv2-1.0-imagenet1k-256 no full commit id of its main branch could be looked up when this
# was written (no Hub access here), so it follows "main": pin one with --hub-revision in production.
HUB_REVISIONS = {
    "apple/mobilevitv2-1.0-voc-deeplabv3": "cd9b6a101aefbccb4c3cc1bce0324cfc1de8a4c9",
    "apple/mobilevitv2-1.5-voc-deeplabv3": "040b399af6fcdc3a703791c94ceb3d06ba439953",
    "apple/mobilevitv2-2.0-imagenet1k-256": "7789b5046541cd70c26972eb5c80ce2683d81e8d",
}

# Hub checkpoints whose training pipeline is known, by id prefix: Apple's MobileViTv2 weights were
# trained with ml-cvnets (docs/preprocessing.md).
TRAINING_PIPELINES = {"apple/mobilevitv2-": "ml-cvnets"}

# What a user without network access can run instead, written out in full.
OFFLINE_ALTERNATIVE = "to try the service offline, with demo models of the three tasks: `mvit demo-models models/ && mvit serve`"


def hub_folder(repository: Path, repo_id: str) -> Path:
    return repository / "hub" / repo_id.replace("/", "--")


@contextlib.contextmanager
def partial_folder(target: Path) -> Iterator[Path]:
    """A hidden, empty folder beside `target` for a download in progress, removed however the block ends.

    Whatever should survive is moved out of it with `move_into_place`, so an interrupted or refused
    download never leaves a half model where the server would find it.
    """
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def move_into_place(folder: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    folder.rename(target)


def download_from_hub(
    repo_id: str,
    repository: Path,
    revision: str | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download a Hub checkpoint into the model repository (`models/hub/<org>--<name>`), atomically.

    Files land in a hidden partial folder first; only a complete download (config, preprocessing,
    weights, and `verify` passing when given) is renamed into place, so an interrupted fetch never
    leaves a half model where the server would find it.
    """
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise CheckpointError(
            f"cannot download {repo_id!r}: huggingface_hub is not installed (an ONNX-only install). "
            "Fetch and export models with the full install (`pip install .[export]`, `mvit fetch`, "
            "`mvit export`), then serve the model folder"
        ) from None

    target = hub_folder(repository, repo_id)
    try:
        with partial_folder(target) as partial:
            _download_hub_files(repo_id, revision, partial)
            write_provenance(partial, repo_id, revision)
            if verify is not None:
                verify(partial)
            move_into_place(partial, target)
    except CheckpointError:
        raise
    except Exception as exc:  # network, auth, missing repo: one clear line for the operator
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {reason}). "
            f"Check the network and the model id, or serve a local folder; {OFFLINE_ALTERNATIVE}"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # an empty hub/ left by a failed first download
            target.parent.rmdir()
    return target


def write_provenance(folder: Path, repo_id: str, revision: str | None) -> None:
    """manifest.json for a Hub download: where it came from, and what its weights were trained with
    (which picks its default preprocessing profile)."""
    pipeline = next((p for prefix, p in TRAINING_PIPELINES.items() if repo_id.startswith(prefix)), None)
    manifest = {
        "source": f"https://huggingface.co/{repo_id}",
        "revision": revision or "main",
        "training_pipeline": pipeline,
        "preprocessing_profile": "trained" if pipeline else "hf",
        "fetched_by": "mvit fetch",
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _download_hub_files(repo_id: str, revision: str | None, folder: Path) -> None:
    """config.json, preprocessor_config.json and the first of WEIGHT_FILES the repository has."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(filename: str) -> None:
        hf_hub_download(repo_id, filename, revision=revision, local_dir=folder)

    fetch("config.json")
    fetch("preprocessor_config.json")
    for name in WEIGHT_FILES:
        try:
            fetch(name)
            break
        except EntryNotFoundError:
            continue
    else:
        raise CheckpointError(f"{repo_id} on the Hub has none of {', '.join(WEIGHT_FILES)}")
    shutil.rmtree(folder / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping


def check_reachable(url: str, timeout_s: float = 3.0) -> None:
    """Fail at once, in one line, when the host cannot be resolved or connected to (offline, firewalled),
    instead of after the download client's retries."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or url
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CheckpointError(
            f"cannot reach {host} ({reason}): this machine looks offline. Fetch on a machine with network "
            f"access and copy the model folders over, or serve local folders; {OFFLINE_ALTERNATIVE}"
        ) from None


def fetch_from_hub(
    repo_id: str, repository: Path, revision: str | None = None, verify: Callable[[Path], None] | None = None
) -> Path:
    """`download_from_hub` at the pinned revision (`revision` overrides), failing at once when offline."""
    import logging

    try:
        from huggingface_hub import constants
    except ImportError:
        raise CheckpointError(
            f"cannot fetch {repo_id!r}: huggingface_hub is not installed (an ONNX-only install). Fetch and "
            "export models with the full install (`pip install '.[export]'`, `mvit fetch`, `mvit export`), "
            "then serve the model folders"
        ) from None

    if not constants.HF_HUB_OFFLINE:
        check_reachable(constants.ENDPOINT)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry chatter; we report once
    return download_from_hub(repo_id, repository, revision or HUB_REVISIONS.get(repo_id, "main"), verify)
