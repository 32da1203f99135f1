"""`frameworm smoke URL`: the post-deployment smoke tests against a running server.

Each check prints one line; the command exits 0 only when every check passes, and otherwise
names the failing ones. Standard library HTTP only, so it runs from any image with the CLI.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from dotenv import dotenv_values

from app.cli.output import emit, fail


@dataclass(frozen=True)
class CheckResult:
    check: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def label(self) -> str:
        return "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    millis: float

    def json(self) -> Any:
        return json.loads(self.body)


class Unreachable(Exception):
    """No HTTP answer at all: refused, timed out, DNS, TLS, a port that does not speak HTTP."""


class SmokeClient:
    """A tiny HTTP client: one request per call, every status returned (never raised)."""

    def __init__(self, url: str, *, timeout: float, api_key: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"URL must be http:// or https:// with a host, not {url!r}")
        try:  # as the request will send it: an empty or over-long label raised at the first
            (parts.hostname or "").encode("idna")
        except UnicodeError:
            raise ValueError(f"URL has no valid host name: {url!r}") from None
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        authenticated: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = {"accept": "application/json", **(headers or {})}
        if body is not None:
            sent["content-type"] = "application/json"
        if authenticated and self.api_key:
            sent["x-api-key"] = self.api_key
        # The scheme is checked to be http(s) in __init__, so no file:// or custom opener.
        request = urllib.request.Request(  # noqa: S310
            self.base + path, data=body, method=method, headers=sent
        )
        started = time.perf_counter()
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status, data = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.timeout | TimeoutError):
                raise Unreachable(f"no answer within {self.timeout:g} s") from None
            raise Unreachable(f"unreachable: {reason}") from None
        except http.client.HTTPException as exc:  # after OSError: RemoteDisconnected is both
            # Something answered, but not in HTTP (an SSH or database port, a TLS port asked
            # for http://): BadStatusLine, LineTooLong, IncompleteRead.
            detail = str(exc).strip()[:80]
            reason = f"{type(exc).__name__} {detail!r}" if detail else type(exc).__name__
            raise Unreachable(f"not an HTTP answer: {reason}") from None
        return Answer(status, data, (time.perf_counter() - started) * 1000)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer (a failed check), never followed: urllib would send the API key
    and the metrics bearer to wherever it points, another host or plain http included."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def zeros_request(metadata: Any) -> bytes:
    """A v2 inference body with batch 1 of zeros for every input the metadata lists."""
    inputs = []
    for spec in metadata["inputs"]:
        shape = [1 if d == -1 else int(d) for d in spec["shape"]]
        zero: bool | int = False if spec["datatype"] == "BOOL" else 0
        inputs.append(
            {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": shape,
                "data": [zero] * math.prod(shape),
            }
        )
    return json.dumps({"inputs": inputs}).encode()


def _status(answer: Answer, expected: int = 200) -> str:
    text = f"HTTP {answer.status} in {answer.millis:.0f} ms"
    if answer.status != expected:
        try:
            problem = answer.json()
            detail = problem.get("detail") or problem.get("error") or problem.get("status")
        except (ValueError, AttributeError):
            detail = None
        if answer.status == 401:
            detail = detail or "no valid API key"
        if detail:
            text += f": {detail}"
    return text


class SmokeRun:
    """One run of the checks against one server; `metadata` carries over to the inference."""

    def __init__(
        self,
        client: SmokeClient,
        model: str,
        *,
        allow_no_auth: bool = False,
        metrics_token: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.model_path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
        self.allow_no_auth = allow_no_auth
        self.metrics_token = metrics_token
        self.metadata: dict[str, Any] = {}

    def run(self) -> list[CheckResult]:
        checks: list[tuple[str, Callable[[], CheckResult]]] = [
            ("healthz", lambda: self.probe("healthz", "/healthz")),
            ("readyz", lambda: self.probe("readyz", "/readyz")),
            ("model-metadata", self.model_metadata),
            ("inference", self.inference),
            ("metrics", self.metrics),
            ("auth-enforced", self.auth_enforced),
        ]
        results = []
        for name, check in checks:
            try:
                results.append(check())
            except Unreachable as exc:
                results.append(CheckResult(name, False, str(exc)))
        return results

    def probe(self, name: str, path: str) -> CheckResult:
        answer = self.client.request("GET", path, authenticated=False)
        return CheckResult(name, answer.status == 200, _status(answer))

    def model_metadata(self) -> CheckResult:
        answer = self.client.request("GET", self.model_path)
        if answer.status != 200:
            return CheckResult("model-metadata", False, _status(answer))
        try:
            metadata = answer.json()
            zeros_request(metadata)
        except (ValueError, KeyError, TypeError):
            return CheckResult("model-metadata", False, "the metadata has no usable inputs")
        self.metadata = metadata
        versions = ",".join(metadata.get("versions", [])) or "?"
        return CheckResult(
            "model-metadata", True, f"{self.model} version {versions}, {_status(answer)}"
        )

    def inference(self) -> CheckResult:
        if not self.metadata:
            return CheckResult("inference", False, "not tried: no model metadata")
        body = zeros_request(self.metadata)
        answer = self.client.request("POST", f"{self.model_path}/infer", body)
        if answer.status != 200:
            return CheckResult("inference", False, _status(answer))
        try:
            outputs = [o["name"] for o in answer.json()["outputs"]]
        except (ValueError, KeyError, TypeError):
            return CheckResult("inference", False, "the response has no outputs")
        detail = f"zeros of batch 1 -> {', '.join(outputs)}, {_status(answer)}"
        return CheckResult("inference", True, detail)

    def metrics(self) -> CheckResult:
        token = self.metrics_token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        answer = self.client.request("GET", "/metrics", authenticated=False, headers=headers)
        if answer.status != 200:
            return CheckResult("metrics", False, _status(answer))
        if b"frameworm_" not in answer.body:
            return CheckResult("metrics", False, "no frameworm_ series: metrics are not collected")
        return CheckResult("metrics", True, f"frameworm_ series present, {_status(answer)}")

    def auth_enforced(self) -> CheckResult:
        body = zeros_request(self.metadata) if self.metadata else b'{"inputs": []}'
        path = f"{self.model_path}/infer"
        answer = self.client.request("POST", path, body, authenticated=False)
        if answer.status == 401:
            return CheckResult("auth-enforced", True, "a request without a key is refused (401)")
        seen = _status(answer, answer.status)
        if self.allow_no_auth:
            detail = f"auth is off (allowed by --allow-no-auth): {seen}"
            return CheckResult("auth-enforced", True, detail, skipped=True)
        return CheckResult(
            "auth-enforced",
            False,
            f"a request without a key was not refused ({seen}); "
            "pass --allow-no-auth if auth is off on purpose",
        )


def _setting(name: str) -> str | None:
    """FRAMEWORM_<NAME> as the server reads it: the environment, else `.env` here."""
    variable = f"FRAMEWORM_{name}"  # in any case, as the settings read names
    environment = next((v for k, v in os.environ.items() if k.upper() == variable), None)
    dotenv = {k.upper(): v for k, v in dotenv_values(".env").items()}
    return environment or dotenv.get(variable) or None


def _secret(given: str | None, name: str) -> str | None:
    """The option, else FRAMEWORM_<NAME>_FILE (as the server reads it), else FRAMEWORM_<NAME>."""
    if given:
        return given
    path = _setting(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            fail(f"FRAMEWORM_{name}_FILE cannot be read: {exc}")
    return _setting(name)


def smoke(
    url: Annotated[str, typer.Argument(help="The server's base URL, e.g. http://host:8000.")],
    model: Annotated[
        str | None,
        typer.Option(help="The model the server serves (default: FRAMEWORM_MODEL, cnn-digits)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Key for the model routes (default: FRAMEWORM_BOOTSTRAP_API_KEY[_FILE]).",
        ),
    ] = None,
    metrics_token: Annotated[
        str | None,
        typer.Option(help="Bearer token for /metrics (default: FRAMEWORM_METRICS_TOKEN[_FILE])."),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds per request.")] = 10.0,
    allow_no_auth: Annotated[
        bool, typer.Option(help="Pass the auth check when the server has auth off.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Post-deployment smoke tests: probes, model metadata, one inference, metrics, auth."""
    try:
        client = SmokeClient(url, timeout=timeout, api_key=_secret(api_key, "BOOTSTRAP_API_KEY"))
    except ValueError as exc:
        fail(str(exc))
    results = SmokeRun(
        client,
        model or _setting("MODEL") or "cnn-digits",
        allow_no_auth=allow_no_auth,
        metrics_token=_secret(metrics_token, "METRICS_TOKEN"),
    ).run()
    failed = [r.check for r in results if not r.ok]
    payload = {"url": client.base, "ok": not failed, "checks": [asdict(r) for r in results]}
    emit(
        payload,
        as_json,
        lambda: "\n".join(f"{r.label}  {r.check:<15} {r.detail}" for r in results),
    )
    if failed:
        fail(f"smoke failed: {', '.join(failed)}")
