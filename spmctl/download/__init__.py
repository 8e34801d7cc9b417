"""`spmctl download`: manifests, resumable transfers, safe extraction, the seed's layout.

- `manifest`: the sources (`spmctl_datasets/sources.yaml`) and the hub endpoint;
- `transfer`: HTTP with a resumable `.part` in the cache dir, size and sha256 checks;
- `extract`: zip/tar extraction that refuses path escapes, outward links, bombs;
- `install`: one source into place atomically (temp folder beside it, then rename).
"""

from __future__ import annotations

from .install import Options, Result, default_cache_dir, hub_model_source, install
from .manifest import Manifest, Source, load_manifest, resolve_endpoint

__all__ = ["Manifest", "Options", "Result", "Source", "default_cache_dir", "hub_model_source", "install",
           "load_manifest", "resolve_endpoint"]
