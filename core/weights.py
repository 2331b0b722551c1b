"""The weights manager: which model files exist, where they are found, how they load.

* ``weights/manifest.json`` (in the pack) lists every model file the pack knows: id, family,
  models-folder key, accepted file names (official name first, then safetensors twins), source,
  sha256 and size where known, licence.
* :func:`resolve` finds a file: explicit path -> the host's model folders (ComfyUI's
  ``folder_paths``, so ``extra_model_paths.yaml`` works; standalone ``./models/<key>``) -> the
  pack's own ``weights/<key>/`` -> ``$TALKINGHEAD_MODELS/<key>/``. Missing files are downloaded
  when online (huggingface_hub, or a plain URL), else :class:`WeightsMissingError` says what to
  put where and where to get it.
* :func:`load_checkpoint` never runs pickled code: safetensors, or ``torch.load(weights_only=True)``
  with a small allow-list of plain types (numpy arrays, argparse.Namespace, paths).
* :func:`convert_to_safetensors` turns an official ``.pth`` into a flat ``.safetensors``.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pathlib
import pickle
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch

from .errors import CheckpointError, WeightsMissingError
from .files import atomic_write
from .host import ENV_MODELS, ENV_OFFLINE, HOST

PACK_DIR = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PACK_DIR / "weights"
MANIFEST_PATH = WEIGHTS_DIR / "manifest.json"


# --------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ModelFile:
    """One entry of the manifest."""

    id: str
    family: str
    folder: str
    names: Sequence[str]
    source: Mapping[str, str] = field(default_factory=dict)
    sha256: Optional[str] = None
    size: Optional[int] = None
    license: str = "unknown"
    description: str = ""
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.names[0]

    def source_text(self) -> str:
        src = self.source
        if "hf_repo" in src:
            path = src.get("hf_path", self.filename)
            return f"https://huggingface.co/{src['hf_repo']}/blob/main/{path}"
        return src.get("url") or src.get("page") or "see weights/README.md"


def load_manifest(path: Path = MANIFEST_PATH) -> Dict[str, ModelFile]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out = {}
    for entry in data["files"]:
        mf = ModelFile(**entry)
        if mf.id in out:
            raise ValueError(f"duplicate id {mf.id!r} in {path}")
        out[mf.id] = mf
    return out


_MANIFEST: Optional[Dict[str, ModelFile]] = None


def manifest() -> Dict[str, ModelFile]:
    global _MANIFEST
    if _MANIFEST is None:
        _MANIFEST = load_manifest()
    return _MANIFEST


def model_file(file_id: str) -> ModelFile:
    try:
        return manifest()[file_id]
    except KeyError:
        raise KeyError(f"unknown model file id {file_id!r}; known: {sorted(manifest())}") from None


def model_folders() -> List[str]:
    """Every models-folder key used by the manifest (registered with ComfyUI at import)."""
    return sorted({mf.folder for mf in manifest().values()})


# --------------------------------------------------------------------------- resolution
def search_dirs(folder: str) -> List[Path]:
    """Directories searched for files of one folder key, in resolution order."""
    dirs: List[Path] = list(HOST.folders_for(folder))
    dirs.append(WEIGHTS_DIR / folder)
    env = os.environ.get(ENV_MODELS)
    if env:
        for root in env.split(os.pathsep):
            if root:
                dirs += [Path(root) / folder, Path(root)]
    seen, out = set(), []
    for d in dirs:
        key = str(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def find(mf: ModelFile) -> Optional[Path]:
    """First existing file for ``mf`` in :func:`search_dirs`, or None."""
    for d in search_dirs(mf.folder):
        for name in mf.names:
            p = d / name
            if p.is_file():
                return p
    return None


def is_offline() -> bool:
    for var in (ENV_OFFLINE, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def missing_message(mf: ModelFile, reason: str = "") -> str:
    dirs = search_dirs(mf.folder)
    sub = Path(mf.filename).parent  # official names may sit in a sub-folder of the models folder
    where = dirs[0] / sub if str(sub) != "." else dirs[0]
    lines = [
        f"Model file '{Path(mf.filename).name}' ({mf.description or mf.id}) was not found.",
        f"Put it in: {where}" + (f"  (also searched: {', '.join(str(d) for d in dirs[1:])})" if len(dirs) > 1 else ""),
        f"Get it from: {mf.source_text()}",
        f"Licence: {mf.license}",
    ]
    if len(mf.names) > 1:
        lines.append("Accepted file names: " + ", ".join(mf.names))
    if reason:
        lines.append(reason)
    return "\n".join(lines)


def resolve(file_id: str, explicit: Optional[os.PathLike] = None, download: bool = True,
            progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Path of a model file on disk, downloading it first when allowed and online."""
    mf = model_file(file_id)
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return p.resolve()
        raise WeightsMissingError(missing_message(mf, f"The explicit path {p} does not exist."))
    found = find(mf)
    if found is not None:
        return found
    if not download:
        raise WeightsMissingError(missing_message(mf, "Automatic download is switched off."))
    if is_offline():
        raise WeightsMissingError(missing_message(
            mf, f"Offline mode ({ENV_OFFLINE}/HF_HUB_OFFLINE is set): nothing is downloaded."))
    target_dir = search_dirs(mf.folder)[0]
    try:
        return download_file(mf, target_dir, progress=progress)
    except WeightsMissingError:
        raise
    except Exception as exc:  # network errors, permissions...
        raise WeightsMissingError(missing_message(
            mf, f"Download failed ({type(exc).__name__}: {exc}); the machine may be offline.")) from exc


