"""Fetching official checkpoints and public evaluation sets by name (``ccmb fetch``).

Generic layer: sources (http(s) mirrors, Hugging Face, Google Drive, user mirrors), resumable atomic downloads,
verification (size, sha256, checkpoint keys and shapes), safe unpacking, the cache under ``$CCMB_HOME``.
The entries themselves live next to what they describe: ``models/weights.json`` (``models.hub``) and
``ccmb/datasets/sources.json`` (``ccmb.datasets.sources``).
"""
from .core import Artifact, FetchError, FetchResult, FileSpec, fetch_artifact, fetch_file, verify_file
from .home import ccmb_home, datasets_dir, downloads_dir, models_dir, offline
from .sources import GDriveSource, HFSource, Source, SourceError, UrlSource, parse_source, user_mirrors
from .unpack import UnsafeArchiveError, unzip
from .verify import VerificationError, check_checkpoint_keys, read_checkpoint_shapes

__all__ = ["Artifact", "FetchError", "FetchResult", "FileSpec", "fetch_artifact", "fetch_file", "verify_file",
           "ccmb_home", "datasets_dir", "downloads_dir", "models_dir", "offline", "GDriveSource", "HFSource",
           "Source", "SourceError", "UrlSource", "parse_source", "user_mirrors", "UnsafeArchiveError", "unzip",
           "VerificationError", "check_checkpoint_keys", "read_checkpoint_shapes"]
