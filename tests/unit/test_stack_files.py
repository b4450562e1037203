"""Static checks of the local stack's own files: pinned Maven jars, Makefile verbs, .env parsing.

Data comes from pom.xml, the Makefile, tests/conftest.py and scripts/kafka_admin.py in this
repository; nothing here starts a service.
"""

from __future__ import annotations

import importlib.util
import json
import re
import xml.etree.ElementTree as ET  # noqa: S405 - parses our own pom.xml
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def _pom() -> ET.Element:
    return ET.parse(ROOT / "pom.xml").getroot()  # noqa: S314 - our own file


def _properties(root: ET.Element) -> dict[str, str]:
    found = root.find("m:properties", POM_NS)
    assert found is not None
    return {child.tag.split("}")[1]: (child.text or "") for child in found}


def _resolve(value: str, properties: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: properties.get(m.group(1), m.group(0)), value)


def test_every_maven_dependency_and_plugin_has_an_exact_version() -> None:
    root = _pom()
    properties = _properties(root)
    artifacts = root.findall(".//m:dependencies/m:dependency", POM_NS) + root.findall(
        ".//m:plugins/m:plugin", POM_NS
    )
    assert artifacts, "pom.xml declares nothing"
    for artifact in artifacts:
        name = artifact.findtext("m:artifactId", namespaces=POM_NS)
        declared = artifact.findtext("m:version", default="", namespaces=POM_NS)
        version = _resolve(declared, properties)
        assert re.fullmatch(r"\d+(\.\d+)+", version), f"{name}: version {version!r} is not pinned"


def test_the_jar_sets_are_the_documented_versions() -> None:
    root = _pom()
    properties = _properties(root)
    assert properties["kafka.version"] == "4.1.1"
    assert properties["spark.version"] == "4.2.0"
    profiles = {p.findtext("m:id", namespaces=POM_NS) for p in root.findall(".//m:profile", POM_NS)}
    assert profiles == {"kafka-broker", "spark-connector"}


def test_spark_connector_matches_the_pinned_pyspark() -> None:
    lock = (ROOT / "requirements" / "requirements.lock").read_text()
    pinned = re.search(r"^pyspark==([\d.]+)", lock, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == "4.2.0"


def test_makefile_has_every_verb_of_the_issue() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    wanted = {
        "demo",
        "up",
        "down",
        "clean",
        "status",
        "logs",
        "replay",
        "test",
        "lint",
        "bench",
        "lock",
        "services",
    }
    assert wanted <= targets


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dotenv_reader_keeps_values_and_drops_comments_and_quotes(tmp_path: Path) -> None:
    conftest = _load(ROOT / "tests" / "conftest.py", "stack_conftest_copy")
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# comment\n\nPOSTGRES_PORT=25432\nPOSTGRES_PASSWORD='s3cr=t'\n"
        "REDIS_PORT=6380 # trailing comment\nSPARK_JARS=\n"
    )
    assert conftest._read_dotenv(dotenv) == {
        "POSTGRES_PORT": "25432",
        "POSTGRES_PASSWORD": "s3cr=t",
        "REDIS_PORT": "6380",
        "SPARK_JARS": "",
    }


def _write_offsets(folder: Path, batch: int, topic: str, offsets: dict[str, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"batchWatermarkMs": 0, "batchTimestampMs": 0, "conf": {}}
    (folder / str(batch)).write_text(
        "v1\n" + json.dumps(metadata) + "\n" + json.dumps({topic: offsets}) + "\n"
    )


def test_lag_reads_the_newest_offsets_of_the_query_that_reads_the_topic(tmp_path: Path) -> None:
    kafka_admin = _load(ROOT / "scripts" / "kafka_admin.py", "stack_kafka_admin")
    _write_offsets(tmp_path / "gaps" / "offsets", 3, "binance.gaps", {"0": 7})
    _write_offsets(tmp_path / "prices" / "offsets", 9, "binance.prices", {"0": 10, "1": 20})
    _write_offsets(tmp_path / "prices" / "offsets", 10, "binance.prices", {"0": 15, "1": 20})
    assert kafka_admin.checkpoint_offsets(tmp_path, "binance.prices") == {0: 15, 1: 20}
    assert kafka_admin.checkpoint_offsets(tmp_path, "binance.gaps") == {0: 7}
    assert kafka_admin.checkpoint_offsets(tmp_path / "missing", "binance.prices") == {}
