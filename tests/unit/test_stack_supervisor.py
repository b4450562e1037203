"""Static and pure checks of the local stack's supervision and secrets (no service started).

Data comes from scripts/supervisord.conf, scripts/stack.sh (its .env reader and its `dotenv`
verb, run on a scratch copy), scripts/stack_processes.py and .env.example.
"""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.fernet import Fernet
from dotenv import dotenv_values

pytestmark = pytest.mark.unit


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "scripts" / "supervisord.conf"
STACK = ROOT / "scripts" / "stack.sh"

#: What `make demo` runs, each a [program:x] of scripts/supervisord.conf.
PROGRAMS = set(
    _load(ROOT / "scripts" / "stack_processes.py", "stack_processes_names").PROGRAM_ORDER
)
SECRETS = (
    "POSTGRES_PASSWORD",
    "PIPELINE_WRITER_PASSWORD",
    "PIPELINE_DAG_PASSWORD",
    "PIPELINE_ANALYST_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_FERNET_KEY",
)


def _conf_lines() -> str:
    """The config without its comments."""
    return "\n".join(ln for ln in CONF.read_text().splitlines() if not ln.lstrip().startswith(";"))


def _conf() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read(CONF)
    return parser


# ----------------------------------------------------------------------------- supervisord.conf
def test_every_process_of_the_stack_is_a_supervised_program_restarted_with_backoff() -> None:
    parser = _conf()
    programs = {
        s.split(":", 1)[1]: parser[s] for s in parser.sections() if s.startswith("program:")
    }
    assert set(programs) >= PROGRAMS
    for name, section in programs.items():
        assert section.get("autorestart") == "true", name
        assert int(section.get("startretries", "3")) >= 5, f"{name}: too few start retries"
        assert int(section.get("startsecs", "1")) >= 2, f"{name}: a crash loop would not back off"
        assert section.get("autostart") == "false", f"{name}: stack.sh starts it in order"
        log = section.get("stdout_logfile", "")
        assert log == "%(here)s/../.local/logs/%(program_name)s.log", f"{name}: log {log}"
        assert section.get("redirect_stderr") == "true", name
    listener = parser["eventlistener:restart-counter"]
    assert "PROCESS_STATE" in listener.get("events", "")
    assert "stack_processes.py listen" in listener.get("command", "")


def test_no_setting_or_secret_passes_through_supervisords_config() -> None:
    text = _conf_lines()
    used = set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", text))
    assert used <= {
        "STACK_SUPERVISOR_SOCKET",
        "PGBIN",
        "STACK_PGDATA",
        "STACK_PG_OS_USER",
        "POSTGRES_PORT",
    }, used
    assert "environment=" not in text, "environment= cannot carry quotes or commas: use with-env"
    # a lone % (not %% nor an expansion) would break supervisord's interpolation
    assert not re.search(r"%(?!%|\()", text.replace("%%", ""))
    parser = _conf()
    for name in PROGRAMS - {"postgres", "redis"}:  # the two that need no setting
        command = parser[f"program:{name}"].get("command", "")
        assert command.startswith("scripts/with-env %(program_name)s "), name


def test_supervisors_own_environment_is_what_the_config_reads() -> None:
    """stack.sh starts supervisord with `env -i` and exactly the values the config names."""
    stack = STACK.read_text()
    body = re.search(r"supervisor_settings\(\) \{\n(.*?)\n\}", stack, re.DOTALL)
    assert body, "supervisor_settings() not found in scripts/stack.sh"
    given = set(re.findall(r"([A-Z_]+)=%s", body.group(1)))
    used = set(re.findall(r"%\(ENV_([A-Z0-9_]+)\)s", _conf_lines()))
    assert used <= given
    assert "env -i" in stack


