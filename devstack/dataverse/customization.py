"""Customizing the sandbox at run time, as Dataverse is customized: one machinery behind

- the metadata writes of the Web API (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-update-entity-definitions-using-web-api):
  `POST EntityDefinitions` (a table with its attributes), `POST EntityDefinitions(...)/Attributes`,
  `POST EntityDefinitions(...)/Keys`, each inside the solution named by `MSCRM.SolutionUniqueName`;
- solution import (https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/importsolutionasync):
  `ImportSolutionAsync` (an asynchronous job, visible as an `asyncoperations` row, with an `importjobs`
  row holding the result) and `ImportSolution` (the same, synchronously): the tables, columns, keys,
  forms and security roles the zip's `customizations.xml` declares, its publisher and solution rows;
- security roles: the privileges each role grants, checked on every request to a table created here
  (a caller without them gets Dataverse's privilege error, 403 `0x80040220`). Standard tables are not
  checked (difference: the sandbox has no privilege model for them).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from xml.etree import ElementTree as ET

from devstack.dataverse import errors, metadata
from devstack.dataverse.errors import DataverseError
from devstack.dataverse.schema import (
    ACTIVE_INACTIVE,
    ACTIVE_INACTIVE_STATUS,
    Column,
    Kind,
    Table,
    build_table,
    lookup,
)
from devstack.dataverse.store import Caller, Store, utc_iso

MISSING_PRIVILEGE = "0x80040220"
IMPORT_OPERATION = 54  # asyncoperation.operationtype of an ExecuteAsync request (ImportSolutionAsync)
SYSTEM_ADMINISTRATOR = "System Administrator"
SYSTEM_ADMINISTRATOR_ROLE_ID = "5a3ed1a0-0000-4000-8000-00000000a0a0"
FORM_TYPES = {"main": 2, "quick": 6, "quickCreate": 7, "card": 11, "dashboard": 0}
# customizations.xml <Type> -> (kind, memo?)
_XML_TYPES: dict[str, Kind] = {
    "nvarchar": Kind.STRING,
    "ntext": Kind.STRING,
    "memo": Kind.STRING,
    "int": Kind.INT,
    "bigint": Kind.BIGINT,
    "decimal": Kind.DECIMAL,
    "money": Kind.MONEY,
    "bit": Kind.BOOL,
    "datetime": Kind.DATETIME,
    "picklist": Kind.CHOICE,
    "lookup": Kind.LOOKUP,
    "uniqueidentifier": Kind.GUID,
}
# Web API attribute metadata types -> kind
_API_TYPES: dict[str, Kind] = {
    "StringAttributeMetadata": Kind.STRING,
    "MemoAttributeMetadata": Kind.STRING,
    "IntegerAttributeMetadata": Kind.INT,
    "BigIntAttributeMetadata": Kind.BIGINT,
    "DecimalAttributeMetadata": Kind.DECIMAL,
    "MoneyAttributeMetadata": Kind.MONEY,
    "BooleanAttributeMetadata": Kind.BOOL,
    "DateTimeAttributeMetadata": Kind.DATETIME,
    "PicklistAttributeMetadata": Kind.CHOICE,
    "DoubleAttributeMetadata": Kind.DECIMAL,  # difference: stored as a decimal
}
_OPERATIONS = {"Read", "Write", "Create", "Delete"}


@dataclass
class TableSpec:
    """A table to create: what metadata or a solution says about it."""

    logical_name: str
    schema_name: str
    entity_set: str
    display_name: str
    display_collection_name: str
    primary_name: str
    columns: list[Column]
    keys: list[tuple[str, ...]] = field(default_factory=list)
    user_owned: bool = True
    change_tracking: bool = True


@dataclass
class _Import:
    async_id: str
    job_id: str
    due: dt.datetime
    data: bytes
    overwrite: bool
    caller: Caller


class Customizer:
    def __init__(self, store: Store, delay: Callable[[], float]) -> None:
        self.store = store
        self._delay = delay
        self._lock = threading.Lock()
        self._pending: list[_Import] = []
        self.role_privileges: dict[str, set[str]] = {}  # role id -> lower-case privilege names

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
        self.role_privileges.clear()

    # --- security ---------------------------------------------------------------------------------

    def roles_of(self, user_id: str) -> list[str]:
        with self.store.lock:
            rows = self.store.table("systemuserrolescollection").rows.values()
            return [str(r["roleid"]) for r in rows if str(r["systemuserid"]).lower() == user_id.lower()]

    def is_administrator(self, user_id: str) -> bool:
        return SYSTEM_ADMINISTRATOR_ROLE_ID in self.roles_of(user_id)

    def privileges_of(self, user_id: str) -> set[str]:
        result: set[str] = set()
        for role_id in self.roles_of(user_id):
            result |= self.role_privileges.get(role_id, set())
        return result

    def authorize(self, caller: Caller, table: Table, operations: Iterable[str]) -> None:
        """Dataverse's privilege check, for the tables created by customization."""
        if not table.enforce_privileges or self.is_administrator(caller.user_id):
            return
        held = self.privileges_of(caller.user_id)
        for operation in operations:
            name = f"prv{operation}{table.schema_name or table.logical_name}"
            if name.lower() not in held:
                roles = self.roles_of(caller.user_id)
                raise errors.DataverseError(
                    403,
                    f"Principal user (Id={caller.user_id}, type=8, roleCount={len(roles)}, "
                    f"privilegeCount={len(held)}, accessMode=0), is missing {name} privilege "
                    f"(Id={uuid.uuid5(uuid.NAMESPACE_URL, name.lower())}) on OTC=10000 for entity "
                    f"'{table.logical_name}'. Ask your administrator for a security role that grants it.",
                    MISSING_PRIVILEGE,
                )

    def require_administrator(self, caller: Caller, what: str) -> None:
        if not self.is_administrator(caller.user_id):
            raise errors.DataverseError(
                403,
                f"Principal user (Id={caller.user_id}, type=8) is missing prvImportCustomization privilege: "
                f"{what} needs the System Administrator or System Customizer role.",
                MISSING_PRIVILEGE,
            )

    def assign_role(self, user_id: str, role_id: str, caller: Caller) -> None:
        """`POST systemusers(<id>)/systemuserroles_association/$ref` (idempotent, as Dataverse)."""
        role_id, user_id = role_id.lower(), user_id.lower()
        if self.store.get("roles", role_id) is None:
            raise errors.not_found("role", role_id)
        if self.store.get("systemusers", user_id) is None:
            raise errors.not_found("systemuser", user_id)
        if role_id in self.roles_of(user_id):
            return
        self.store.create("systemuserrolescollection", {"systemuserid": user_id, "roleid": role_id}, caller)

    # --- metadata writes ------------------------------------------------------------------------

    def solution_named(self, name: str | None) -> dict[str, Any] | None:
        if not name:
            return None
        with self.store.lock:
            rows = self.store.table("solutions").rows.values()
            found = next((r for r in rows if str(r.get("uniquename")).lower() == name.lower()), None)
        if found is None:
            raise errors.bad_request(
                f"The solution with unique name '{name}' (MSCRM.SolutionUniqueName) does not exist.",
                "0x8004701c",
            )
        return found

    def create_table_from_api(self, body: Mapping[str, Any], solution: str | None, caller: Caller) -> Table:
        self.require_administrator(caller, "Creating a table")
        self.solution_named(solution)
        schema = _required(body, "SchemaName", "EntityMetadata")
        self._check_prefix(schema)
        logical = schema.lower()
        if self.store.table_by_logical_name(logical) is not None:
            raise errors.bad_request(f"An entity with the name {logical} already exists.", "0x80047013")
        attributes = body.get("Attributes") or []
        primary = [a for a in attributes if isinstance(a, Mapping) and a.get("IsPrimaryName")]
        if len(primary) != 1:
            raise errors.bad_request(
                "A new table needs exactly one attribute with IsPrimaryName true (a StringAttributeMetadata)."
            )
        columns = [_column_from_api(a) for a in attributes]
        spec = TableSpec(
            logical_name=logical,
            schema_name=schema,
            entity_set=str(body.get("EntitySetName") or plural(logical)),
            display_name=_label_text(body.get("DisplayName")) or schema,
            display_collection_name=_label_text(body.get("DisplayCollectionName")) or plural(schema),
            primary_name=str(primary[0]["SchemaName"]).lower(),
            columns=columns,
            user_owned=str(body.get("OwnershipType") or "UserOwned") == "UserOwned",
            change_tracking=bool(body.get("ChangeTrackingEnabled", False)),
        )
        return self._create_table(spec)

    def create_entities(self, body: Mapping[str, Any], solution: str | None, caller: Caller) -> list[Table]:
        """`CreateEntities`: several tables (`Entities`, each a ComplexEntityMetadata) in one request."""
        entities = body.get("Entities")
        if not isinstance(entities, list) or not entities:
            raise errors.bad_request(
                "CreateEntities needs 'Entities': a list of ComplexEntityMetadata objects."
            )
        for entity in entities:
            if not isinstance(entity, Mapping):
                raise errors.bad_request("Each item of 'Entities' must be a ComplexEntityMetadata object.")
        return [self.create_table_from_api(e, solution, caller) for e in entities]

    def create_attribute_from_api(
        self, table: Table, body: Mapping[str, Any], solution: str | None, caller: Caller
    ) -> Column:
        self.require_administrator(caller, "Creating a column")
        self.solution_named(solution)
        self._check_prefix(_required(body, "SchemaName", "AttributeMetadata"))
        column = _column_from_api(body)
        self._add_columns(table, [column])
        return column

    def create_key_from_api(
        self, table: Table, body: Mapping[str, Any], solution: str | None, caller: Caller
    ) -> tuple[str, ...]:
        self.require_administrator(caller, "Creating an alternate key")
        self.solution_named(solution)
        _required(body, "SchemaName", "EntityKeyMetadata")
        attributes = body.get("KeyAttributes")
        if not isinstance(attributes, list) or not attributes:
            raise errors.bad_request(
                "EntityKeyMetadata needs KeyAttributes (a list of column logical names)."
            )
        key = tuple(str(a).lower() for a in attributes)
        self._add_key(table, key)
        return key

    def _check_prefix(self, schema_name: str) -> None:
        prefix, underscore, rest = schema_name.partition("_")
        with self.store.lock:
            prefixes = {
                str(r.get("customizationprefix")).lower()
                for r in self.store.table("publishers").rows.values()
            }
        if not underscore or not rest or prefix.lower() not in prefixes:
            raise errors.bad_request(
                f"The schema name '{schema_name}' must begin with a publisher's customization prefix and an "
                f"underscore (publishers here: {', '.join(sorted(prefixes))}).",
                "0x80044363",
            )

    def _create_table(self, spec: TableSpec) -> Table:
        names = {c.name for c in spec.columns}
        if spec.primary_name not in names:
            raise errors.bad_request(
                f"The primary name column {spec.primary_name} is not among the attributes."
            )
        state = {"state": ACTIVE_INACTIVE, "status": ACTIVE_INACTIVE_STATUS, "default_status": {0: 1, 1: 2}}
        table = build_table(
            spec.logical_name,
            spec.entity_set,
            spec.primary_name,
            [c for c in spec.columns if c.name != f"{spec.logical_name}id"],
            keys=tuple(spec.keys),
            owned=spec.user_owned,
            change_tracking=spec.change_tracking,
            **state,  # type: ignore[arg-type]
        )
        table = replace(
            table,
            schema_name=spec.schema_name,
            display_name=spec.display_name,
            display_collection_name=spec.display_collection_name,
            enforce_privileges=True,
        )
        self._check_key_columns(table, spec.keys)
        self.store.define_table(table)
        return table

    def _add_columns(self, table: Table, columns: list[Column]) -> Table:
        current = self.store.table(table.entity_set).table
        for column in columns:
            if column.wire_name in current.columns or column.name in current.lookup_by_name():
                raise errors.bad_request(
                    f"An attribute named {column.name} already exists on {current.logical_name}.",
                    "0x80047013",
                )
        updated = replace(current, columns={**current.columns, **{c.wire_name: c for c in columns}})
        self.store.define_table(updated)
        return updated

    def update_table_from_api(self, table: Table, body: Mapping[str, Any]) -> Table:
        """A PUT of a table's definition: `ChangeTrackingEnabled` is applied (on only: Dataverse cannot
        turn it off again); any other property that differs from the definition as read is refused
        rather than silently ignored."""
        current = self.store.table(table.entity_set).table
        expected = metadata.entity(current)
        if str(body.get("MetadataId", "")).lower() != expected["MetadataId"]:
            raise errors.bad_request("The MetadataId in the body does not match the table in the URL.")
        changed = sorted(
            k for k, v in body.items()
            if k in expected and k not in ("ChangeTrackingEnabled", "MetadataId") and v != expected[k]
        )  # fmt: skip
        if changed:
            raise errors.bad_request(
                f"The sandbox applies ChangeTrackingEnabled only; it does not change {', '.join(changed)}."
            )
        wanted = bool(body.get("ChangeTrackingEnabled", current.change_tracking))
        if current.change_tracking and not wanted:
            raise errors.bad_request(
                f"Change tracking can't be disabled for the entity {current.logical_name} once it is enabled."
            )
        if wanted == current.change_tracking:
            return current
        updated = replace(current, change_tracking=True)
        self.store.define_table(updated)
        return updated

    def _add_key(self, table: Table, key: tuple[str, ...]) -> Table:
        current = self.store.table(table.entity_set).table
        if key in current.alternate_keys:
            return current
        self._check_key_columns(current, [key])
        updated = replace(current, alternate_keys=(*current.alternate_keys, key))
        self.store.define_table(updated)
        return updated

    @staticmethod
    def _check_key_columns(table: Table, keys: Iterable[tuple[str, ...]]) -> None:
        for key in keys:
            for name in key:
                column = table.columns.get(name)
                if column is None or column.kind not in (Kind.STRING, Kind.INT, Kind.DECIMAL, Kind.DATETIME,
                                                         Kind.DATE, Kind.CHOICE, Kind.GUID):  # fmt: skip
                    raise errors.bad_request(
                        f"'{name}' cannot be part of an alternate key of {table.logical_name}: it is not "
                        "a string, whole number, decimal, date, choice or unique identifier column of it."
                    )

    # --- solution import --------------------------------------------------------------------------

    def import_async(self, body: Mapping[str, Any], caller: Caller) -> tuple[str, str]:
        """`ImportSolutionAsync`: validate, record the job; (AsyncOperationId, ImportJobKey)."""
        data, job_id, overwrite = self._import_request(body, caller)
        operation = self.store.create(
            "asyncoperations",
            {
                "name": "ImportSolutionAsync",
                "operationtype": IMPORT_OPERATION,
                "statecode": 0,
                "statuscode": 0,
                "primaryentitytype": "solution",
                "correlationid": caller.correlation_id or None,
            },
            caller,
        )
        async_id = str(operation["asyncoperationid"])
        due = self.store.clock() + dt.timedelta(seconds=self._delay())
        with self._lock:
            self._pending.append(_Import(async_id, job_id, due, data, overwrite, caller))
        return async_id, job_id

    def import_now(self, body: Mapping[str, Any], caller: Caller) -> None:
        """`ImportSolution`: the same import, finished before the answer (which is an error if it failed)."""
        data, job_id, overwrite = self._import_request(body, caller)
        message = self._run_import(data, job_id, overwrite, caller)
        if message:
            raise errors.DataverseError(400, f"Solution import failed: {message}", "0x80048068")

    def run_due(self) -> None:
        now = self.store.clock()
        with self._lock:
            due = [job for job in self._pending if job.due <= now]
            self._pending = [job for job in self._pending if job.due > now]
        for job in due:
            message = self._run_import(job.data, job.job_id, job.overwrite, job.caller)
            result: dict[str, Any] = (
                {"statecode": 3, "statuscode": 31, "message": message, "errorcode": -2147188120}
                if message
                else {"statecode": 3, "statuscode": 30, "message": "Solution imported."}
            )
            result["completedon"] = utc_iso(self.store.clock())
            self.store.update("asyncoperations", job.async_id, result, job.caller)

    def _import_request(self, body: Mapping[str, Any], caller: Caller) -> tuple[bytes, str, bool]:
        self.require_administrator(caller, "Importing a solution")
        encoded = body.get("CustomizationFile")
        if not isinstance(encoded, str) or not encoded:
            raise errors.bad_request(
                "ImportSolution needs CustomizationFile: the solution zip, base64-encoded."
            )
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise errors.bad_request("CustomizationFile is not valid base64.") from None
        job_id = str(body.get("ImportJobId") or uuid.uuid4())
        try:
            job_id = str(uuid.UUID(job_id))
        except ValueError:
            raise errors.bad_request(f"ImportJobId '{job_id}' is not a GUID.") from None
        if self.store.get("importjobs", job_id) is not None:
            raise errors.duplicate_id("importjob", job_id)
        self.store.create(
            "importjobs",
            {
                "importjobid": job_id,
                "name": "Solution import",
                "progress": 0,
                "startedon": utc_iso(self.store.clock()),
                "operationcontext": "Import",
            },
            caller,
        )
        return data, job_id, bool(body.get("OverwriteUnmanagedCustomizations", False))

    def _run_import(self, data: bytes, job_id: str, overwrite: bool, caller: Caller) -> str:
        """Apply a solution zip; '' when it succeeded, else why not (also in the import job's data)."""
        name, version = "", ""
        try:
            parsed = parse_solution(data)
            name, version = parsed.unique_name, parsed.version
            self._apply(parsed, caller)
            outcome, message = "success", ""
        except DataverseError as exc:
            outcome, message = "failure", exc.message
        except SolutionFileError as exc:
            outcome, message = "failure", str(exc)
        result = ET.Element("importexportxml", {"succeeded": "1" if outcome == "success" else "0"})
        manifest = ET.SubElement(ET.SubElement(result, "solutionManifests"), "solutionManifest")
        ET.SubElement(manifest, "UniqueName").text = name
        ET.SubElement(manifest, "Version").text = version
        code = "0x80048068" if message else "0"
        ET.SubElement(manifest, "result", {"result": outcome, "errorcode": code, "errortext": message})
        self.store.update(
            "importjobs",
            job_id,
            {
                "solutionname": name or None,
                "progress": 100,
                "completedon": utc_iso(self.store.clock()),
                "data": ET.tostring(result, encoding="unicode"),
            },
            caller,
        )
        return message

    def _apply(self, solution: ParsedSolution, caller: Caller) -> None:
        installed = self.solution_row(solution.unique_name)
        if installed is not None and _version(str(installed.get("version"))) > _version(solution.version):
            raise errors.bad_request(
                f"The solution {solution.unique_name} {solution.version} is older than the installed version "
                f"{installed.get('version')}: import a newer version.",
                "0x80048068",
            )
        # Validate everything against the current schema before changing anything.
        for spec in solution.tables:
            existing = self.store.table_by_logical_name(spec.logical_name)
            if existing is None and not spec.entity_set:
                raise errors.bad_request(
                    f"The solution customizes the table {spec.logical_name}, which does not exist here."
                )
        publisher_id = self._ensure_publisher(solution, caller)
        for spec in solution.tables:
            existing = self.store.table_by_logical_name(spec.logical_name)
            if existing is None:
                self._create_table(spec)
                continue
            new = [c for c in spec.columns if c.wire_name not in existing.columns]
            if new:
                existing = self._add_columns(existing, new)
            for key in spec.keys:
                existing = self._add_key(existing, key)
        for form in solution.forms:
            row = {k: v for k, v in form.items() if k != "systemformid"}
            if self.store.get("systemforms", form["systemformid"]) is None:
                self.store.create("systemforms", dict(form), caller)
            else:
                self.store.update("systemforms", form["systemformid"], row, caller)
        for role_id, (name, privileges) in solution.roles.items():
            if self.store.get("roles", role_id) is None:
                self.store.create(
                    "roles",
                    {"roleid": role_id, "name": name, "roleidunique": role_id,
                     "businessunitid@odata.bind": f"/businessunits({self._root_business_unit()})"},
                    caller,
                )  # fmt: skip
            else:
                self.store.update("roles", role_id, {"name": name}, caller)
            self.role_privileges[role_id] = {p.lower() for p in privileges}
        values = {
            "uniquename": solution.unique_name,
            "friendlyname": solution.friendly_name or solution.unique_name,
            "version": solution.version,
            "ismanaged": solution.managed,
            "isvisible": True,
            "installedon": utc_iso(self.store.clock()),
            "publisherid@odata.bind": f"/publishers({publisher_id})",
        }
        if installed is None:
            self.store.create("solutions", values, caller)
        else:
            self.store.update("solutions", str(installed["solutionid"]), values, caller)

    def solution_row(self, unique_name: str) -> dict[str, Any] | None:
        with self.store.lock:
            rows = self.store.table("solutions").rows.values()
            return next((r for r in rows if str(r.get("uniquename")).lower() == unique_name.lower()), None)

    def _ensure_publisher(self, solution: ParsedSolution, caller: Caller) -> str:
        with self.store.lock:
            rows = list(self.store.table("publishers").rows.values())
        found = next(
            (r for r in rows if str(r.get("uniquename")).lower() == solution.publisher.lower()), None
        )
        if found is not None:
            return str(found["publisherid"])
        row = self.store.create(
            "publishers",
            {
                "uniquename": solution.publisher,
                "friendlyname": solution.publisher_name or solution.publisher,
                "customizationprefix": solution.prefix,
                "customizationoptionvalueprefix": solution.option_value_prefix,
            },
            caller,
        )
        return str(row["publisherid"])

    def _root_business_unit(self) -> str:
        with self.store.lock:
            return str(next(iter(self.store.table("businessunits").rows)))


