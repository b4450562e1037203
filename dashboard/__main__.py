"""``python -m dashboard``: serve the Streamlit page on DASHBOARD_HOST:DASHBOARD_PORT.

Runs Streamlit's own CLI on dashboard/app.py with the settings' address and port, headless,
no usage statistics, and no error details in the browser (a broken state is a message the
page writes, never a traceback; details go to this process's log).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dashboard.config import get_settings


def streamlit_argv() -> list[str]:
    settings = get_settings()
    return [
        "streamlit",
        "run",
        str(Path(__file__).with_name("app.py")),
        "--server.address",
        settings.dashboard_host,
        "--server.port",
        str(settings.dashboard_port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--theme.base",
        "light",
    ]


def main() -> None:
    from streamlit.web import cli

    sys.argv = streamlit_argv()
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
