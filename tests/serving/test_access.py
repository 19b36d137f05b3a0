"""Access control against a real `chatmodel serve` over HTTPS (a certificate generated here), through the
official openai client: wrong/no key 401, per-key quotas (requests and tokens per minute) answer 429 with
Retry-After and free up after the window, TLS works only with the right CA, request bodies are bounded.

The quota window is shortened to a few seconds with the server's hidden --quota-window-seconds (a 60 s wait
per case is too long for `make test`); the logic is the same."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from chatmodel_serving.launch import ServerProcess

if TYPE_CHECKING:
    import httpx2

MODEL = "smollm2-135m"
RPM_KEY, TPM_KEY, FREE_KEY = "key-rpm-3", "key-tpm-60", "key-unlimited"
WINDOW = 6
BODY_LIMIT = 4096


def self_signed(d: Path) -> tuple[Path, Path]:
    """A CA-less self-signed certificate for 127.0.0.1 and localhost (it is its own CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatmodel test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "tls.crt", d / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    d = tmp_path_factory.mktemp("access")
    cert, key = self_signed(d)
    keys = d / "keys"
    keys.write_text(f"# per-key quotas\n{RPM_KEY} rpm=3\n{TPM_KEY} tpm=60\n{FREE_KEY}\n")
    args = ["--api-keys-file", str(keys), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--quota-window-seconds", str(WINDOW), "--max-request-bytes", str(BODY_LIMIT)]
    with ServerProcess(args, log_path=d / "server.log", tls_ca=cert) as srv:
        yield srv, cert


def trust(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def client(srv: ServerProcess, ca: Path, key: str) -> openai.OpenAI:
    # openai takes an httpx.Client as well as an httpx2.Client (its own); its signature names httpx2 only.
    http_client = cast("httpx2.Client", httpx.Client(verify=trust(ca)))
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=120, http_client=http_client)


def error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    """The OpenAI error object of a refused request (openai types the body as `object`)."""
    assert isinstance(exc.body, dict), exc.body
    return exc.body


def ask(c: openai.OpenAI, content: str = "Hi", max_tokens: int = 2) -> httpx2.Response:
    return c.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], max_tokens=max_tokens, temperature=0
    ).http_response


def test_wrong_or_missing_key_is_401(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    with pytest.raises(openai.AuthenticationError) as e:
        ask(client(srv, ca, "not-a-key"))
    assert e.value.status_code == 401 and error_body(e.value)["code"] == "invalid_api_key"
    # Checked before the body: a stranger learns nothing about what a valid request looks like.
    r = httpx.post(f"{srv.url}/chat/completions", json={"model": MODEL, "messages": []}, verify=trust(ca))
    assert r.status_code == 401


def test_request_quota_gives_429_with_retry_after_then_frees(
    tls_server: tuple[ServerProcess, Path],
) -> None:
    srv, ca = tls_server
    c = client(srv, ca, RPM_KEY)
    remaining = [ask(c).headers["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as e:
        ask(c)
    refused = e.value.response
    assert refused.status_code == 429
    assert error_body(e.value)["code"] == "rate_limit_exceeded" and error_body(e.value)["type"] == "requests"
    wait = int(refused.headers["retry-after"])
    assert 1 <= wait <= WINDOW
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    # Other keys are not affected.
    assert ask(client(srv, ca, FREE_KEY)).status_code == 200
    time.sleep(wait + 0.2)
    assert ask(c).status_code == 200


def test_token_quota_counts_prompt_and_completion_tokens(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    c = client(srv, ca, TPM_KEY)
    first = ask(c, "Name three colours of the rainbow, please.", max_tokens=8)
    used = first.json()["usage"]["total_tokens"]
    assert 20 < used < 60  # the prompt's chat template alone is ~30 tokens
    assert int(first.headers["x-ratelimit-limit-tokens"]) == 60
    ask(c, "And three more, please.", max_tokens=8)  # admitted: under 60 when it arrived; now over
    with pytest.raises(openai.RateLimitError) as e:
        ask(c)
    assert error_body(e.value)["type"] == "tokens"
    assert int(e.value.response.headers["retry-after"]) >= 1
    metrics = httpx.get(f"{srv.base}/metrics", verify=trust(ca)).text
    for kind in ("requests", "tokens"):
        line = f'chatmodel_rate_limited_requests_total{{limit="{kind}",model="{MODEL}"}}'
        assert any(ln.startswith(line) and float(ln.split()[-1]) >= 1 for ln in metrics.splitlines()), kind


def test_unlimited_key_has_no_rate_limit_headers(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    r = ask(client(srv, ca, FREE_KEY))
    assert r.status_code == 200 and not any(h.startswith("x-ratelimit") for h in r.headers)


def test_tls_needs_the_right_ca_and_refuses_plain_http(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    answer = client(srv, ca, FREE_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content
    untrusted = openai.OpenAI(base_url=srv.url, api_key=FREE_KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.APIConnectionError) as e:
        untrusted.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(e.value.__cause__)
    try:  # plain HTTP on the TLS port: the connection is dropped (or answered with an error, never served)
        status: int | None = httpx.get(f"http://127.0.0.1:{srv.port}/health", timeout=10).status_code
    except httpx.HTTPError:
        status = None
    assert status != 200


def test_bodies_over_the_limit_are_refused_whole_or_chunked(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    headers = {"Authorization": f"Bearer {FREE_KEY}", "Content-Type": "application/json"}
    big = (
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "' + b"x" * BODY_LIMIT + b'"}]}'
    )
    with httpx.Client(verify=trust(ca), headers=headers, timeout=60) as http:
        r = http.post(f"{srv.url}/chat/completions", content=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert str(BODY_LIMIT) in r.json()["error"]["message"]
        chunked = http.post(f"{srv.url}/chat/completions", content=iter([big[:1000], big[1000:]]))
        assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"
        small = b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}'
        assert http.post(f"{srv.url}/chat/completions", content=iter([small])).status_code == 200


def test_keys_prompts_and_answers_stay_out_of_the_logs(tls_server: tuple[ServerProcess, Path]) -> None:
    srv, ca = tls_server
    prompt, wrong_key = "Tell me about the zebra-quartz-5519 project.", "sk-wrong-3318-do-not-log"
    answer = client(srv, ca, FREE_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=16, temperature=0
    )
    text = answer.choices[0].message.content or ""
    with pytest.raises(openai.AuthenticationError):
        ask(client(srv, ca, wrong_key))
    assert srv.log_path is not None
    log = srv.log_path.read_text()
    assert '"status": 401' in log and '"status": 200' in log  # the requests were logged...
    for secret in (RPM_KEY, TPM_KEY, FREE_KEY, wrong_key, "zebra-quartz-5519"):
        assert secret not in log, secret  # ...without a key, the prompt
    assert len(text.strip()) >= 12 and text.strip() not in log  # or the answer
