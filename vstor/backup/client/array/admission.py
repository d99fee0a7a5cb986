"""Admission of a client stream, pure (no sockets): who the client is, which policy the stream
runs under, and the failure code each refusal or failure is reported with.

Refusal codes (the REFUSE frame's ``code``, formats.md): ``credentials`` (certificate and
name), ``policy`` (paths, quota, binding), ``key`` (the stream key), ``stream`` (checksum or
format), ``media`` (the destination), ``unreachable`` (communication; the retried one).
"""

from __future__ import annotations

from vstor.backup.client import wire
from vstor.backup.client.array.session import PolicyViolation, allowed
from vstor.errors import KeyError_, MediaError, NotFound, NotRunning, VstorError

__all__ = ["PREFIX", "RETRYABLE", "JobFailed", "choose_policy", "check_key", "client_of", "code_of",
           "identify"]

PREFIX = "client:"
RETRYABLE = "unreachable"  # the failure code the policy's retries apply to


def client_of(source: str) -> str | None:
    return source[len(PREFIX):] if source.startswith(PREFIX) else None


class JobFailed(VstorError):
    """A client job ended failed; ``code`` is the failure point, ``job`` the catalog job."""

    def __init__(self, message: str, code: str, job: int | None = None) -> None:
        super().__init__(message)
        self.code, self.job = code, job


def code_of(e: BaseException) -> str:
    if isinstance(e, PolicyViolation):
        return "policy"
    if isinstance(e, wire.BadFrame) and "encryption key" in str(e):
        return "key"
    if isinstance(e, (ConnectionError, TimeoutError, NotRunning, OSError)) and not isinstance(e, MediaError):
        return RETRYABLE
    if isinstance(e, MediaError):
        return "media"
    if isinstance(e, (KeyError_,)):
        return "key"
    return "stream"  # a checksum mismatch (tampering) or a malformed stream


def identify(catalog: object, peer_name: str, hello: dict) -> dict:
    """The registered client the HELLO names, which must be its certificate's common name."""
    name = hello.get("name")
    if name != peer_name:
        raise KeyError_(f"refused: the certificate is for {peer_name!r}, the client says it is {name!r}")
    try:
        return catalog.client(str(name))  # type: ignore[attr-defined]
    except NotFound:
        raise KeyError_(f"refused: {name!r} is not a registered backup client "
                        "(register it with 'vstor client register')") from None


def check_key(client: dict, hello: dict) -> None:
    if hello.get("key_id") != client.get("key_id"):
        raise wire.BadFrame(f"incorrect encryption key: the client declares key id {hello.get('key_id')}, "
                            f"the registered key id is {client.get('key_id')}")


def choose_policy(policies: list[dict], client: dict, hello: dict, policy_name: str | None) -> dict:
    """The policy this stream runs under; PolicyViolation or BadFrame (key) otherwise."""
    name = client["name"]
    ours = [p for p in policies if p["source"] == PREFIX + name]
    want = policy_name or hello.get("policy")
    if want:
        policy = next((p for p in ours if p["name"] == want), None)
        if policy is None:
            raise PolicyViolation(f"policy violation: client {name!r} is not bound to policy {want!r}")
    elif not ours:
        raise PolicyViolation(f"policy violation: no backup policy has source client:{name}")
    else:
        policy = ours[0]
    for p in hello.get("paths") or []:
        if not allowed(str(p), client["paths"]):
            raise PolicyViolation(f"policy violation: {p!r} is outside the client's allowed paths "
                                  f"({', '.join(client['paths'])})")
    check_key(client, hello)
    return policy