def download_file(mf: ModelFile, target_dir: Path,
                  progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Download ``mf`` into ``target_dir`` atomically and check its size/sha256 when known."""
    final = target_dir / mf.filename  # the name may hold a sub-folder (e.g. base_models_v1.1/...)
    final.parent.mkdir(parents=True, exist_ok=True)
    target_dir = final.parent
    src = mf.source
    if "hf_repo" in src:
        from huggingface_hub import hf_hub_download  # progress bars come from huggingface_hub

        tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=target_dir))
        try:
            got = Path(hf_hub_download(repo_id=src["hf_repo"], filename=src.get("hf_path", mf.filename),
                                       revision=src.get("revision"), local_dir=tmp_dir))
            _verify(mf, got)
            os.replace(got, final)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        return final
    if "url" in src:
        with atomic_write(final) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(src["url"], timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total or done)
            _verify(mf, tmp)
        return final
    raise WeightsMissingError(missing_message(mf, "It has no automatic download source."))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _verify(mf: ModelFile, path: Path) -> None:
    size = path.stat().st_size
    if mf.size and size != mf.size:
        raise CheckpointError(f"downloaded '{mf.filename}' has {size} bytes, expected {mf.size}")
    if mf.sha256 and sha256_of(path) != mf.sha256.lower():
        raise CheckpointError(f"downloaded '{mf.filename}' has the wrong sha256 (corrupt download?)")


# --------------------------------------------------------------------------- safe loading
def _safe_globals() -> list:
    """The plain, code-free types official checkpoints need besides tensors."""
    import numpy as np

    allowed = [argparse.Namespace, collections.OrderedDict, np.ndarray, np.dtype]
    # paths by the names pickles use ("pathlib.PosixPath"; Python 3.13 moved the classes to
    # pathlib._local); a path of the other OS, which cannot be instantiated here, loads as its pure twin
    posix, windows = os.name != "nt", os.name == "nt"
    allowed += [(pathlib.PosixPath if posix else pathlib.PurePosixPath, "pathlib.PosixPath"),
                (pathlib.WindowsPath if windows else pathlib.PureWindowsPath, "pathlib.WindowsPath"),
                (pathlib.PurePosixPath, "pathlib.PurePosixPath"), (pathlib.PureWindowsPath, "pathlib.PureWindowsPath")]
    try:  # numpy >= 2 moved the reconstruct helper; both names appear in old pickles
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    allowed += [_reconstruct, scalar]
    # the np.dtype subclasses pickled dtypes are built as (np.dtypes.Float32DType, ...)
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        allowed += [getattr(dtypes_mod, n) for n in dir(dtypes_mod) if n.endswith("DType")]
    else:  # numpy 1.24 has the same classes, only no np.dtypes module that names them
        allowed += list({type(np.dtype(c)) for c in np.typecodes["All"]})
    # both names the helpers have in pickles, mapped to the same functions whichever numpy runs:
    # numpy 1.x writes numpy.core.multiarray (2019-era grid.dat), numpy 2 writes numpy._core.multiarray
    extra = []
    for modname in ("numpy.core.multiarray", "numpy._core.multiarray"):
        extra.append((_reconstruct, f"{modname}._reconstruct"))
        extra.append((scalar, f"{modname}.scalar"))
    return allowed + extra


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def load_checkpoint(path: os.PathLike, map_location="cpu") -> object:
    """Load a checkpoint without executing pickled code.

    ``.safetensors`` -> flat ``{name: tensor}``; anything else goes through
    ``torch.load(weights_only=True)`` (zip and legacy formats) with the allow-list above.
    Corrupt, truncated or code-carrying files raise :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(map_location))
        except Exception as exc:
            raise CheckpointError(f"{path.name}: not a readable safetensors file "
                                  f"(corrupt or truncated download?): {exc}") from exc
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(str(path), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg or "weights_only" in msg.lower() or "not an allowed global" in msg:
            raise CheckpointError(
                f"{path.name}: refused to load: the file asks to run or build Python objects that are not "
                f"plain weights (only tensors, numpy arrays, argparse.Namespace and paths are allowed). "
                f"It is not an official checkpoint, or it was modified. Details: {msg.splitlines()[0]}") from exc
        raise CheckpointError(f"{path.name}: not a readable checkpoint (corrupt or truncated?): {msg}") from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path.name}: not a readable checkpoint (corrupt or truncated download?): "
                              f"{type(exc).__name__}: {exc}") from exc


