"""`chatmodel chat`: a streaming terminal chat against any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
        help="base URL of the API, ending in /v1",
    )
    p.add_argument("--model", help="model name (default: the first one the server lists)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("message", nargs="?", help="ask one question and exit (default: interactive)")


def run(args: argparse.Namespace) -> int:
    import openai

    client = openai.OpenAI(base_url=args.url, api_key=args.api_key)
    try:
        model = args.model or client.models.list().data[0].id
    except openai.APIError as exc:
        print(f"chatmodel chat: {args.url}: {exc}", file=sys.stderr)
        return 1
    history: list[ChatCompletionMessageParam] = (
        [{"role": "system", "content": args.system}] if args.system else []
    )
    interactive = args.message is None
    if interactive:
        print(f"chatting with {model} at {args.url} (Ctrl-D to quit)", file=sys.stderr)
    while True:
        try:
            text = input("> ") if interactive else args.message
        except EOFError:
            print(file=sys.stderr)
            return 0
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        answer = []
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=history,
                stream=True,
                temperature=args.temperature,
                max_tokens=args.max_tokens,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    answer.append(chunk.choices[0].delta.content)
                    print(chunk.choices[0].delta.content, end="", flush=True)
        except openai.APIError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            history.pop()
            if not interactive:
                return 1
            continue
        print()
        history.append({"role": "assistant", "content": "".join(answer)})
        if not interactive:
            return 0
