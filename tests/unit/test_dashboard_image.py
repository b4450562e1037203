"""Static checks of the dashboard's and the exporters' images and of compose's Prometheus.

Data: dashboard/Dockerfile, prometheus/exporters.Dockerfile, prometheus/prometheus-compose.yml,
the dashboard's own imports (ast) and the venv's distributions; nothing is built or started.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_dashboard_image_installs_every_distribution_the_dashboard_imports() -> None:
    dockerfile = (ROOT / "dashboard" / "Dockerfile").read_text()
    arg = re.search(r'^ARG PYTHON_PACKAGES="([^"]*)"', dockerfile, re.MULTILINE)
    assert arg, "dashboard/Dockerfile has no ARG PYTHON_PACKAGES"
    installed = {_normal(re.sub(r"\[.*\]", "", name)) for name in arg.group(1).split()}
    owners = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for source in (ROOT / "dashboard").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in {"__future__", "dashboard"}:
                    continue
                needed[top] = {_normal(d) for d in owners.get(top, [])}
    assert {"streamlit", "plotly", "psycopg", "pydantic_settings"} <= set(needed)
    missing = {top: dists for top, dists in needed.items() if not dists & installed}
    assert not missing, f"dashboard/Dockerfile PYTHON_PACKAGES lacks {missing}"
    assert re.search(r'^CMD \["python", "-m", "dashboard"\]', dockerfile, re.MULTILINE)
    assert re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)[-1] not in {"root", "0", "0:0"}


def test_the_exporter_image_pins_the_debian_versions_the_local_stack_installs() -> None:
    text = (ROOT / "prometheus" / "exporters.Dockerfile").read_text()
    pins = dict(re.findall(r"(prometheus-(?:postgres|redis)-exporter)=(\S+?)[\s\"]", text))
    assert set(pins) == {"prometheus-postgres-exporter", "prometheus-redis-exporter"}
    stack = (ROOT / "scripts" / "stack.sh").read_text()
    for package in pins:
        assert package in stack, f"scripts/stack.sh does not install {package}"


def test_compose_prometheus_scrapes_the_jobs_the_local_stack_scrapes() -> None:
    compose = yaml.safe_load((ROOT / "prometheus" / "prometheus-compose.yml").read_text())
    jobs = {job["job_name"] for job in compose["scrape_configs"]}
    stack = (ROOT / "scripts" / "stack.sh").read_text()
    written = set(re.findall(r"^  - job_name: (\w+)$", stack, re.MULTILINE))
    assert jobs == written == {"producer", "consumer", "postgres", "redis"}
    assert compose["rule_files"] == ["alerts.yml"]
    services = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"]
    assert services["prometheus"]["image"] == "prom/prometheus:v2.42.0"
    assert "./prometheus:/etc/prometheus/pipeline:ro" in services["prometheus"]["volumes"]
