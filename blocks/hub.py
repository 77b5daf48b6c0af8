"""Files from the Hugging Face hub (or its local cache), with one clear error when they cannot be had."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def hub_files(
    repo: str, filenames: Sequence[str], cache_dir: str | Path | None, local_files_only: bool, instead: str
) -> dict[str, Path]:
    """Each of `filenames` of `repo`, downloaded or cached; a ConnectionError naming the file and saying `instead`."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # datasets depends on it, but keep the message useful without it
        raise ImportError(
            "loading from the hub needs the huggingface_hub package: pip install huggingface_hub"
        ) from err
    paths = {}
    for filename in filenames:
        try:
            paths[filename] = Path(
                hf_hub_download(
                    repo,
                    filename,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                    local_files_only=local_files_only,
                )
            )
        except Exception as err:  # the hub raises many types (offline, DNS, 404); all mean "not available here"
            raise ConnectionError(
                f"could not get {filename} of {repo} from the Hugging Face hub ({type(err).__name__}: {err}). "
                f"Offline? {instead}"
            ) from err
    return paths
