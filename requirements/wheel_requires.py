"""Print a wheel's Requires-Dist lines (environment markers kept), leaving out the named packages.

`make install-vllm` installs vLLM's CPU wheel this way: its metadata pins `torch==2.13.0+cpu`, which no
registry here serves, so the CUDA build of the same torch goes in first, then these requirements, then the
wheel with --no-deps.
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser

from packaging.requirements import Requirement


def requirements(wheel: str, leave_out: set[str]) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(name).decode())
    kept = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        # Extras' requirements carry `extra == "..."` markers: not wanted for a plain install.
        if req.name.lower() in leave_out or (req.marker and "extra" in str(req.marker)):
            continue
        kept.append(line)
    return kept


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: wheel_requires.py WHEEL [PACKAGE_TO_LEAVE_OUT ...]")
    print("\n".join(requirements(sys.argv[1], {p.lower() for p in sys.argv[2:]})))