# --- the solution file ------------------------------------------------------------------------------


class SolutionFileError(ValueError):
    pass


@dataclass
class ParsedSolution:
    unique_name: str
    friendly_name: str
    version: str
    managed: bool
    publisher: str
    publisher_name: str
    prefix: str
    option_value_prefix: int
    tables: list[TableSpec]
    forms: list[dict[str, Any]]
    roles: dict[str, tuple[str, list[str]]]


def parse_solution(data: bytes) -> ParsedSolution:
    """Read a solution zip as Dataverse reads it: `solution.xml` and `customizations.xml`."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest_root = ET.fromstring(archive.read("solution.xml"))
            customizations = ET.fromstring(archive.read("customizations.xml"))
    except zipfile.BadZipFile:
        raise SolutionFileError("The solution file is invalid: it is not a zip file.") from None
    except KeyError as exc:
        raise SolutionFileError(f"The solution file is invalid: {exc.args[0]}") from None
    except ET.ParseError as exc:
        raise SolutionFileError(
            f"The solution file is invalid: its XML is not well formed ({exc})."
        ) from None
    manifest = manifest_root.find("SolutionManifest")
    if manifest is None:
        raise SolutionFileError("The solution file is invalid: solution.xml has no SolutionManifest.")
    unique_name = (manifest.findtext("UniqueName") or "").strip()
    version = (manifest.findtext("Version") or "").strip()
    prefix = (manifest.findtext("Publisher/CustomizationPrefix") or "").strip()
    if not unique_name or not version or not prefix:
        raise SolutionFileError(
            "The solution file is invalid: UniqueName, Version or the publisher's prefix is missing."
        )
    _version(version)
    lookups = _lookup_targets(customizations)
    tables = [_table_from_xml(e, lookups) for e in customizations.iterfind("Entities/Entity")]
    forms = [
        form for entity in customizations.iterfind("Entities/Entity") for form in _forms_from_xml(entity)
    ]
    roles: dict[str, tuple[str, list[str]]] = {}
    for role in customizations.iterfind("Roles/Role"):
        role_id = str(uuid.UUID(str(role.get("id")).strip("{}")))
        roles[role_id] = (
            str(role.get("name")),
            [str(p.get("name")) for p in role.iterfind("RolePrivileges/RolePrivilege")],
        )
    return ParsedSolution(
        unique_name=unique_name,
        friendly_name=str(manifest.find("LocalizedNames/LocalizedName").get("description"))  # type: ignore[union-attr]
        if manifest.find("LocalizedNames/LocalizedName") is not None
        else unique_name,
        version=version,
        managed=(manifest.findtext("Managed") or "0").strip() == "1",
        publisher=(manifest.findtext("Publisher/UniqueName") or "").strip(),
        publisher_name=str(manifest.find("Publisher/LocalizedNames/LocalizedName").get("description"))  # type: ignore[union-attr]
        if manifest.find("Publisher/LocalizedNames/LocalizedName") is not None
        else "",
        prefix=prefix,
        option_value_prefix=int(manifest.findtext("Publisher/CustomizationOptionValuePrefix") or 10000),
        tables=tables,
        forms=forms,
        roles=roles,
    )


def _lookup_targets(customizations: ET.Element) -> dict[tuple[str, str], str]:
    result: dict[tuple[str, str], str] = {}
    for relationship in customizations.iterfind("EntityRelationships/EntityRelationship"):
        referencing = (relationship.findtext("ReferencingEntityName") or "").lower()
        attribute = (relationship.findtext("ReferencingAttributeName") or "").lower()
        referenced = (relationship.findtext("ReferencedEntityName") or "").lower()
        result[(referencing, attribute)] = referenced
    return result


def _table_from_xml(entity: ET.Element, lookups: Mapping[tuple[str, str], str]) -> TableSpec:
    info = entity.find("EntityInfo/entity")
    if info is None:
        raise SolutionFileError("The solution file is invalid: an Entity has no EntityInfo/entity.")
    schema = str(info.get("Name") or entity.findtext("Name") or "")
    logical = schema.lower()
    columns: list[Column] = []
    primary_name = ""
    for attribute in info.iterfind("attributes/attribute"):
        name = (attribute.findtext("LogicalName") or "").lower()
        kind_text = (attribute.findtext("Type") or "").lower()
        if kind_text in ("primarykey", "owner", "state", "status"):
            continue  # system columns: every table gets them
        kind = _XML_TYPES.get(kind_text)
        if kind is None:
            raise SolutionFileError(
                f"The solution file is invalid: {logical}.{name} has the unknown type '{kind_text}'."
            )
        display = ""
        label = attribute.find("displaynames/displayname")
        if label is not None:
            display = str(label.get("description") or "")
        max_length = attribute.findtext("MaxLength")
        if kind is Kind.DATETIME and (attribute.findtext("Format") or "").lower() == "date":
            kind = Kind.DATE
        if kind is Kind.LOOKUP:
            target = lookups.get((logical, name))
            if target is None:
                raise SolutionFileError(
                    f"The solution file is invalid: the lookup {logical}.{name} has no relationship "
                    "naming its target."
                )
            column = lookup(name, target)
        else:
            length = int(max_length) if max_length else (2000 if kind_text in ("ntext", "memo") else None)
            column = Column(name, kind, max_length=length if kind is Kind.STRING else None)
        columns.append(
            replace(column, schema_name=str(attribute.get("PhysicalName") or name), display_name=display)
        )
        if "PrimaryName" in (attribute.findtext("DisplayMask") or ""):
            primary_name = name
    keys = [
        tuple((n.text or "").lower() for n in key.iterfind("EntityKeyAttributes/AttributeName"))
        for key in info.iterfind("EntityKeys/EntityKey")
    ]
    localized = info.find("LocalizedNames/LocalizedName")
    collection = info.find("LocalizedCollectionNames/LocalizedCollectionName")
    return TableSpec(
        logical_name=logical,
        schema_name=schema,
        entity_set=(info.findtext("EntitySetName") or "").strip(),
        display_name=str(localized.get("description")) if localized is not None else schema,
        display_collection_name=str(collection.get("description"))
        if collection is not None
        else plural(schema),
        primary_name=primary_name,
        columns=columns,
        keys=keys,
        user_owned=(info.findtext("OwnershipTypeMask") or "UserOwned") == "UserOwned",
        change_tracking=(info.findtext("ChangeTrackingEnabled") or "0").strip() == "1",
    )


def _forms_from_xml(entity: ET.Element) -> list[dict[str, Any]]:
    logical = str(entity.findtext("Name") or "").lower()
    result = []
    for forms in entity.iterfind("FormXml/forms"):
        form_type = FORM_TYPES.get(str(forms.get("type")), 2)
        for system_form in forms.iterfind("systemform"):
            form_id = str(uuid.UUID((system_form.findtext("formid") or "").strip("{} ")))
            label = system_form.find("LocalizedNames/LocalizedName")
            body = system_form.find("form")
            result.append(
                {
                    "systemformid": form_id,
                    "name": str(label.get("description")) if label is not None else form_id,
                    "objecttypecode": logical,
                    "type": form_type,
                    "formxml": ET.tostring(body, encoding="unicode") if body is not None else "",
                }
            )
    return result


def _column_from_api(body: Any) -> Column:
    if not isinstance(body, Mapping):
        raise errors.bad_request("Each attribute must be an AttributeMetadata object.")
    # `ComplexStringAttributeMetadata` etc.: the same definitions, as `CreateEntities` takes them.
    odata_type = str(body.get("@odata.type") or "").lstrip("#").removeprefix("Microsoft.Dynamics.CRM.")
    odata_type = odata_type.removeprefix("Complex")
    schema = _required(body, "SchemaName", odata_type or "AttributeMetadata")
    if odata_type == "LookupAttributeMetadata":
        raise errors.bad_request(
            "A lookup column is created with its relationship (POST RelationshipDefinitions with a "
            "OneToManyRelationshipMetadata), which the sandbox does not implement.",
            "0x80048d19",
        )
    kind = _API_TYPES.get(odata_type)
    if kind is None:
        raise errors.bad_request(
            f"The sandbox cannot create attributes of type '{odata_type or '(no @odata.type)'}' "
            f"(supported: {', '.join(sorted(_API_TYPES))})."
        )
    max_length = body.get("MaxLength")
    if kind is Kind.STRING:
        length = (
            int(max_length)
            if isinstance(max_length, int)
            else (2000 if odata_type == "MemoAttributeMetadata" else 100)
        )
    else:
        length = None
    choices = None
    if kind is Kind.CHOICE:
        options = ((body.get("OptionSet") or {}).get("Options")) or []
        choices = {int(o["Value"]): _label_text(o.get("Label")) for o in options if isinstance(o, Mapping)}
    if kind is Kind.DATETIME and str(body.get("Format") or "") == "DateOnly":
        kind = Kind.DATE
    return Column(
        schema.lower(),
        kind,
        max_length=length,
        choices=choices,
        schema_name=schema,
        display_name=_label_text(body.get("DisplayName")),
    )


def _required(body: Mapping[str, Any], name: str, type_name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise errors.bad_request(f"{type_name} needs '{name}'.")
    return value.strip()


def _label_text(label: Any) -> str:
    if not isinstance(label, Mapping):
        return ""
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and user.get("Label"):
        return str(user["Label"])
    for item in label.get("LocalizedLabels") or []:
        if isinstance(item, Mapping) and item.get("Label"):
            return str(item["Label"])
    return ""


def plural(name: str) -> str:
    """Dataverse's collection name for a new table (`new_bankaccount` -> `new_bankaccounts`)."""
    if name.endswith(("s", "x", "z", "ch", "sh")):
        return name + "es"
    if name.endswith("y") and len(name) > 1 and name[-2].lower() not in "aeiou":
        return name[:-1] + "ies"
    return name + "s"


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        raise SolutionFileError(f"The solution file is invalid: '{text}' is not a version.") from None
