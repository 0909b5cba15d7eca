"""Secret references: YAML never holds a secret, only where to read it (env var or file)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SecretRef(BaseModel):
    """`{env: CRM_TOKEN}` or `{file: /run/secrets/crm_token}`; resolved when the endpoint starts."""

    model_config = ConfigDict(extra="forbid")

    env: str | None = Field(None, description="Name of an environment variable holding the secret.")
    file: str | None = Field(None, description="Path of a file holding the secret (trailing newline dropped).")
    prefix: str = Field("", description="Text put before the secret, e.g. 'Bearer '.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env or file")
        return self

    def resolve(self) -> str:
        """Read the secret now; a missing one is a configuration error, not an empty string."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
        else:
            path = Path(self.file or "")
            if not path.is_file():
                raise LookupError(f"secret file {path} does not exist")
            value = path.read_text().rstrip("\n")
        return self.prefix + value


def resolve_value(value: "str | SecretRef") -> str:
    """A config value that may be a literal or a secret reference."""
    return value.resolve() if isinstance(value, SecretRef) else value


def resolve_setting(endpoint: str, field: str, value: "str | SecretRef | None",
                    issues: list[str] | None = None) -> str | None:
    """An endpoint's secret resolved at start (None stays None). A missing one is reported as
    `endpoint 'x': field: why`: raised as a ConfigError, or appended to `issues` when the caller
    collects every problem before raising."""
    if value is None:
        return None
    try:
        return resolve_value(value)
    except LookupError as exc:
        problem = f"endpoint {endpoint!r}: {field}: {exc}"
        if issues is None:
            from engine.errors import ConfigError

            raise ConfigError([problem]) from exc
        issues.append(problem)
        return None
