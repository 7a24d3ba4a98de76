"""Turning ``name_or_path`` (+ subfolder / revision / variant) into local files.

* A local folder is used as is.
* A Hub repo id goes through the Hugging Face cache: one metadata call (``model_info``) gives the commit and
  the file list; the files to fetch are computed from that list (only the weights the variant and the
  safetensors policy select); when they are all in the cached snapshot nothing else is asked of the network.
* Offline (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``, read at call time) the file list comes from the
  cached snapshot of the revision (``refs/<revision>``), so online and offline pick the same files.
"""
from __future__ import annotations

import fnmatch
import logging
import os
import re
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

logger = logging.getLogger(__name__)

HUB_URL = "https://huggingface.co"
DEPRECATED_REVISION_ARGS = ("fp16", "non-ema")
_TRUE = {"1", "ON", "YES", "TRUE"}
_FLAX_PATTERNS = ["*.msgpack"]
_ONNX_PATTERNS = ["*.onnx", "*.pb"]


# ----------------------------------------------------------------------------------------------- small helpers
def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set now (environment) or was set when huggingface_hub was imported."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _cache_root(cache_dir: Optional[str]) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return env
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _validate_name(name_or_path) -> str:
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "pretrained_model_name_or_path must be a local folder or a Hub repo id (str), got "
            f"{type(name_or_path).__name__}"
        )
    name = os.fspath(name_or_path)
    if not name:
        raise ValueError("pretrained_model_name_or_path must not be empty")
    return builtin_folder(name) or name


def builtin_folder(name: str) -> Optional[str]:
    """The shipped folder of a model packaged with diffblocks (``"diffblocks/tiny-digits"``), else None.

    A local path of the same name wins, as a local folder wins over a Hub repo id.
    """
    if os.path.exists(name) or name.count("/") != 1:
        return None
    from .default_models import resolve_builtin

    return resolve_builtin(name)


def _check_repo_id(name: str) -> None:
    if name.count("/") > 1 or name.startswith(("/", ".", "~")) or "\\" in name:
        raise ValueError(
            f'The provided pretrained_model_name_or_path "{name}" is neither a valid local path nor a valid repo id. '
            "Please check the parameter."
        )


def _warn_deprecated_revision(revision: Optional[str]) -> None:
    if revision in DEPRECATED_REVISION_ARGS:
        warnings.warn(
            f"Loading with `revision='{revision}'` is deprecated: weight variants now live on the main branch. "
            f"Use `variant='{revision.replace('-', '_')}'` instead (and `revision=None`).",
            FutureWarning,
            stacklevel=3,
        )


def _map_hub_error(err: Exception, repo_id: str, revision: Optional[str], filename: Optional[str] = None):
    """Translate huggingface_hub exceptions into the messages diffusers users know."""
    from huggingface_hub import errors as E

    if isinstance(err, E.RepositoryNotFoundError):
        return EnvironmentError(
            f"{repo_id} is not a local folder and is not a valid model identifier listed on "
            f"'{HUB_URL}/models'\nIf this is a private repository, make sure to pass a token having permission to "
            "this repo with `token` or log in with `hf auth login`."
        )
    if isinstance(err, E.RevisionNotFoundError):
        return EnvironmentError(
            f"{revision} is not a valid git identifier (branch name, tag name or commit id) that exists for this "
            f"model name. Check the model page at '{HUB_URL}/{repo_id}' for available revisions."
        )
    if isinstance(err, E.LocalEntryNotFoundError):
        return EnvironmentError(
            f"We couldn't connect to '{HUB_URL}' to load the file {filename or ''}, couldn't find it in the cached "
            f"files and it looks like {repo_id} is not the path to a directory containing it. Check your internet "
            "connection, or load the model offline from a local folder."
        )
    if isinstance(err, E.EntryNotFoundError):
        return EnvironmentError(f"{repo_id} does not appear to have a file named {filename}.")
    return None


