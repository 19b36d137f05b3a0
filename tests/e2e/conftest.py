"""The image end-to-end tests run from `make e2e-images` only (they need the images `make images` builds
and take minutes): `make test` does not collect them. test_kind_script.py (the script parses, and skips
cleanly without its tools) runs in every `make test`."""

from __future__ import annotations

import os

if os.environ.get("CHATMODEL_E2E_IMAGES") != "1":
    collect_ignore = ["test_images.py"]
