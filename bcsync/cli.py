"""`bcsync`: set-up and operations from a terminal. Every command calls one function of
`shared.ops.setup` / `shared.ops.operations` (the admin HTTP API calls the same ones) and renders the result
with rich, or as JSON with `--json`.

Settings are the service's app settings, read from the environment; `--settings FILE` (default
`local.settings.json` when present) fills in those not set, as Core Tools does.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from shared.connectors.errors import ApiError
from shared.errors import ServiceError
from shared.ops import operations as ops
from shared.runtime import Runtime, get_runtime
from shared.settings import SettingsError, fill_environ_from_settings_file
from shared.store.journal import RunSummary

app = typer.Typer(
    name="bcsync",
    help="Set up and operate the Business Central <-> Dataverse sync service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

BcOption = Annotated[str | None, typer.Option("--bc", help="the record's BC id, number or code")]
DvOption = Annotated[
    str | None, typer.Option("--dv", help="the record's Dataverse id (or the field BC's number maps to)")
]
MappingArg = Annotated[str, typer.Argument(help="mapping name, e.g. CUSTOMER")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="decide and show per field old -> new; write nothing")
]


class _State:
    json = False
    company: str | None = None


state = _State()


@app.callback()
def _options(
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    settings_file: Annotated[
        Path | None, typer.Option("--settings", help="local.settings.json whose Values fill unset settings")
    ] = None,
    company: Annotated[
        str | None,
        typer.Option("--company", help="the BC company (id) to act on; default: the home company"),
    ] = None,
) -> None:
    state.json = as_json
    state.company = company
    _take_width_from_environment()
    _load_settings_file(settings_file or Path("local.settings.json"), explicit=settings_file is not None)


def _take_width_from_environment() -> None:
    """Rich reads COLUMNS once, when the console is built (at import): read it again per command, so
    one process running several commands (a test session, a notebook) gets the width each one asks for."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        console.width = errors.width = int(columns)


def _load_settings_file(path: Path, *, explicit: bool) -> None:
    if not fill_environ_from_settings_file(path):
        if explicit:
            _fail(f"settings file {path} does not exist")
        return
    from shared import runtime

    runtime.reset()


def _runtime() -> Runtime:
    try:
        rt = get_runtime()
        return rt.for_company(state.company) if state.company else rt
    except SettingsError as exc:
        _fail(str(exc), code=2)
    except ServiceError as exc:
        _fail(str(exc), code=2)


def _fail(message: str, code: int = 1) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def _run(action: Any) -> Any:
    """Run an operation; turn its expected failures into a message and an exit code."""
    try:
        return action()
    except ops.OperationError as exc:
        _fail(exc.message, code=1 if exc.http_status == 400 else 4)
    except ApiError as exc:
        _fail(f"{exc.service or 'a remote service'} failed: {exc}", code=3)


def _emit(result: Any, render: Any = None) -> None:
    if state.json or render is None:
        console.print_json(json.dumps(ops.to_json(result), default=str))
    else:
        render(result)


# ------------------------------------------------------------------------------------------- setup
@app.command()
def setup(
    admin_dataverse_token: Annotated[
        str | None, typer.Option(help="sandbox only: bearer token of a Dataverse administrator")
    ] = None,
    admin_bc_token: Annotated[
        str | None, typer.Option(help="sandbox only: bearer token of a BC administrator")
    ] = None,
    admin_device_code: Annotated[
        bool, typer.Option(help="sign in as an administrator with a device code (real services)")
    ] = False,
    salespeople: Annotated[
        bool, typer.Option(help="couple BC salespeople to Dataverse users by e-mail")
    ] = True,
) -> None:
    """Check both connections, register webhooks (with an administrator credential), create the
    storage, couple salespeople by e-mail; then report what exists, what changed and what is left."""
    from shared.ops.setup import run_setup

    rt = _runtime()
    admin = _admin_credentials(rt, admin_dataverse_token, admin_bc_token, admin_device_code)
    with console.status("setting up") as status:
        report = run_setup(
            rt, admin, couple_salespeople=salespeople, on_step=lambda s: status.update(f"checking {s}")
        )
    _emit(report, _render_setup)
    if not state.json:
        console.print("[green]nothing changed[/green]" if not report.changed else "")
    if not report.ok:
        raise typer.Exit(1)


