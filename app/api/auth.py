"""Optional bearer-token authentication: an ASGI middleware that runs before routing and body reading.

Tokens come from `MVIT_API_TOKENS` (comma-separated) and/or a file (`MVIT_API_TOKENS_FILE`, one per line).
Only their SHA-256 digests are kept, and a presented token is compared with every one of them with
`hmac.compare_digest`: the time taken says nothing about how much of a token was right, nor its length.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import ServerSettings

# Routes that never need a token: liveness, the API description (public knowledge, and what lets /docs'
# "Authorize" button work), and the demo page (static; it asks for a token and sends it with its calls).
ALWAYS_OPEN = frozenset(
    {"/", "/health", "/v2/health/live", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
)


class TokenFileError(ValueError):
    """The configured token file cannot be used; the service must not start without the auth it was given."""


def configured_tokens(settings: ServerSettings) -> list[str]:
    tokens = [secret.get_secret_value() for secret in settings.api_tokens]
    if settings.api_tokens_file is not None:
        path = settings.api_tokens_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"api_tokens_file {path} cannot be read: {exc}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise TokenFileError(f"api_tokens_file {path} holds no tokens (one per line; # for comments)")
        tokens += from_file
    for token in tokens:
        if any(c.isspace() for c in token):
            raise TokenFileError("an API token contains whitespace; a bearer token cannot")
    return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenChecker:
    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(token) for token in tokens]
        if not self._digests:
            raise ValueError("TokenChecker needs at least one token")

    def accepts(self, token: str) -> bool:
        presented = _digest(token)
        accepted = False
        for digest in self._digests:  # no early exit: every configured token is compared
            accepted |= hmac.compare_digest(presented, digest)
        return accepted


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def _unauthorized(message: str, error: str | None = None) -> JSONResponse:
    challenge = 'Bearer realm="mvit"' + (f', error="{error}"' if error else "")
    return JSONResponse({"error": message}, status_code=401, headers={"WWW-Authenticate": challenge})


class BearerAuthMiddleware:
    """Every HTTP route except `open_paths` needs `Authorization: Bearer <one of the tokens>`."""

    def __init__(self, app: ASGIApp, checker: TokenChecker, open_paths: frozenset[str]) -> None:
        self.app = app
        self.checker = checker
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "") in self.open_paths:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is None:
            response = _unauthorized(
                "This service needs an API token: send the header 'Authorization: Bearer <token>' "
                "(huggingface_hub: InferenceClient(token=...); @huggingface/inference: accessToken)."
            )
        elif not self.checker.accepts(token):
            response = _unauthorized("The API token is not valid.", "invalid_token")
        else:
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["error"] = "missing API token" if token is None else "invalid API token"
        await response(scope, receive, send)


def open_paths(settings: ServerSettings) -> frozenset[str]:
    paths = set(ALWAYS_OPEN)
    if not settings.metrics_require_token:
        paths.add("/metrics")
    if not settings.ready_require_token:
        paths.update({"/ready", "/v2/health/ready"})
    return frozenset(paths)
