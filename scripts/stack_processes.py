"""The local stack's processes under supervisord: restart counter, status table, start/stop.

Where the data comes from: supervisord (scripts/supervisord.conf) — its PROCESS_STATE events
on stdin when this runs as its event listener (``listen``), its XML-RPC interface on the unix
socket otherwise. Where it goes: the restart counts in .local/run/restarts.json (rewritten
atomically after every event), the table `make status` prints, and start/stop requests.

supervisord keeps no restart counter of its own. Counted here, from its events:
* restarts: a program entering STARTING from EXITED or BACKOFF (supervisord bringing back a
  process that ended by itself) or from FATAL (this listener giving it another round); a
  start by hand (from STOPPED) is not a restart;
* crashes: a program leaving RUNNING or STARTING by an exit supervisord did not ask for.
The counts start at zero with supervisord (scripts/stack.sh removes the file first).

Subcommands (scripts/stack.sh calls them):
    listen                      the event listener (supervisord runs it)
    ping                        supervisord's own state (fails when it does not answer)
    status                      one line per program: state, pid, uptime, restarts
    state NAME                  the state name of one program (STOPPED, RUNNING, ...)
    pid NAME                    its pid (0 when not running)
    start NAME...               start programs without waiting (supervisord retries them)
    stop NAME...                stop programs, waiting for each to end
    shutdown                    stop every program and supervisord
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import xmlrpc.client
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESTARTS_FILE = ROOT / ".local" / "run" / "restarts.json"
#: How long a FATAL program waits before the listener starts it again.
FATAL_RETRY_SECONDS = float(os.environ.get("STACK_FATAL_RETRY_SECONDS", "60"))
RESTART_FROM = {"EXITED", "BACKOFF", "FATAL"}
#: The order of `make status`: services, then the apps; programs not named here come last.
PROGRAM_ORDER = (
    "postgres",
    "redis",
    "kafka",
    "consumer",
    "replay-server",
    "producer",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "postgres-exporter",
    "redis-exporter",
    "prometheus",
    "dashboard",
)


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ----------------------------------------------------------------------------- counting
class RestartCounter:
    """Per-program restart and crash counts, kept in a JSON file that survives the listener."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.counts: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.counts = {}

    def record(self, event: str, payload: dict[str, str]) -> None:
        name = payload.get("processname", "")
        if not name or payload.get("groupname") == "restart-counter":
            return
        state = event.removeprefix("PROCESS_STATE_")
        entry = self.counts.setdefault(name, {"restarts": 0, "crashes": 0})
        from_state = payload.get("from_state", "")
        if state == "STARTING" and from_state in RESTART_FROM:
            entry["restarts"] += 1
            entry["last_restart"] = _now()
        elif state in {"EXITED", "BACKOFF"} and from_state in {"RUNNING", "STARTING"}:
            if state == "BACKOFF" or payload.get("expected") == "0":
                entry["crashes"] += 1
                entry["last_crash"] = _now()
        elif state == "FATAL":
            entry["fatal"] = entry.get("fatal", 0) + 1
            entry["last_fatal"] = _now()
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts, indent=1, sort_keys=True))
        tmp.replace(self.path)


def _parse_tokens(line: str) -> dict[str, str]:
    return dict(token.split(":", 1) for token in line.split() if ":" in token)


def _rpc_from_environment() -> Any:
    """supervisord's XML-RPC interface, as its child (SUPERVISOR_SERVER_URL) sees it."""
    from supervisor import childutils

    return childutils.getRPCInterface(os.environ)


def _start_later(name: str, delay: float) -> None:
    def start() -> None:
        try:
            rpc = _rpc_from_environment()
            if rpc.supervisor.getProcessInfo(name)["statename"] == "FATAL":
                print(f"{_now()} starting FATAL program {name} again", file=sys.stderr)
                rpc.supervisor.startProcess(name, False)
        except (OSError, xmlrpc.client.Fault) as err:
            print(f"{_now()} could not start {name} again: {err}", file=sys.stderr)

    timer = threading.Timer(delay, start)
    timer.daemon = True
    timer.start()


