"""Entry point: `python -m chatmodel_operator` (or `kopf run -m chatmodel_operator.main`)."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from chatmodel_operator import handlers, metrics
from chatmodel_operator.config import Config


def build_registry(config: Config) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    return registry


def add_login(registry: kopf.OperatorRegistry) -> None:
    """In-cluster service account, else a kubeconfig; kopf's own readers, no client library needed.
    (A registry of our own does not get kopf's default login handlers.)"""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def main() -> None:
    config = Config.from_env()
    registry = build_registry(config)
    add_login(registry)
    metrics.serve(config.metrics_port)
    kopf.configure(verbose=False)
    # kopf logs "Handler ... succeeded" for every event of every watched object (about 20 lines per
    # ChatModel, none of them news, and a tenth of the CPU); its warnings and errors still show, and the
    # reconciler logs each phase change itself.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=registry,
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        # One replica (the install Deployment uses Recreate), so no peering CRD is needed.
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
    )


if __name__ == "__main__":
    main()
