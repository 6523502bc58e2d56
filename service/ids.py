"""Prediction ids the service can recognise without a database: random, signed with an HMAC.

An id is 24 hex characters of randomness followed by the first 16 hex characters of
HMAC-SHA256(key, randomness). Feedback for an id the service never issued is refused at once,
without waiting for the prediction log; every worker and replica holding the key agrees.

The key comes from the environment variable named in the config (``experiment.id_key_env``). With
a SQLite store (one host) it may instead come from a key file created once with mode 0600
(``experiment.id_key_file``), so that workers and restarts share it. With a PostgreSQL store
(replicas behind a load balancer) the variable is required: a per-host file would make feedback
that reaches another replica unknown there (404), so its absence is a start-up error.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from tuneserve.errors import ConfigError

_RANDOM_HEX = 24
_TAG_HEX = 16
ID_LENGTH = _RANDOM_HEX + _TAG_HEX


class PredictionIds:
    """Issues and recognises signed prediction ids."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ConfigError("the prediction id key must be at least 16 bytes")
        self._key = key

    def _tag(self, nonce: str) -> str:
        # the one-shot digest: same bytes as hmac.new(...).hexdigest(), without the HMAC object
        return hmac.digest(self._key, nonce.encode(), "sha256").hex()[:_TAG_HEX]

    def new(self) -> str:
        """A fresh id."""
        nonce = secrets.token_hex(_RANDOM_HEX // 2)
        return nonce + self._tag(nonce)

    def is_ours(self, prediction_id: str) -> bool:
        """True when this service (any worker or replica with the key) issued the id."""
        if len(prediction_id) != ID_LENGTH:
            return False
        nonce, tag = prediction_id[:_RANDOM_HEX], prediction_id[_RANDOM_HEX:]
        return hmac.compare_digest(tag, self._tag(nonce))


def load_key(env_name: str, key_file: Path, shared: bool = False) -> bytes:
    """The key from ``$env_name`` (hex or text), else from ``key_file`` (created if absent).

    ``shared``: the store is shared by replicas (PostgreSQL), so the key must come from the
    environment; without it, a ConfigError that says how to set it."""
    value = os.environ.get(env_name, "").strip()
    if value:
        if len(value) < 16:
            raise ConfigError(
                f"${env_name} is too short ({len(value)} characters, at least 16): "
                "use openssl rand -hex 32"
            )
        return value.encode()
    if shared:
        raise ConfigError(
            f"${env_name} is not set, and the store is PostgreSQL, shared by replicas: every "
            "replica must sign prediction ids with the same key, or feedback reaching another "
            f"replica is refused (404). Set {env_name} to the same secret on every replica "
            f"(export {env_name}=$(openssl rand -hex 32), once, kept in a Secret)"
        )
    if not key_file.is_file():
        try:
            key_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            try:
                os.link(tmp, key_file)  # atomic: the file appears with its content, or not at all
            except FileExistsError:
                pass  # another process made it first: use theirs
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the prediction id key file {key_file}: {exc.strerror}; "
                f"set {env_name} or experiment.id_key_file"
            ) from exc
    key = key_file.read_text().strip()
    if len(key) < 16:
        raise ConfigError(f"the prediction id key file {key_file} is too short: delete it")
    return key.encode()