# ----------------------------------------------------------------------------------------------- single files
def resolve_file(
    name_or_path,
    filename: str,
    *,
    subfolder: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
    token=None,
    force_download: bool = False,
    proxies=None,
    **_ignored,
) -> str:
    """Local path of ``[subfolder/]filename`` inside a folder or a Hub repo (downloaded into the cache)."""
    name = _validate_name(name_or_path)
    if not isinstance(filename, str) or not filename:
        raise ValueError(f"filename must be a non-empty string, got {filename!r}")
    if os.path.isfile(name):
        return name
    if os.path.isdir(name):
        folder = os.path.join(name, subfolder) if subfolder else name
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
        raise EnvironmentError(f"Error no file named {filename} found in directory {folder}.")
    _check_repo_id(name)
    _warn_deprecated_revision(revision)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(
            name, filename, subfolder=subfolder or None, revision=revision, cache_dir=cache_dir,
            local_files_only=bool(local_files_only) or is_offline(), token=token, force_download=force_download,
        )
    except Exception as err:  # noqa: BLE001 - mapped below
        mapped = _map_hub_error(err, name, revision, f"{subfolder}/{filename}" if subfolder else filename)
        if mapped is not None:
            raise mapped from err
        raise


# ----------------------------------------------------------------------------------------------- cache listing
def _repo_cache_folder(repo_id: str, cache_dir: Optional[str]) -> str:
    return os.path.join(_cache_root(cache_dir), "models--" + repo_id.replace("/", "--"))


def cached_snapshot(repo_id: str, revision: Optional[str] = None, cache_dir: Optional[str] = None) -> Optional[str]:
    """Path of the cached snapshot of ``revision`` (branch/tag via ``refs/``, or a commit hash), or None."""
    repo_folder = _repo_cache_folder(repo_id, cache_dir)
    revision = revision or "main"
    commit = None
    ref = os.path.join(repo_folder, "refs", revision)
    if os.path.isfile(ref):
        with open(ref, "r", encoding="utf-8") as f:
            commit = f.read().strip()
    elif re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    if commit is None:
        return None
    snapshot = os.path.join(repo_folder, "snapshots", commit)
    return snapshot if os.path.isdir(snapshot) else None


def list_folder_files(folder: str) -> List[str]:
    """All files under ``folder`` as sorted posix relative paths."""
    out = []
    for root, _dirs, files in os.walk(folder):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), folder)
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def repo_file_list(
    repo_id: str,
    *,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
    token=None,
) -> Tuple[Optional[str], List[str], bool]:
    """``(commit, files, from_cache)`` for a repo: one ``model_info`` call, or the cached snapshot offline.

    When the Hub cannot be reached the cached snapshot is used with a warning.
    """
    offline = bool(local_files_only) or is_offline()
    if not offline:
        from huggingface_hub import HfApi
        from huggingface_hub import errors as E

        try:
            info = HfApi().model_info(repo_id, revision=revision, token=token)
            return info.sha, sorted(s.rfilename for s in (info.siblings or [])), False
        except (E.RepositoryNotFoundError, E.RevisionNotFoundError, E.GatedRepoError) as err:
            mapped = _map_hub_error(err, repo_id, revision)
            raise (mapped or err) from err
        except Exception as err:  # noqa: BLE001 - connection problems: fall back to the cache
            warnings.warn(f"Couldn't connect to the Hub: {err}. Will try to load from local cache.", UserWarning)
    snapshot = cached_snapshot(repo_id, revision, cache_dir)
    if snapshot is None:
        raise EnvironmentError(
            f"Cannot load model {repo_id}: the model is not cached locally (revision {revision or 'main'!r}) and "
            "the Hub is not reachable or offline mode is on (HF_HUB_OFFLINE / local_files_only). Download it once "
            "online, or pass a local folder."
        )
    return os.path.basename(snapshot), list_folder_files(snapshot), True


# ----------------------------------------------------------------------------------------------- allow lists
def model_allow_patterns(
    filenames: Iterable[str],
    *,
    subfolder: Optional[str] = None,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    weights_names: Optional[Tuple[str, str]] = None,
) -> List[str]:
    """Files of one model folder to fetch: its ``config.json`` plus the weights selected by the same rules as
    local loading (variant first, safetensors before ``.bin`` unless ``use_safetensors`` says otherwise).
    ``weights_names`` (safetensors name, .bin name) defaults to diffusers' file names.

    Pure function over the repo's file list; raises the errors local loading would raise.
    """
    from .models import weights as W

    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    inside = sorted(f[len(prefix):] for f in filenames if f.startswith(prefix) and "/" not in f[len(prefix):])
    names = set(inside)
    extra = {} if weights_names is None else {"weights_names": tuple(weights_names)}
    chosen = _select_weight_names(names, variant=variant, use_safetensors=use_safetensors,
                                  where=prefix.rstrip("/") or ".", **extra)
    allow = [prefix + W.CONFIG_NAME] + [prefix + n for n in chosen]
    return allow


