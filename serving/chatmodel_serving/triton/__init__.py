"""The Triton runtime: a model repository whose python-backend model runs our engine (repo.py, backend.py),
a launcher for the tritonserver bundled in the nvidia-pytriton wheel (server.py), and the gRPC client that
puts the OpenAI API in front of it (client.py). contract.py names the tensors all of them exchange."""
