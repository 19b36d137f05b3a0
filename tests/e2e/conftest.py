"""The image end-to-end tests run from `make e2e-images` only (they need the images `make images` builds
and take minutes): `make test` does not collect them."""

from __future__ import annotations

import os

if os.environ.get("CHATMODEL_E2E_IMAGES") != "1":
    collect_ignore_glob = ["test_*.py"]
