"""`python tests/e2e/kmock_server.py PORT`: kmock's Kubernetes emulator on a loopback port, with the
resources the in-process operator tests declare, for the operator image to talk to."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))


async def serve(port: int) -> None:
    import kmock
    from operator_kmock import declare

    async with kmock.KubernetesEmulator() as k, kmock.Server(k, host="127.0.0.1", port=port):
        declare(k)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
