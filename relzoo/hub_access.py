"""Whether the Hugging Face Hub can be reached, decided in about a second.

Without the network, huggingface_hub retries each file for about 20 seconds before giving up, and the error it
ends with does not say what to do. relzoo's loaders ask :func:`hub_unreachable` first when what they need is not
already on disk, and fail at once with a message that does.
"""
from __future__ import annotations

import os

__all__ = ["hub_unreachable", "repo_in_cache", "not_reachable_message"]


def hub_unreachable(timeout: float = 1.0) -> str | None:
    """``None`` when the Hub endpoint answers (any HTTP status) within ``timeout`` seconds, else why not:
    ``HF_HUB_OFFLINE`` is set, or the one request without retries failed (no network, DNS, refused, timeout).
    Honours ``HF_ENDPOINT`` and the proxy variables, as huggingface_hub does."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:  # huggingface_hub's own HTTP client (its proxies and headers), one request, no retries
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # the client's connect, DNS, timeout and TLS errors have no public common base
        return f"{constants.ENDPOINT} gave no answer within {timeout:g} s ({type(err).__name__}: {err})"
    return None


def repo_in_cache(repo_id: str, filename: str = "config.json", revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision), str)
    except Exception:  # not a valid repo id: the caller's loader will say so
        return False


def not_reachable_message(repo_id: str, reason: str, local_hint: str) -> str:
    """One message for every "the weights are neither here nor reachable" case."""
    return (f"{repo_id!r} is not a local folder, is not in the Hugging Face cache ({_cache_dir()}), and the Hub cannot "
            f"be reached: {reason}. Download it where the Hub is reachable (`hf download {repo_id}`, then copy the "
            f"cache or the folder here), or {local_hint}.")


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)