def _select_weight_names(
    names: Set[str], *, variant: Optional[str], use_safetensors: Optional[bool], where: str,
    weights_names: Tuple[str, str] = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
) -> List[str]:
    """Mirror of :func:`diffblocks.models.weights.find_weight_files` on a list of names."""
    from .models import weights as W

    kinds = []
    if use_safetensors is not False:
        kinds.append(weights_names[0])
    if use_safetensors is not True:
        kinds.append(weights_names[1])
    for weights_name in kinds:
        index = W.index_file_name(weights_name, variant)
        candidates = [index]
        if variant is not None:
            candidates.append(f"{weights_name}.{variant}.index.json")  # legacy layout
        for idx in candidates:
            if idx in names:
                stem, _, ext = weights_name.rpartition(".")
                if idx == index:
                    pat = re.compile(rf"^{re.escape(stem)}{re.escape('.' + variant) if variant else ''}"
                                     rf"-\d{{5}}-of-\d{{5}}\.{ext}$")
                else:
                    logger.warning(W.LEGACY_VARIANT_WARNING.format(variant=variant))
                    pat = re.compile(rf"^{re.escape(stem)}-\d{{5}}-of-\d{{5}}\.{re.escape(variant)}\.{ext}$")
                return [idx] + sorted(n for n in names if pat.match(n))
        single = W.add_variant(weights_name, variant)
        if single in names:
            return [single]
    if variant is not None and not any(
        W.is_variant_weight_file(n, variant) or W.is_legacy_variant_weight_file(n, variant) for n in names
    ):
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available. Files in {where}: {sorted(names)[:10]}"
        )
    if use_safetensors is True:
        raise EnvironmentError(
            f"Could not find the necessary `safetensors` weights in {sorted(names)} (variant={variant})"
        )
    wanted = " or ".join(W.add_variant(k, variant) for k in kinds)
    raise EnvironmentError(f"Error no file named {wanted} found in directory {where}.")


def variant_compatible_siblings(
    filenames: Iterable[str], variant: Optional[str] = None, ignore_patterns: Optional[Sequence[str]] = None
) -> Tuple[Set[str], Set[str]]:
    """Weight files to use for a whole repo, per top-level folder: ``(usable_files, variant_files)``.

    In each folder, variant files (new layout, else legacy) and their index win when a variant is asked for;
    other folders use their non-variant files. Raises when a variant is asked for and no folder has it.
    """
    from .models import weights as W

    filenames = [f for f in filenames if not (ignore_patterns and _matches_any(f, ignore_patterns))]
    groups: Dict[str, List[str]] = {}
    for f in filenames:
        folder = f.split("/", 1)[0] if "/" in f else ""
        groups.setdefault(folder, []).append(f)
    usable: Set[str] = set()
    variant_files: Set[str] = set()
    legacy_seen = False
    for folder, files in groups.items():
        picked: List[str] = []
        if variant is not None:
            picked = [f for f in files if W.is_variant_weight_file(f, variant) or W.is_variant_index_file(f, variant)]
            if not any(W.is_variant_weight_file(f, variant) for f in files):
                legacy = [f for f in files if W.is_legacy_variant_weight_file(f, variant)
                          or W.is_legacy_variant_index_file(f, variant)]
                if legacy:
                    legacy_seen = True
                    picked = legacy
        if picked:
            variant_files.update(picked)
        else:
            picked = [f for f in files if W.is_non_variant_weight_file(f) or W.is_non_variant_index_file(f)]
        usable.update(picked)
    if legacy_seen:
        logger.warning(W.LEGACY_VARIANT_WARNING.format(variant=variant))
    if variant is not None and not variant_files:
        raise ValueError(
            f"You are trying to load model files of the `variant={variant}`, but no such modeling files are "
            "available. "
        )
    if variant is not None and usable - variant_files:
        logger.warning("A mixture of %s and non-%s filenames will be loaded.", variant, variant)
    return usable, variant_files


