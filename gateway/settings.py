"""Process settings: where things are, as opposed to what is enforced (that is the policy).

Every field is settable by a command-line option of ``antidistill serve`` or by an
``ANTIDISTILL_<FIELD>`` environment variable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import orjson
from pydantic import AnyHttpUrl, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ANTIDISTILL_", frozen=True, extra="forbid")

    upstream: AnyHttpUrl = Field(description="Base URL of the model server.")
    policy: Path | None = Field(
        default=None, description="Policy YAML file; built-in default if unset."
    )
    redis: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss://, unix://); an embedded server if unset.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    data_dir: Path = Field(
        default=Path("var"), description="Embedded Redis data, the event spool and the key secret."
    )
    key_secret: SecretStr | None = Field(
        default=None,
        description="HMAC secret for client ids; generated and kept in data_dir if unset.",
    )
    upstream_api_key: SecretStr | None = Field(
        default=None, description="Sent to the upstream as its Bearer key; clients' keys never are."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the admin API and dashboard (/admin/); unset or empty: "
        "no admin routes at all.",
    )
    log_level: str = "info"
    redis_timeout_s: float = Field(default=1.0, gt=0)
    policy_poll_s: float = Field(
        default=2.0,
        ge=0,
        description="How often the policy file is checked for changes; 0 = never.",
    )

    @property
    def upstream_base(self) -> str:
        return str(self.upstream).rstrip("/")

    @property
    def spool_path(self) -> Path:
        return self.data_dir / "spool" / "decisions.jsonl"

    @property
    def admin_token_value(self) -> str:
        """The admin token, ``""`` if unset or blank (admin disabled)."""
        token = self.admin_token.get_secret_value() if self.admin_token is not None else ""
        return token if token.strip() else ""

    def to_json_with_secrets(self) -> str:
        """These settings as JSON with secret values in clear, for worker processes of the
        same gateway (``model_dump_json`` masks them as ``**********``)."""
        data = self.model_dump(mode="json")
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                data[name] = value.get_secret_value()
        return orjson.dumps(data).decode()


def resolve_key_secret(configured: SecretStr | None, data_dir: Path) -> bytes:
    """The HMAC secret: the configured one, else one generated once and kept in ``data_dir``.

    An empty configured secret counts as unset: an empty HMAC key would make ids guessable.

    The file is created with mode 0600 and never overwritten, so client ids stay stable
    across restarts and across the worker processes of one gateway.
    """
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    path = data_dir / "key_secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".key_secret.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic: the first process to get here wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text(encoding="ascii").strip().encode()