def listen() -> int:
    """supervisord's event listener protocol: READY, read one event, RESULT 2 OK, repeat."""
    counter = RestartCounter(RESTARTS_FILE)
    stdin, stdout = sys.stdin, sys.stdout
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header_line = stdin.readline()
        if not header_line:
            return 0
        header = _parse_tokens(header_line)
        body = stdin.read(int(header.get("len", "0")))
        payload_line = body.split("\n", 1)[0]
        event = header.get("eventname", "")
        payload = _parse_tokens(payload_line)
        try:
            counter.record(event, payload)
        except OSError as err:
            print(f"{_now()} could not write {counter.path}: {err}", file=sys.stderr)
        if event == "PROCESS_STATE_FATAL" and payload.get("processname"):
            _start_later(payload["processname"], FATAL_RETRY_SECONDS)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


# ----------------------------------------------------------------------------- control
def _rpc(socket_path: str) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def _uptime(info: dict[str, Any]) -> str:
    if info["statename"] != "RUNNING":
        return ""
    seconds = max(0, int(info["now"]) - int(info["start"]))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def status_lines(infos: Sequence[dict[str, Any]], counts: dict[str, dict[str, Any]]) -> list[str]:
    """The `make status` table: program, state, pid, uptime, restarts (and the last one)."""
    lines = []
    order = {name: i for i, name in enumerate(PROGRAM_ORDER)}
    for info in sorted(infos, key=lambda i: (order.get(i["name"], len(order)), i["name"])):
        name = info["name"]
        if info.get("group") == "restart-counter":
            continue
        count = counts.get(name, {})
        restarts = int(count.get("restarts", 0))
        pid = f"pid {info['pid']}" if info["pid"] else "-"
        uptime = _uptime(info)
        detail = f"restarts {restarts}"
        if restarts:
            detail += f" (last {count.get('last_restart', '?')})"
        if count.get("crashes"):
            detail += f", crashes {count['crashes']}"
        if info["statename"] in {"FATAL", "BACKOFF", "EXITED"} and info.get("spawnerr"):
            detail += f", {info['spawnerr']}"
        lines.append(
            f"{name:<22} {info['statename']:<9} {pid:<11} {('up ' + uptime) if uptime else '':<12}"
            f" {detail}"
        )
    return lines


def _unless_fault(harmless: str, call: Any, *args: Any) -> None:
    """An XML-RPC call whose fault `harmless` (already started, not running) is no error."""
    try:
        call(*args)
    except xmlrpc.client.Fault as fault:
        if harmless not in fault.faultString:
            raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", default=os.environ.get("STACK_SUPERVISOR_SOCKET", ""))
    parser.add_argument(
        "command", choices=["listen", "ping", "status", "state", "pid", "start", "stop", "shutdown"]
    )
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.command == "listen":
        return listen()
    rpc = _rpc(args.socket)
    try:
        if args.command == "ping":
            print(rpc.supervisor.getState()["statename"])
        elif args.command == "status":
            try:
                counts = json.loads(RESTARTS_FILE.read_text())
            except (OSError, ValueError):
                counts = {}
            for line in status_lines(rpc.supervisor.getAllProcessInfo(), counts):
                print(line)
        elif args.command in {"state", "pid"}:
            for name in args.names:
                try:
                    info = rpc.supervisor.getProcessInfo(name)
                except xmlrpc.client.Fault:
                    print("UNKNOWN" if args.command == "state" else 0)
                    continue
                print(info["statename"] if args.command == "state" else info["pid"])
        elif args.command == "start":
            for name in args.names:  # without waiting: supervisord retries a failing start
                _unless_fault("ALREADY_STARTED", rpc.supervisor.startProcess, name, False)
        elif args.command == "stop":
            for name in args.names:
                _unless_fault("NOT_RUNNING", rpc.supervisor.stopProcess, name, True)
        elif args.command == "shutdown":
            rpc.supervisor.shutdown()
    except (OSError, xmlrpc.client.Fault) as err:
        print(f"stack_processes: supervisord at {args.socket}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