def _matches_any(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(os.path.basename(name), p) for p in patterns)


def filter_files(filenames: Iterable[str], allow_patterns: Optional[Sequence[str]],
                 ignore_patterns: Optional[Sequence[str]] = None) -> List[str]:
    """Files matched by ``allow_patterns`` (all when None) and by none of ``ignore_patterns`` (fnmatch)."""
    out = []
    for f in filenames:
        if allow_patterns is not None and not any(fnmatch.fnmatch(f, p) for p in allow_patterns):
            continue
        if ignore_patterns and any(fnmatch.fnmatch(f, p) for p in ignore_patterns):
            continue
        out.append(f)
    return out


# ----------------------------------------------------------------------------------------------- folders
def resolve_folder(
    name_or_path,
    *,
    allow_patterns: Optional[Sequence[str]] = None,
    ignore_patterns: Optional[Sequence[str]] = None,
    select: Optional[Callable[[List[str]], Sequence[str]]] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
    token=None,
    force_download: bool = False,
    proxies=None,
    **_ignored,
) -> str:
    """Local root folder for ``name_or_path`` holding at least the selected files.

    ``select(files)`` (given the repo's full file list) or ``allow_patterns`` decide what is fetched; a local
    folder is returned unchanged. Nothing is downloaded when every selected file is already in the cached
    snapshot of the current commit.
    """
    name = _validate_name(name_or_path)
    if os.path.isdir(name):
        return name
    _check_repo_id(name)
    _warn_deprecated_revision(revision)
    offline = bool(local_files_only) or is_offline()
    commit, files, from_cache = repo_file_list(
        name, revision=revision, cache_dir=cache_dir, local_files_only=offline, token=token
    )
    if select is not None:
        patterns = list(select(files))
    else:
        patterns = list(allow_patterns) if allow_patterns is not None else None
    wanted = filter_files(files, patterns, ignore_patterns)
    snapshot = os.path.join(_repo_cache_folder(name, cache_dir), "snapshots", commit) if commit else None
    if snapshot and os.path.isdir(snapshot) and not force_download and \
            all(os.path.isfile(os.path.join(snapshot, f)) for f in wanted):
        logger.debug("All %d selected files of %s are cached in %s", len(wanted), name, snapshot)
        return snapshot
    if offline or from_cache:
        missing = [f for f in wanted if not (snapshot and os.path.isfile(os.path.join(snapshot, f)))]
        raise EnvironmentError(
            f"Cannot load model {name}: the cached snapshot is incomplete (missing {missing[:5]}) and the Hub "
            "cannot be used (offline mode or no connection)."
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            name, revision=commit or revision, cache_dir=cache_dir, token=token, allow_patterns=wanted if wanted else patterns,
            force_download=force_download,
        )
    except Exception as err:  # noqa: BLE001
        mapped = _map_hub_error(err, name, revision)
        if mapped is not None:
            raise mapped from err
        raise


def resolve_model_folder(
    name_or_path,
    *,
    subfolder: Optional[str] = None,
    variant: Optional[str] = None,
    use_safetensors: Optional[bool] = None,
    weights_names: Optional[Tuple[str, str]] = None,
    **hub_kwargs,
) -> str:
    """Local folder holding one model's ``config.json`` and weights (``<root>/<subfolder>``).

    For a repo id only that config and the weight files selected by ``variant``/``use_safetensors`` (and named
    ``weights_names``, diffusers' names by default) are fetched.
    """
    name = _validate_name(name_or_path)
    if os.path.isdir(name):
        folder = os.path.join(name, subfolder) if subfolder else name
        if not os.path.isdir(folder):
            raise EnvironmentError(f"Error no file named config.json found in directory {folder}.")
        return folder

    def select(files: List[str]) -> List[str]:
        return model_allow_patterns(files, subfolder=subfolder, variant=variant, use_safetensors=use_safetensors,
                                    weights_names=weights_names)

    root = resolve_folder(name, select=select, **hub_kwargs)
    return os.path.join(root, subfolder) if subfolder else root
