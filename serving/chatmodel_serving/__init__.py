"""chatmodel serving runtime: model loading, the batching engine, the OpenAI API, the trainer and the CLI."""

__version__ = "0.1.0"