def load_pickle(path: os.PathLike) -> object:
    """A plain (non-torch) pickle such as Ditto's cfg ``.pkl`` or JoyVASA's ``motion_template.pkl``,
    without executing code: only containers, numbers, strings, numpy arrays/scalars/dtypes,
    ``argparse.Namespace``, ``OrderedDict`` and paths may appear. Anything else raises
    :class:`CheckpointError` naming the file and the refused global.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    allowed = {}
    for item in _safe_globals():
        obj, name = item if isinstance(item, tuple) else (item, f"{item.__module__}.{item.__qualname__}")
        allowed[name] = obj
    # numpy pickles may name these through their public paths
    import numpy as np
    allowed.setdefault("numpy.ndarray", np.ndarray)
    allowed.setdefault("numpy.dtype", np.dtype)

    class _Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            key = f"{module}.{name}"
            if key in allowed:
                return allowed[key]
            if module == "numpy._core.multiarray" and f"numpy.core.multiarray.{name}" in allowed:
                return allowed[f"numpy.core.multiarray.{name}"]
            raise pickle.UnpicklingError(f"not an allowed global: {key}")

    try:
        with open(path, "rb") as fh:
            return _Restricted(fh).load()
    except pickle.UnpicklingError as exc:
        if "not an allowed global" in str(exc):
            raise CheckpointError(f"{path.name}: refused to load: the file asks to run or build Python objects that "
                                  f"are not plain data ({exc}). It is not the official file, or it was "
                                  f"modified.") from exc
        raise CheckpointError(f"{path.name}: not a readable pickle (corrupt or truncated download?): {exc}") from exc
    except (EOFError, ValueError, OSError, AttributeError, ImportError, IndexError, TypeError) as exc:
        raise CheckpointError(f"{path.name}: not a readable pickle (corrupt or truncated download?): "
                              f"{type(exc).__name__}: {exc}") from exc


def flatten_state(obj: object, prefix: str = "", skip: Callable[[str], bool] = lambda k: False) -> Dict[str, torch.Tensor]:
    """Nested dicts of tensors -> ``{"a.b.c": tensor}``; non-tensor leaves are dropped."""
    out: Dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        if not skip(prefix):
            out[prefix] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if skip(key):
                continue
            out.update(flatten_state(v, key, skip))
    return out


def load_state_dict(path: os.PathLike, prefix: str = "", map_location="cpu") -> Dict[str, torch.Tensor]:
    """Flat state dict of a checkpoint; with ``prefix`` only those keys, prefix removed.

    Works the same for the official nested ``.pth`` (``{"generator": state_dict, ...}``) and the
    flat safetensors twin (``"generator.xxx"`` keys).
    """
    flat = flatten_state(load_checkpoint(path, map_location))
    if not prefix:
        return flat
    p = prefix if prefix.endswith(".") else prefix + "."
    sub = {k[len(p):]: v for k, v in flat.items() if k.startswith(p)}
    if not sub:
        tops = sorted({k.split(".", 1)[0] for k in flat})
        raise CheckpointError(f"{Path(path).name}: has no '{prefix}' weights (top-level keys: {tops[:12]}); "
                              f"is it the right file for this model?")
    return sub


#: top-level key groups that identify the model files this pack knows (to tell the user what a wrong file
#: looks like); the first group contained in a file's top-level keys wins
_FAMILY_SIGNS = (
    ("fom", {"kp_detector", "generator"}, "a First Order Motion Model checkpoint (FOMAnimate, models/fom)"),
    ("sda", {"encoder_id", "generator"}, "a speech-driven-animation model (SDABase, models/sda)"),
    ("ditto", {"input_projection", "cond_projection", "null_cond_embed"},
     "a Ditto LMDM motion model (MotionDiT, models/ditto)"),
    ("joyvasa", {"start_motion_feat", "denoising_net"}, "a JoyVASA motion generator (MotionDiT, models/joyvasa)"),
    ("liveportrait/appearance_feature_extractor", {"first", "second", "down_blocks", "resblocks_3d"},
     "LivePortrait's appearance_feature_extractor"),
    ("liveportrait/warping_module", {"dense_motion_network", "third", "fourth"}, "LivePortrait's warping_module"),
    ("liveportrait/spade_generator", {"G_middle_0", "conv_img"}, "LivePortrait's spade_generator"),
    ("liveportrait/stitching_retargeting_module", {"retarget_shoulder"},
     "LivePortrait's stitching_retargeting_module"),
    ("face_detection/s3fd", {"conv1_1", "conv3_3_norm_mbox_conf"}, "the S3FD face detector"),
    ("hubert", {"feature_extractor", "feature_projection", "encoder"}, "a HuBERT audio encoder"),
    ("liveportrait/motion_extractor", {"detector"}, "LivePortrait's motion_extractor"),
)
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model", "module", "hubert")


def guess_family(keys: Iterable[str]):
    """``(id, description)`` of the known model file whose keys these look like, or None."""
    tops = set()
    for key in keys:
        parts = str(key).split(".")
        while len(parts) > 1 and parts[0] in _WRAPPER_KEYS:
            parts = parts[1:]
        tops.add(parts[0])
    for fid, sign, text in _FAMILY_SIGNS:
        if sign <= tops:
            return fid, text
    return None


def looks_like(keys: Iterable[str], expected: str = "") -> str:
    """The sentence ``" It looks like <family>."`` for a message about a file of the wrong kind; empty when
    the family is unknown or is ``expected`` (an id, or id prefix, of :data:`_FAMILY_SIGNS`)."""
    found = guess_family(keys)
    if found is None or (expected and found[0].startswith(expected)):
        return ""
    return f" It looks like {found[1]}."


def check_state_dict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str,
                     ignore: Iterable[str] = ()) -> None:
    """Strict key and shape check with an error that lists what is missing/unexpected/misshaped."""
    expected = module.state_dict()
    ignore = tuple(ignore)
    keep = lambda k: not any(k.startswith(i) for i in ignore)  # noqa: E731
    missing = [k for k in expected if k not in state and keep(k)]
    unexpected = [k for k in state if k not in expected and keep(k)]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:10]) + (f" ... (+{len(items) - 10} more)" if len(items) > 10 else "")
        parts = [f"{what} does not match the model (wrong file, wrong size variant or corrupt?)."]
        if missing:
            parts.append(f"Missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            parts.append(f"Unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if shapes:
            parts.append(f"Wrong shapes ({len(shapes)}): {show(shapes)}")
        raise CheckpointError("\n".join(parts))


def convert_to_safetensors(src: os.PathLike, dst: Optional[os.PathLike] = None,
                           exclude_prefixes: Sequence[str] = ("optimizer",)) -> Path:
    """Write the tensors of a checkpoint as a flat safetensors file (atomic)."""
    from safetensors.torch import save_file

    src = Path(src)
    dst = Path(dst) if dst else src.with_name(src.name.split(".")[0] + ".safetensors")
    skip = lambda k: any(k == p or k.startswith(p) for p in exclude_prefixes)  # noqa: E731
    flat = flatten_state(load_checkpoint(src), skip=skip)
    if not flat:
        raise CheckpointError(f"{src.name}: holds no tensors to convert")
    flat = {k: v.contiguous() for k, v in flat.items()}
    # safetensors refuses tensors sharing memory; clone the duplicates
    seen = set()
    for k, v in flat.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if ptr in seen:
            flat[k] = v.clone()
        elif ptr is not None:
            seen.add(ptr)
    with atomic_write(dst) as tmp:
        save_file(flat, str(tmp), metadata={"converted_from": src.name})
    return dst


def manifest_table() -> str:
    """The manifest as a Markdown table (weights/README.md embeds it; a test keeps them equal)."""
    rows = ["| id | folder | file names (first = official) | licence | source |", "| --- | --- | --- | --- | --- |"]
    for mf in manifest().values():
        rows.append(f"| `{mf.id}` | `{mf.folder}/` | {', '.join(f'`{n}`' for n in mf.names)} | {mf.license} | "
                    f"{mf.source_text()} |")
    return "\n".join(rows)


def list_files(folder: str, extensions: Sequence[str] = (".pth", ".pt", ".tar", ".safetensors", ".ckpt", ".dat")) -> List[str]:
    """Model files present in the search folders of ``folder`` (names relative to their folder)."""
    exts = tuple(e.lower() for e in extensions)
    names = set()
    for d in search_dirs(folder):
        if d.is_dir():
            names.update(p.relative_to(d).as_posix() for p in d.rglob("*")
                         if p.is_file() and p.name.lower().endswith(exts) and not p.name.startswith("."))
    return sorted(names)


def choices(file_id: str) -> List[str]:
    """Combo values for a checkpoint input: the official name first, then every file found."""
    mf = model_file(file_id)
    return [mf.filename] + [n for n in list_files(mf.folder) if n != mf.filename]


def resolve_choice(file_id: str, choice: str, download: bool = True) -> Path:
    """A combo value from :func:`choices` -> a file on disk (downloading the official file if allowed)."""
    mf = model_file(file_id)
    if not choice or choice in mf.names:
        return resolve(file_id, download=download)
    if Path(choice).is_absolute() or ".." in Path(choice).parts:
        raise WeightsMissingError(f"checkpoint name {choice!r} must be a file name inside the "
                                  f"'{mf.folder}' models folder")
    for d in search_dirs(mf.folder):
        if (d / choice).is_file():
            return d / choice
    raise WeightsMissingError(missing_message(mf, f"The chosen file '{choice}' is not in any of those folders."))
