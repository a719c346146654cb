"""`python -m devstack up | host | dataverse | bc | azurite | traces` — the offline development stack."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from devstack.serve import PortInUseError, check_port_free
from devstack.stack import DEFAULT_PORTS, REPO, StackPorts, start_dev_host, start_stack


def _wait_for_ctrl_c() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(title)
    width = max(len(name) for name, _ in rows)
    for name, where in rows:
        print(f"  {name.ljust(width)}  {where}")
    print("Press Ctrl-C to stop.", flush=True)


# The option of each port, so that a port in use names the flag that moves it.
PORT_FLAGS = {
    "port": "--port", "dataverse_port": "--dataverse-port", "bc_port": "--bc-port",
    "blob_port": "--blob-port", "queue_port": "--queue-port", "table_port": "--table-port",
}  # fmt: skip


def check_ports(args: argparse.Namespace) -> None:
    """Every port this command listens on is free (lingering TIME_WAIT connections do not count:
    the listeners bind with SO_REUSEADDR), checked before anything starts."""
    for attribute, flag in PORT_FLAGS.items():
        port = getattr(args, attribute, None)
        if port:
            try:
                check_port_free(port)
            except PortInUseError as exc:
                raise PortInUseError(port, exc.host, flag) from None


def cmd_up(args: argparse.Namespace) -> int:
    from devstack.host import BANNER

    ports = StackPorts(
        args.port, args.dataverse_port, args.bc_port, args.blob_port, args.queue_port, args.table_port
    )
    from devstack.bc.config import BcSandboxConfig

    telemetry = _telemetry_environment(args.port)
    entra = None
    if not any(os.environ.get(name) for name in ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL")):
        from devstack.entra import start_local_entra

        entra = start_local_entra()  # the admin API and the operator page open to a local token
    try:
        stack = start_stack(
            ports,
            # Real BC waits 30 s before notifying; the demo waits 2 s so a change is seen at once.
            bc_config=BcSandboxConfig(coalesce_seconds=2.0),
            function_key=os.environ.get("FUNCTIONS_KEY"),
            master_key=os.environ.get("FUNCTIONS_MASTER_KEY"),
            environment={**telemetry, **(entra.settings if entra else {})},
        )
    except BaseException:
        if entra is not None:
            entra.stop()
        raise
    try:
        if not args.no_demo:
            from devstack.demo import start_demo

            for line in start_demo(stack):
                print(line, flush=True)
        print(BANNER)
        rows = stack.describe()
        host = stack.host_server.url if stack.host_server else f"http://127.0.0.1:{args.port}"
        if entra is not None:
            token_file = _telemetry_path(args.port).parent / "operator-token.txt"
            token_file.write_text(entra.token() + "\n")
            token_file.chmod(0o600)
            rows.append(("Operator page", f"{host}/api/manage/ui  (sign in with the token in {token_file})"))
        else:
            rows.append(("Operator page", f"{host}/api/manage/ui"))
        if "TELEMETRY_FILE" in telemetry:
            path = telemetry["TELEMETRY_FILE"]
            rows.append(("Traces of the last changes", f"python -m devstack traces {path}"))
        _print_rows("bc-dataverse-sync local stack is up:", rows)
        _wait_for_ctrl_c()
    finally:
        print("stopping...", flush=True)
        stack.stop()
        if entra is not None:
            entra.stop()
    return 0


def _telemetry_environment(port: int) -> dict[str, str]:
    """OpenTelemetry to a JSON-lines file (new each run), unless an exporter is configured already."""
    if any(os.environ.get(name) for name in ("APPLICATIONINSIGHTS_CONNECTION_STRING",
                                             "OTEL_EXPORTER_OTLP_ENDPOINT", "TELEMETRY_FILE")):  # fmt: skip
        return {}
    path = _telemetry_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return {"TELEMETRY_FILE": str(path)}


def cmd_traces(args: argparse.Namespace) -> int:
    from devstack.traces import main as show

    return show(args.file or str(_telemetry_path(args.port)), args.last)


def _telemetry_path(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"bc-dataverse-sync-{port}" / "telemetry.jsonl"


def cmd_host(args: argparse.Namespace) -> int:
    from devstack.host import BANNER
    from shared.settings import fill_environ_from_settings_file

    fill_environ_from_settings_file(REPO / "local.settings.json")
    # start_dev_host checks settings and the mapping file first (StartupError, reported by main).
    host, server = start_dev_host(
        args.port,
        function_key=os.environ.get("FUNCTIONS_KEY"),
        master_key=os.environ.get("FUNCTIONS_MASTER_KEY"),
    )
    print(BANNER)
    _print_rows("dev host:", [("function_app", f"{server.url}/api/")])
    try:
        _wait_for_ctrl_c()
    finally:
        host.stop()
        server.stop()
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    import importlib

    from devstack.serve import serve_in_thread

    module = importlib.import_module(f"devstack.{args.command}")
    server = serve_in_thread(module.create_app(), args.port)
    where = (
        f"{server.url}/api/data/v9.2/"
        if args.command == "dataverse"
        else f"{server.url}/v2.0/contoso/production/api/v2.0"
    )
    _print_rows(
        f"{args.command} sandbox:", [("base URL", where), ("control", f"{server.url}/_sandbox/stats")]
    )
    try:
        _wait_for_ctrl_c()
    finally:
        server.stop()
    return 0


def cmd_azurite(args: argparse.Namespace) -> int:
    from devstack.azurite import start_azurite

    azurite = start_azurite(args.blob_port, args.queue_port, args.table_port)
    _print_rows("Azurite:", [("AzureWebJobsStorage", azurite.connection_string)])
    try:
        _wait_for_ctrl_c()
    finally:
        azurite.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def storage_ports(p: argparse.ArgumentParser) -> None:
        p.add_argument("--blob-port", type=int, default=DEFAULT_PORTS["blob"])
        p.add_argument("--queue-port", type=int, default=DEFAULT_PORTS["queue"])
        p.add_argument("--table-port", type=int, default=DEFAULT_PORTS["table"])

    up = sub.add_parser("up", help="Azurite + both sandboxes + the dev host, with demo data, syncing live")
    up.add_argument("--port", type=int, default=DEFAULT_PORTS["host"], help="dev host port (default 7071)")
    up.add_argument("--dataverse-port", type=int, default=DEFAULT_PORTS["dataverse"])
    up.add_argument("--bc-port", type=int, default=DEFAULT_PORTS["bc"])
    up.add_argument("--no-demo", action="store_true", help="start empty: no demo data, no set-up")
    storage_ports(up)
    up.set_defaults(run=cmd_up)

    host = sub.add_parser("host", help="the dev host alone, configured by local.settings.json / environment")
    host.add_argument("--port", type=int, default=DEFAULT_PORTS["host"])
    host.set_defaults(run=cmd_host)

    for name in ("dataverse", "bc"):
        p = sub.add_parser(name, help=f"the {name} sandbox alone")
        p.add_argument("--port", type=int, default=DEFAULT_PORTS[name])
        p.set_defaults(run=cmd_sandbox)

    traces = sub.add_parser("traces", help="the traces of the last changes that `up` exported, as trees")
    traces.add_argument("file", nargs="?", help="TELEMETRY_FILE (default: the one `up` prints)")
    traces.add_argument("--last", type=int, default=5, help="how many traces (default 5)")
    traces.add_argument("--port", type=int, default=DEFAULT_PORTS["host"], help="`up`'s --port")
    traces.set_defaults(run=cmd_traces)

    az = sub.add_parser("azurite", help="Azurite alone (in memory, loopback)")
    storage_ports(az)
    az.set_defaults(run=cmd_azurite)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("shared.feeds").setLevel(logging.WARNING)
    from shared.startup import StartupError

    args = build_parser().parse_args(argv)
    try:
        check_ports(args)
        return int(args.run(args))
    except StartupError as exc:
        # The message lists every problem and where to fix it; a traceback would only bury it.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while starting: everything started is already stopped
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
