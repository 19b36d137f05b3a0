"""`chatmodel gateway`: the OpenAI-compatible reverse proxy in front of one namespace's ChatModels.

ring.py       consistent hashing with bounded loads (CHWBL) on a request's prompt prefix
kube.py       the few Kubernetes API calls it makes (list + watch, the scale subresource) over httpx
directory.py  what it knows of the namespace: each model's versions and weights (ChatModel status), each
              version's ready pods (EndpointSlices), each pod's load (its own /metrics)
limits.py     global per-key quotas shared by every replica through Redis (the `limits` library)
metrics.py    the gateway's own Prometheus metrics
app.py        the aiohttp server: key check, quota, choice of version and pod, hold for a cold start, relay

No torch on any of these paths: the gateway starts in a second and runs in the runtime image beside it.
"""
