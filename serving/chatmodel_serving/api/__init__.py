"""The OpenAI-compatible HTTP API in front of one or more engines, by role:

app.py         create_app: routes, error handlers and the OpenAPI patch
state.py       ServedModel, ServerState and Caller: what the routes share
auth.py        the bearer API-key check
prompts.py     prompt building (chat template, completion prompts) and sampling translation
bridge.py      the engine bridge: submit sequences, relay their events into the event loop, count metrics
responses.py   whole answers and SSE streams, built from protocol.py's response models
middleware.py  the ASGI middlewares: RequestGate (API key, body size) and RequestLog
protocol.py    the OpenAI request and response models, ApiError
quota.py       per-key request and token quotas
metrics.py     the Prometheus metrics
playground.py  the playground page at / (static files in chatmodel_serving/ui/)
tools.py       tool calling: checks, rendering for the chat template, the guide of required / named
tool_calls.py  the calls read out of answers, whole or as a stream arrives
"""
