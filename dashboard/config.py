"""The dashboard's settings: one frozen pydantic-settings object, read once from the environment.

Data comes from the process environment (and ``.env`` when present); it goes to the page
(dashboard/app.py) and its readers as an argument. Nothing else in dashboard/ reads os.environ.
The PostgreSQL login is POSTGRES_USER / POSTGRES_PASSWORD like every app's (CONTRACT 1): the
launcher hands the dashboard the read-only ``pipeline_analyst`` role in those two variables.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DashboardSettings(BaseSettings):
    """Everything the dashboard needs to know about its world."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # PostgreSQL (read-only analyst role)
    postgres_host: str = Field(default="127.0.0.1", validation_alias="POSTGRES_HOST")
    postgres_port: int = Field(default=5432, validation_alias="POSTGRES_PORT")
    postgres_db: str = Field(default="crypto", validation_alias="POSTGRES_DB")
    postgres_user: str = Field(default="pipeline_analyst", validation_alias="POSTGRES_USER")
    postgres_password: SecretStr = Field(
        default=SecretStr(""), validation_alias="POSTGRES_PASSWORD"
    )

    # Prometheus HTTP API (the health panel and the alerts)
    prometheus_url: str = Field(default="http://127.0.0.1:9090", validation_alias="PROMETHEUS_URL")

    # the page itself: loopback unless asked (compose sets 0.0.0.0 inside the container)
    dashboard_host: str = Field(default="127.0.0.1", validation_alias="DASHBOARD_HOST")
    dashboard_port: int = Field(default=8501, validation_alias="DASHBOARD_PORT", ge=1, le=65535)
    dashboard_refresh_seconds: float = Field(
        default=5.0, validation_alias="DASHBOARD_REFRESH_SECONDS", ge=1
    )

    @property
    def postgres_conninfo(self) -> str:
        """libpq conninfo: read-only sessions, short timeouts (a dashboard must never hang).

        jit=off: analytics.candles' plan is costed high enough for PostgreSQL's JIT, whose
        compilation took 9.5 s of a 10 s call for 61 one-minute candles (0.14 s without it).
        """
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.postgres_host,
            port=self.postgres_port,
            dbname=self.postgres_db,
            user=self.postgres_user,
            password=self.postgres_password.get_secret_value() or None,
            application_name="dashboard",
            connect_timeout=3,
            options="-c default_transaction_read_only=on -c statement_timeout=10s -c jit=off",
        )

    @property
    def postgres_address(self) -> str:
        return f"{self.postgres_host}:{self.postgres_port}/{self.postgres_db}"


@lru_cache(maxsize=1)
def get_settings() -> DashboardSettings:
    """The process-wide settings, read from the environment exactly once."""
    return DashboardSettings()