# ----------------------------------------------------------------------------- restart counter
def test_restarts_count_automatic_starts_not_starts_by_hand(tmp_path: Path) -> None:
    processes = _load(ROOT / "scripts" / "stack_processes.py", "stack_processes_copy")
    counter = processes.RestartCounter(tmp_path / "restarts.json")

    def event(state: str, from_state: str, **extra: str) -> None:
        counter.record(
            f"PROCESS_STATE_{state}",
            {"processname": "consumer", "groupname": "consumer", "from_state": from_state, **extra},
        )

    event("STARTING", "STOPPED")  # make demo
    event("RUNNING", "STARTING")
    event("EXITED", "RUNNING", expected="0")  # kill -9
    event("STARTING", "EXITED")  # supervisord brings it back
    event("BACKOFF", "STARTING")  # ... which dies at once
    event("STARTING", "BACKOFF")
    event("FATAL", "BACKOFF")
    event("STARTING", "FATAL")  # the listener's retry
    event("STOPPING", "RUNNING")
    event("STOPPED", "STOPPING")  # make down: no crash
    reread = processes.RestartCounter(tmp_path / "restarts.json")
    assert reread.counts["consumer"]["restarts"] == 3
    assert reread.counts["consumer"]["crashes"] == 2
    assert reread.counts["consumer"]["fatal"] == 1
    lines = processes.status_lines(
        [
            {"name": "consumer", "group": "consumer", "statename": "RUNNING", "pid": 42,
             "start": 100, "now": 3761, "spawnerr": ""},
            {"name": "postgres", "group": "postgres", "statename": "RUNNING", "pid": 7,
             "start": 0, "now": 3761, "spawnerr": ""},
        ],
        reread.counts,
    )  # fmt: skip
    assert lines[0].split()[:5] == ["postgres", "RUNNING", "pid", "7", "up"]
    assert re.match(r"consumer\s+RUNNING\s+pid 42\s+up 1:01:01\s+restarts 3 \(last ", lines[1])


# ----------------------------------------------------------------------------- .env and secrets
TRICKY_LINES = {
    "BARE": ("plain-value", "plain-value"),
    "BARE_COMMENT": ("value # a comment", "value"),
    "BARE_HASH": ("a#b", "a#b"),
    "DOUBLE": ('"q\'u\\"o\\\\te s p@c:e/%4#x"', "q'u\"o\\te s p@c:e/%4#x"),
    "DOUBLE_COMMENT": ('"with space" # comment', "with space"),
    "SINGLE": ("'lit\"eral #x %s'", 'lit"eral #x %s'),
    "EMPTY": ("", ""),
}


def test_the_stacks_env_reader_agrees_with_python_dotenv_and_the_test_fixtures(
    tmp_path: Path,
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("".join(f"{key}={raw}\n" for key, (raw, _) in TRICKY_LINES.items()))
    reader = re.search(r"^dotenv_value\(\) \{.*?^\}$", STACK.read_text(), re.DOTALL | re.MULTILINE)
    assert reader, "dotenv_value() not found in scripts/stack.sh"
    bash_values = {}
    for key, (raw, _) in TRICKY_LINES.items():
        result = subprocess.run(  # noqa: S603 - bash runs our own function
            ["bash", "-c", reader.group(0) + '\ndotenv_value "$1"', "-", raw],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        )
        bash_values[key] = result.stdout
    conftest = _load(ROOT / "tests" / "conftest.py", "stack_conftest_for_dotenv")
    expected = {key: value for key, (_, value) in TRICKY_LINES.items()}
    assert bash_values == expected
    assert dict(dotenv_values(dotenv, interpolate=False)) == expected
    assert conftest._read_dotenv(dotenv) == expected


def test_dotenv_verb_fills_every_secret_once_and_keeps_the_users_values(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy2(ROOT / ".env.example", tmp_path / ".env.example")
    (tmp_path / ".env").write_text(
        'POSTGRES_PASSWORD="mine, with \\"quotes\\""\n'
        "AIRFLOW_FERNET_KEY=\nREDIS_PASSWORD=change-me\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def dotenv() -> dict[str, str | None]:
        result = subprocess.run(  # noqa: S603 - our own script
            [str(tmp_path / "scripts" / "stack.sh"), "dotenv"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return dict(dotenv_values(tmp_path / ".env", interpolate=False))

    first = dotenv()
    assert first["POSTGRES_PASSWORD"] == 'mine, with "quotes"'  # noqa: S105 - kept as written
    for name in SECRETS:
        value = first[name] or ""
        assert value and not value.startswith("change-me"), name
    assert len(first["AIRFLOW_JWT_SECRET"] or "") >= 64
    Fernet((first["AIRFLOW_FERNET_KEY"] or "").encode())  # a valid key, or this raises
    assert len({first[name] for name in SECRETS}) == len(SECRETS), "secrets must differ"
    assert (tmp_path / ".env").stat().st_mode & 0o077 == 0, ".env readable by others"
    assert dotenv() == first, "a second run changes nothing"
