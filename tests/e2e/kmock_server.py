"""`python -m tests.e2e.kmock_server PORT`: kmock's Kubernetes emulator on a loopback port, with the
resources the in-process operator tests declare, for the operator image to talk to."""

from __future__ import annotations

import asyncio
import sys


async def serve(port: int) -> None:
    import kmock

    from tests.operator.operator_kmock import declare

    async with kmock.KubernetesEmulator() as k, kmock.Server(k, host="127.0.0.1", port=port):
        declare(k)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
