"""Download models and datasets from a Hugging Face hub (or a hub-compatible mirror) and S3-compatible
stores into a local cache, once per (source, resolved revision), verified against the store's checksums.

`pull(source)` is the one entry point: `chatmodel run`/`serve` call it with ~/.cache/chatmodel, the
cluster's download Job (`chatmodel download`) with the shared cache volume."""

from chatmodel_operator.remote_source import FetchError, Remote, is_remote, parse

from .cache import Pulled, pull
from .settings import Settings

__all__ = ["FetchError", "Pulled", "Remote", "Settings", "is_remote", "parse", "pull"]
