"""Fine-tuning: `chatmodel train` (and the fine-tune step of `chatmodel run`).

data.py validates and tokenizes JSONL; batches.py batches and computes the answer-only loss;
trainer.py runs the loop; checkpoint.py saves and restores for --resume; artifact.py publishes the
output folder atomically; progress.py reports; cli.py is the command line.
"""
