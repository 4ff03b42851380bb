"""Resolve a model file from a local path or a Hugging Face hub id.

Offline (or without huggingface_hub installed), a hub id fails with an error that names the
repository and the file, and says how to pass a local path instead.
"""

from __future__ import annotations

from pathlib import Path

LLMVOX_REPO = "MBZUAI/LLMVoX"
LLMVOX_DECODER_FILE = "ckpt_english_tiny.pt"
WAVTOKENIZER_FILE = "wavtokenizer_large_speech_320_24k.ckpt"
CHARSIU_REPO = "charsiu/g2p_multilingual_byT5_tiny_16_layers_100"


class WeightsNotFoundError(FileNotFoundError):
    """A model file is neither on disk nor obtainable from the hub."""


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def resolve_file(source: str | Path, filename: str | None = None) -> Path:
    """A local file, a file inside a local directory, or `filename` from hub repo `source`."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if filename is None:
            raise WeightsNotFoundError(f"{path} is a directory; name the file inside it")
        candidate = path / filename
        if candidate.is_file():
            return candidate
        raise WeightsNotFoundError(f"{filename} not found in {path}")
    if filename is None or not looks_like_hub_id(str(source)):
        raise WeightsNotFoundError(f"model file not found: {path}")
    return download_from_hub(str(source), filename)


def resolve_first(source: str | Path, filenames: list[str]) -> Path:
    """The first of `filenames` that exists (locally, or on the hub), e.g. safetensors then bin."""
    errors = []
    for name in filenames:
        try:
            return resolve_file(source, name)
        except WeightsNotFoundError as error:
            errors.append(str(error))
    raise WeightsNotFoundError("; ".join(errors))


def download_from_hub(repo_id: str, filename: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise WeightsNotFoundError(
            f"{filename} from hub repo {repo_id} needs huggingface_hub "
            "(pip install 'llmvox-tts[hub]'), or pass a local path"
        ) from error
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as error:  # network, auth, missing entry: all mean "not obtainable"
        raise WeightsNotFoundError(
            f"could not get {filename} from hub repo {repo_id} ({type(error).__name__}: "
            f"{error}). Offline? Download it where the hub is reachable and pass the local "
            "path instead."
        ) from error