def _admin_credentials(rt: Runtime, dv_token: str | None, bc_token: str | None, device_code: bool) -> Any:
    from shared.connectors.credentials import StaticTokenCredential
    from shared.ops.setup import AdminCredentials
    from shared.settings import is_loopback_url

    if device_code:
        from azure.identity import DeviceCodeCredential

        credential = DeviceCodeCredential(tenant_id=rt.settings.azure_tenant_id or None)
        return AdminCredentials(dataverse=credential, bc=credential)
    for name, token, url in (
        ("--admin-dataverse-token", dv_token, rt.settings.dataverse_url),
        ("--admin-bc-token", bc_token, rt.settings.bc_api_url),
    ):
        if token and not is_loopback_url(url):
            _fail(f"{name} is for the local sandboxes only; use --admin-device-code for {url}")
    return AdminCredentials(
        dataverse=StaticTokenCredential(dv_token) if dv_token else None,
        bc=StaticTokenCredential(bc_token) if bc_token else None,
    )


def _lines(rows: list[tuple[str, str]]) -> None:
    """Label and text in two columns: a long text wraps under itself, never cut, at any width."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    for label, text in rows:
        grid.add_row(label, text)
    console.print(Padding(grid, (0, 0, 0, 2)))


def _render_setup(report: Any) -> None:
    # Lines, not a table with a column per field: a check's detail or a salesperson's reason is a
    # sentence, which a table cell in an 80-column terminal cuts into a narrow column.
    console.print("[bold]Checks[/bold]")
    _lines([("[green]ok    [/green]" if c.ok else "[red]FAILED[/red]",
             escape(f"{c.name}: {c.detail}" if c.detail else c.name)) for c in report.checks])  # fmt: skip
    for title, items, style in (
        ("Exists", report.existing, "dim"),
        ("Created", report.created, "green"),
        ("Updated", report.updated, "yellow"),
        ("Failed", report.failed, "red"),
    ):
        if items:
            console.print(f"[bold]{title}[/bold]")
            _lines([("", f"[{style}]{escape(item)}[/{style}]") for item in items])
    if report.salespeople:
        console.print("[bold]Salespeople[/bold]")
        rows = []
        for sp in report.salespeople:
            colour = "red" if sp.status == "not_coupled" else "green"
            detail = escape(f" {sp.reason or sp.user_id}") if sp.reason or sp.user_id else ""
            email = escape(sp.email or "(no e-mail)")
            rows.append((escape(sp.code), f"{email} [{colour}]{sp.status}[/{colour}]{detail}"))
        _lines(rows)
    if report.todo:
        console.print("[bold]Still to do[/bold]")
        _lines([("-", escape(item)) for item in report.todo])


# ------------------------------------------------------------------------------------------ status
@app.command()
def status() -> None:
    """Per mapping: coupled, failed, skipped, last run, how far behind; queue depths."""
    rt = _runtime()
    _emit(_run(lambda: ops.status(rt)), _render_status)


def _render_status(s: Any) -> None:
    # Two narrow tables without borders, so that both read whole in an 80-column terminal.
    counts = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for header in ("mapping", "coupled", "failed", "conflict", "retrying", "skipped", "oldest\nunsynced",
                   "poison"):  # fmt: skip
        counts.add_column(header, justify="left" if header == "mapping" else "right", no_wrap=True)
    for m in s.mappings:
        age = _age(m.oldest_unsynced_seconds) if m.oldest_unsynced_change else "-"
        counts.add_row(
            m.mapping, str(m.coupled), _red(m.failed), _red(m.conflicts), _yellow(m.retrying),
            _red(m.skipped), _yellow(age) if m.oldest_unsynced_change else age, _red(m.poison_messages),
        )  # fmt: skip
    console.print(counts)
    console.print()
    runs = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for header in ("mapping", "last run", "BC subscription expires"):
        runs.add_column(header, no_wrap=True)
    for m in s.mappings:
        run = m.last_run
        last = f"{run.kind} {run.status} {_minute(run.finished or run.started)}" if run else "-"
        runs.add_row(m.mapping, last, _minute(m.subscription_expires) if m.subscription_expires else "-")
    console.print(runs)
    console.print()
    console.print(f"queue: {s.queue_depth} waiting, poison: {s.poison_queue_depth}")
    if any(m.failed or m.conflicts or m.retrying or m.skipped for m in s.mappings):
        console.print("`bcsync errors` lists each record not in sync and the command that resolves it")


def _age(seconds: int | None) -> str:
    """`45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d {hours % 24} h"


def _minute(iso: str) -> str:
    """An ISO time as `2026-12-01 17:45` (UTC, as stored)."""
    return iso.replace("T", " ")[:16]


def _yellow(value: int | str) -> str:
    return f"[yellow]{value}[/yellow]" if value else "0"


def _red(n: int) -> str:
    return f"[red]{n}[/red]" if n else "0"


# -------------------------------------------------------------------------------- couple, uncouple
@app.command()
def couple(
    mapping: MappingArg,
    bc: Annotated[str, typer.Option("--bc", help="the BC record's id, number or code")],
    dv: Annotated[str, typer.Option("--dv", help="the Dataverse record's id")],
    sync_from: Annotated[str, typer.Option(help="whose values win in the first sync: bc or dv")] = "bc",
    dry_run: DryRunOption = False,
) -> None:
    """Couple two records by hand and synchronize them."""
    rt = _runtime()
    result = _run(lambda: ops.couple(rt, mapping, bc, dv, sync_from=sync_from, dry_run=dry_run))

    def render(r: Any) -> None:
        if r.dry_run:
            console.print(
                f"would couple BC {r.bc_id} with Dataverse {r.dv_id}, then sync from {_SIDE[r.synced_from]}:"
            )
            _render_sync(r)
            return
        console.print(
            f"coupled {r.mapping}: {r.outcome} ({escape(r.reason)})\n"
            f"  BC id         {r.bc_id}\n  Dataverse id  {r.dv_id}"
        )
        _render_changes(r)

    _emit(result, render)
    if not result.dry_run and result.outcome in NOT_SYNCED:
        _fail(f"coupled, but the first synchronization did not finish ({result.outcome}): "
              f"{result.error or result.reason}")  # fmt: skip


@app.command()
def uncouple(mapping: MappingArg, bc: BcOption = None, dv: DvOption = None) -> None:
    """Remove a record's coupling (the records stay)."""
    rt = _runtime()
    side, record_id = _run(lambda: ops.record_ref(bc, dv))
    result = _run(lambda: ops.uncouple(rt, mapping, side, record_id))
    _emit(result, lambda r: console.print(f"uncoupled BC {r['bc_id']} from Dataverse {r['dv_id']}"))


@app.command()
def match(
    mapping: MappingArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only report what would be coupled")] = False,
) -> None:
    """Match-based coupling: couple uncoupled records with exactly one uncoupled match."""
    rt = _runtime()
    with console.status(f"matching {mapping}"):
        result = _run(lambda: ops.match_couple(rt, mapping, dry_run=dry_run))
    _emit(result, _render_match)


def _render_match(r: Any) -> None:
    verb = "would couple" if r.dry_run else "coupled"
    console.print(
        f"{r.mapping}: {verb} {len(r.coupled)}, ambiguous {len(r.ambiguous)}, no match {len(r.no_match)}, "
        f"already coupled {r.already_coupled}"
    )
    if r.not_coupled:
        console.print(
            f"  [yellow]{len(r.not_coupled)} matched but not coupled yet[/yellow] "
            "(waiting for a lookup target, or failed: see `bcsync errors`)"
        )
    for bc_id, candidates in r.ambiguous[:20]:
        console.print(f"  [yellow]ambiguous[/yellow] BC {bc_id}: {', '.join(candidates)}")


# -------------------------------------------------------------------------------------- sync one
@app.command()
def sync(
    mapping: MappingArg,
    bc: BcOption = None,
    dv: DvOption = None,
    prefer: Annotated[str | None, typer.Option(help="direction when both sides changed: bc or dv")] = None,
    dry_run: DryRunOption = False,
) -> None:
    """Synchronize one record now."""
    rt = _runtime()
    side, record_id = _run(lambda: ops.record_ref(bc, dv))
    result = _run(lambda: ops.sync_now(rt, mapping, side, record_id, prefer=prefer, dry_run=dry_run))
    _emit(result, _render_sync)
    _exit_unless_synced([result])


# Outcomes after which the record is not in sync: `sync` and `retry` exit 1 on them.
NOT_SYNCED = ("failed", "skipped", "conflict", "queued", "deferred")


def _render_sync(r: Any) -> None:
    bc_id = r.bc_id or (r.id if getattr(r, "side", None) == "bc" else None)
    dv_id = r.dv_id or (r.id if getattr(r, "side", None) == "dv" else None)
    if r.dry_run:
        colour = "red" if r.outcome in NOT_SYNCED else "green"
        reason = "" if r.changes else f": {escape(r.reason)}"  # the fields below say it
        console.print(
            f"[bold]dry run[/bold], nothing written: would be [{colour}]{r.outcome}[/{colour}] "
            f"{r.mapping}{reason}"
        )
        out = console
    elif r.outcome not in NOT_SYNCED:
        console.print(f"[green]{r.outcome}[/green] {r.mapping}: {escape(r.reason)}")
        out = console
    else:
        why = r.error or r.reason
        sentence = {
            "queued": f"{r.mapping} was not synchronized now: {why}",
            "deferred": f"{r.mapping} waits for a record it refers to: {why}",
            "conflict": f"{r.mapping} is in conflict: {why}",
            "skipped": f"{r.mapping} was not synchronized: {why}",
        }.get(r.outcome, f"{r.mapping} failed to synchronize: {why}")
        errors.print(Text(sentence, style="red"))
        out = errors
    out.print(f"  BC id         {bc_id or '-'}")
    out.print(f"  Dataverse id  {dv_id or '-'}")
    _render_changes(r)
    if r.dry_run and r.error:
        console.print(f"  [red]{escape(r.error)}[/red]")


def _exit_unless_synced(results: list[Any]) -> None:
    """Exit 1 when a record is not in sync afterwards (a dry run changed nothing: it never fails)."""
    if any(r.outcome in NOT_SYNCED and not r.dry_run for r in results):
        raise typer.Exit(1)


def _render_changes(r: Any) -> None:
    """Per field old -> new, and each conflict with both values and the winner."""
    for c in r.changes:
        flow = _ARROW.get(c.get("direction", ""), "")
        console.print(
            f"    {c.get('field')}: {_value(c.get('old'))} -> {_value(c.get('new'))}  [dim]{flow}[/dim]"
        )
    for c in r.conflicts:
        _render_conflict(c)


# ----------------------------------------------------------------------------------- full resync
class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} records/s" if speed else "", style="cyan")


def _progress() -> Progress:
    # On stderr, so `--json` output on stdout stays parseable.
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn())
    return Progress(*columns, TimeElapsedColumn(), console=errors, transient=False)


@app.command()
def resync(
    mapping: MappingArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="decide everything, write nothing")] = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="let the service run it; follow its progress")
    ] = False,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export", help="with --dry-run: every record it would touch, as JSON lines, to this file"
        ),
    ] = None,
    show: Annotated[int, typer.Option(help="with --dry-run: list this many records")] = 10,
) -> None:
    """Full resync of a mapping, with a progress bar. With --dry-run: a count per outcome, the first
    records it would touch with their fields old -> new, and (--export) all of them as JSON lines."""
    rt = _runtime()
    if export is not None and (not dry_run or queue):
        _fail("--export needs --dry-run, run here (not --queue): the service keeps only the first records")
    if queue:
        run = _run(lambda: ops.start_full_resync(rt, mapping, dry_run=dry_run))
        final = _follow(rt, mapping, run.run_id)
    elif export is not None:
        with export.open("w", encoding="utf-8") as out:
            final = _resync_here(
                rt,
                mapping,
                dry_run=dry_run,
                on_record=lambda item: out.write(json.dumps(item, default=str) + "\n"),
            )
    else:
        final = _resync_here(rt, mapping, dry_run=dry_run)
    _emit(final, lambda run: _render_run(run, show=show, export=export))


def _resync_here(
    rt: Runtime, mapping: str, *, dry_run: bool, on_record: Callable[[dict[str, Any]], Any] | None = None
) -> RunSummary:
    """Run the resync in the foreground; it reports each chunk to the bar itself, so nothing reads
    the journal back (rich redraws the bar from its own refresh thread)."""
    _run(lambda: ops.entity_mapping(rt, mapping))
    error: Exception | None = None
    with _progress() as progress:
        task = progress.add_task(f"{mapping} resync", total=None)

        def show(run: RunSummary) -> None:
            # The total grows page by page; unknown (None) until the first chunk.
            progress.update(task, total=run.total or None, completed=run.done)

        try:
            final = ops.run_full_resync_here(
                rt, mapping, dry_run=dry_run, on_progress=show, on_record=on_record
            )
        except Exception as exc:  # reported once the bar has stopped, so the message stays readable
            error = exc
        else:
            # A run with nothing to do has no chunk: the bar still ends, at 0/0.
            progress.update(task, total=final.total, completed=final.done)
    if error is not None:
        _fail(f"the resync failed: {error}")
    return final


def _follow(rt: Runtime, mapping: str, run_id: str) -> RunSummary:
    """Follow a run of another process (the service, or an earlier `bcsync`) through the journal."""
    with _progress() as progress:
        task = progress.add_task(f"{mapping} resync", total=None)
        while True:
            run = rt.journal.get_run(mapping, run_id)
            if run is not None:
                progress.update(task, total=run.total or None, completed=run.done)
                if not run.in_progress:
                    return run
            time.sleep(0.2)


@app.command("run")
def show_run(mapping: MappingArg, run_id: Annotated[str, typer.Argument(help="the run id")]) -> None:
    """Follow a (full resync) run until it finishes."""
    rt = _runtime()
    _run(lambda: ops.get_run(rt, mapping, run_id))
    _emit(_follow(rt, mapping, run_id), _render_run)


def _render_run(run: RunSummary | None, show: int = 10, export: Path | None = None) -> None:
    if run is None:
        console.print("the run has not started yet")
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())) or "nothing to do"
    dry = " (dry run: nothing written)" if run.dry_run else ""
    console.print(f"{run.mapping} {run.kind} {run.status}{dry}: {run.done}/{run.total}; {counts}")
    console.print(f"  {run.api_requests} API requests; {run.message}")
    if not run.dry_run:
        return
    touched = sum(v for k, v in run.counts.items() if k != "unchanged")
    if touched:
        console.print(f"  would touch {touched} records; the first {min(show, len(run.sample), touched)}:")
    for item in run.sample[:show]:
        ids = f"BC {item.get('bc_id') or '-'} / Dataverse {item.get('dv_id') or '-'}"
        console.print(
            f"  {item['outcome']}  {ids}" + ("" if item.get("changes") else f": {item.get('reason', '')}")
        )
        _render_changes(SimpleNamespace(changes=item.get("changes", []), conflicts=item.get("conflicts", [])))
    if export is not None:
        console.print(f"  all of them as JSON lines in {export}")


# ------------------------------------------------------------------------------ errors and retry
@app.command("errors")
def list_errors(
    mapping: Annotated[str | None, typer.Argument(help="only this mapping")] = None,
    skipped: Annotated[bool, typer.Option("--skipped", help="only skipped records")] = False,
) -> None:
    """Failed and skipped records with their messages."""
    rt = _runtime()
    _emit(_run(lambda: ops.list_errors(rt, mapping, skipped_only=skipped)), _render_errors)


def _render_errors(items: list[Any]) -> None:
    if not items:
        console.print("[green]no failed, conflicting, retrying or skipped records[/green]")
        return
    # One block per record: the message is BC's or Dataverse's own sentence, too long for a cell.
    for e in items:
        number = f" {e.bc_number}" if e.bc_number else ""
        console.print(f"[bold]{e.mapping}{number}[/bold]  {_state(e)}")
        console.print(f"  BC id         {e.bc_id or '-'}")
        console.print(f"  Dataverse id  {e.dv_id or '-'}")
        if e.since:
            console.print(f"  not in sync since {_minute(e.since)} UTC")
        if e.message:  # wrapped under its indent, never cut
            style = "red" if e.state != "retrying" else "yellow"
            console.print(Padding(Text(e.message, style=style), (0, 0, 0, 2)))
        console.print(f"  resolve: {e.resolve}")
        console.print()
    console.print(f"{len(items)} record(s) not in sync")


def _state(e: Any) -> str:
    if e.state == "retrying":
        when = f", next attempt {e.next_attempt.replace('T', ' ')[:19]} UTC" if e.next_attempt else ""
        return f"[yellow]retrying {e.attempts} of {e.max_attempts}{when}[/yellow]"
    attempts = f", {e.attempts} attempts" if e.attempts > 1 else ""
    skipped = ", skipped until retried" if e.skipped else ""
    uncoupled = ", not coupled" if not e.coupled else ""
    return f"[red]{e.state}{attempts}{skipped}{uncoupled}[/red]"


@app.command()
def retry(
    mapping: MappingArg,
    bc: BcOption = None,
    dv: DvOption = None,
    all_records: Annotated[bool, typer.Option("--all", help="queue every failed or skipped record")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Retry one failed record now, or queue all failed ones."""
    rt = _runtime()
    if all_records:
        if bc or dv:
            _fail("give --all or one record, not both")
        result = _run(lambda: ops.retry_all(rt, mapping, dry_run=dry_run))

        def render_all(r: Any) -> None:
            if not r.dry_run:
                console.print(f"{r.queued} records of {r.mapping} queued for another attempt")
                return
            console.print(f"dry run, nothing queued: {r.queued} records of {r.mapping} would be retried")
            for side_, id_ in r.records[:20]:
                console.print(f"  {_SIDE[side_]} {id_}")

        _emit(result, render_all)
        return
    side, record_id = _run(lambda: ops.record_ref(bc, dv))
    result = _run(lambda: ops.retry(rt, mapping, side, record_id, dry_run=dry_run))

    def render(r: Any) -> None:
        for item in r.retried:
            _render_sync(item)

    _emit(result, render)
    _exit_unless_synced(result.retried)


@app.command()
def poison(
    replay: Annotated[
        bool, typer.Option("--replay", help="move valid messages back to the sync queue")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="with --replay: only list what would move")
    ] = False,
) -> None:
    """List the poison queue, or replay it."""
    rt = _runtime()
    if not replay:
        _emit(_run(lambda: ops.list_poison(rt)), _render_poison)
        return
    result = _run(lambda: ops.replay_poison(rt, dry_run=dry_run))

    def render(r: Any) -> None:
        verb = "would replay" if r.dry_run else "replayed"
        console.print(f"{verb} {len(r.replayed)} message(s); kept {len(r.kept)} that are not sync messages")
        _render_poison(r.kept)

    _emit(result, render)


def _render_poison(items: list[Any]) -> None:
    if not items:
        return
    table = Table("message id", "inserted", "dequeued", "message")
    for p in items:
        table.add_row(p.message_id, p.inserted or "-", str(p.dequeue_count), p.summary)
    console.print(table)


@app.command()
def history(
    mapping: MappingArg,
    bc: BcOption = None,
    dv: DvOption = None,
    limit: Annotated[int, typer.Option(help="at most this many entries")] = 50,
    jsonl: Annotated[
        Path | None,
        typer.Option("--jsonl", help="also write the entries as JSON lines to this file ('-': stdout)"),
    ] = None,
) -> None:
    """One record's timeline on both systems, newest first: per field old -> new, from which side and
    by whom, and both values of each conflict with the one that won."""
    rt = _runtime()
    side, record_id = _run(lambda: ops.record_ref(bc, dv))
    entries = _run(lambda: ops.history(rt, mapping, side, record_id, limit=limit))
    if jsonl is not None:
        lines = "".join(json.dumps(ops.to_json(e), default=str) + "\n" for e in entries)
        if str(jsonl) == "-":
            print(lines, end="")
            return
        jsonl.write_text(lines, encoding="utf-8")
        errors.print(f"{len(entries)} entries written to {jsonl}")
    _emit(entries, _render_history)


_SIDE = {"bc": "BC", "dv": "Dataverse", "": "-"}
_ARROW = {"to_dataverse": "BC -> Dataverse", "to_bc": "Dataverse -> BC", "both": "both ways", "": ""}


def _render_history(items: list[Any]) -> None:
    if not items:
        console.print("no journal entries for this record")
        return
    for e in items:
        when = e.at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        flow = f"  {_ARROW.get(e.direction, e.direction)}" if e.direction else ""
        about = [f"change in {_SIDE.get(e.source, e.source)}" + (f" by {e.user}" if e.user else "")]
        about = (about if e.source else []) + [
            f"{e.api_requests} API request{'' if e.api_requests == 1 else 's'}"
        ]
        console.print(f"[bold]{when}[/bold]  {e.outcome}{flow}  [dim]({'; '.join(about)})[/dim]")
        _render_changes(e)
        text = e.error or ("" if e.changes else e.reason)
        if text:
            console.print(f"    {text}", style="red" if e.error else None)


def _render_conflict(c: dict[str, Any]) -> None:
    winner = c.get("winner")
    verdict = (
        f"{_SIDE.get(winner, winner)} won ({c.get('why')})" if winner else "unresolved (nothing written)"
    )
    console.print(
        f"    [yellow]conflict[/yellow] {c.get('field')}: BC {_value(c.get('bc'))}, "
        f"Dataverse {_value(c.get('dv'))}: {verdict}"
    )


def _value(value: Any) -> str:
    return "(empty)" if value in (None, "") else repr(value)


# ------------------------------------------------------------------------------- sales features
@app.command()
def statistics() -> None:
    """Push customer statistics now (only customers whose figures changed)."""
    from shared.sales.statistics import push_statistics

    rt = _runtime()
    with console.status("pushing customer statistics"):
        report = _run(lambda: push_statistics(rt))
    _emit(
        report,
        lambda r: console.print(
            f"{r.customers} coupled customers: {r.changed} changed, {r.written} written, "
            f"{r.unchanged} unchanged, {len(r.failed)} failed "
            f"({r.bc_requests} BC + {r.dataverse_requests} Dataverse requests)"
        ),
    )


@app.command()
def availability(number: Annotated[str, typer.Argument(help="BC item number")]) -> None:
    """BC inventory of an item, as salespeople see it."""
    from shared.sales.availability import ItemNotFound, availability_service

    rt = _runtime()
    try:
        answer = _run(lambda: availability_service(rt).by_number(number))
    except ItemNotFound as exc:
        _fail(str(exc), code=4)
    _emit(
        answer,
        lambda a: console.print(
            f"{a.item_number} {a.description}: {a.inventory:g} {a.unit_of_measure} (as of {a.as_of})"
        ),
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
