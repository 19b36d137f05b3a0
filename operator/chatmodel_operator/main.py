"""Entry point: `python -m chatmodel_operator` (or `kopf run -m chatmodel_operator.main`)."""

from __future__ import annotations

import kopf

from chatmodel_operator import handlers, metrics
from chatmodel_operator.config import Config


def build_registry(config: Config) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    return registry


def main() -> None:
    config = Config.from_env()
    metrics.serve(config.metrics_port)
    kopf.configure(verbose=False)
    kopf.run(
        registry=build_registry(config),
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        # One replica (the install Deployment uses Recreate), so no peering CRD is needed.
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{config.health_port}/healthz",
    )


if __name__ == "__main__":
    main()
