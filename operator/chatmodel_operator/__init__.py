"""chatmodel-operator: the Kubernetes operator (kopf) and the shared ChatModel spec. Never imports torch."""

__version__ = "0.1.0"
