"""The Sales-side Dataverse solution: its source in `solution/`, packing it into an importable zip, and
reading what a packed zip declares.

`solution/` is kept in the layout Microsoft's SolutionPackager (`pac solution unpack`) produces:
`Other/Solution.xml` (the manifest: unique name, version, publisher), `Other/Customizations.xml` (the
skeleton), `Other/Relationships/<table>.xml`, one folder per table `Entities/<SchemaName>/Entity.xml`
with its forms under `FormXml/<type>/{formid}.xml`, and `Roles/<name>.xml`. Packing merges them into
the three files of a solution zip (`solution.xml`, `customizations.xml`, `[Content_Types].xml`), as
the packager does (https://learn.microsoft.com/power-platform/alm/solution-packager-tool).

The zip is deterministic: the same source gives the same bytes (fixed entry order and timestamps), so
the version in `Other/Solution.xml` is the only thing set-up needs to compare.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from shared.errors import ServiceError

SOLUTION_DIR = Path(__file__).resolve().parents[2] / "solution"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ET.register_namespace("xsi", XSI)
CONTENT_TYPES = (
    '<?xml version="1.0" encoding="utf-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
    'content-types"><Default Extension="xml" ContentType="application/octet-stream" /></Types>'
)
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's earliest time: no build time leaks into the bytes
# The three security roles, by the names the solution gives them (Roles/*.xml).
ROLE_ADMINISTRATOR = "Integration Administrator"
ROLE_USER = "Integration User"
ROLE_AVAILABILITY = "Product Availability User"


class SolutionSourceError(ValueError, ServiceError):
    """The solution source or a zip is not what the packer or importer expects; says which file."""


@dataclass(frozen=True)
class SolutionInfo:
    unique_name: str
    version: str
    publisher: str
    prefix: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return version_tuple(self.version)

    def zip_name(self) -> str:
        return f"{self.unique_name}_{self.version.replace('.', '_')}.zip"


@dataclass(frozen=True)
class Declared:
    """What a solution declares: columns per table (logical names), keys, roles with privileges."""

    columns: dict[str, set[str]] = field(default_factory=dict)
    new_tables: set[str] = field(default_factory=set)
    keys: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    roles: dict[str, set[str]] = field(default_factory=dict)
    forms: dict[str, list[str]] = field(default_factory=dict)  # table -> form types


def version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).strip().split("."))
    except ValueError:
        raise SolutionSourceError(
            f"'{text}' is not a solution version (major.minor.build.revision)"
        ) from None


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise SolutionSourceError(f"{path}: {exc}") from None


def read_info(source: Path = SOLUTION_DIR) -> SolutionInfo:
    return _info(_parse(source / "Other" / "Solution.xml"), str(source / "Other" / "Solution.xml"))


def _info(root: ET.Element, where: str) -> SolutionInfo:
    manifest = root.find("SolutionManifest")
    if manifest is None:
        raise SolutionSourceError(f"{where}: no SolutionManifest")
    values = {
        "unique_name": manifest.findtext("UniqueName"),
        "version": manifest.findtext("Version"),
        "publisher": manifest.findtext("Publisher/UniqueName"),
        "prefix": manifest.findtext("Publisher/CustomizationPrefix"),
    }
    missing = [k for k, v in values.items() if not v]
    if missing:
        raise SolutionSourceError(f"{where}: missing {', '.join(missing)}")
    info = SolutionInfo(**{k: str(v).strip() for k, v in values.items()})
    version_tuple(info.version)
    return info


def _tostring(root: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(
        root, encoding="utf-8", xml_declaration=False
    )


def _sorted_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern), key=lambda p: p.as_posix().lower()) if folder.is_dir() else []


def customizations_xml(source: Path = SOLUTION_DIR) -> bytes:
    """`customizations.xml`: the skeleton with the tables (and their forms), roles and relationships."""
    root = _parse(source / "Other" / "Customizations.xml")
    entities, roles, relationships = (root.find(n) for n in ("Entities", "Roles", "EntityRelationships"))
    if entities is None or roles is None or relationships is None:
        raise SolutionSourceError(
            f"{source / 'Other' / 'Customizations.xml'}: needs <Entities>, <Roles> and <EntityRelationships>"
        )
    for entity_file in _sorted_files(source / "Entities", "*/Entity.xml"):
        entity = _parse(entity_file)
        form_xml = entity.find("FormXml")
        if form_xml is None:
            form_xml = ET.SubElement(entity, "FormXml")
        for type_folder in _sorted_files(entity_file.parent / "FormXml", "*"):
            forms = ET.SubElement(form_xml, "forms", {"type": type_folder.name})
            for form_file in _sorted_files(type_folder, "*.xml"):
                forms.extend(_parse(form_file).findall("systemform"))
        entities.append(entity)
    for role_file in _sorted_files(source / "Roles", "*.xml"):
        roles.append(_parse(role_file))
    for relationship_file in _sorted_files(source / "Other" / "Relationships", "*.xml"):
        relationships.extend(_parse(relationship_file).findall("EntityRelationship"))
    return _tostring(root)


def pack(source: Path = SOLUTION_DIR) -> bytes:
    """The importable solution zip, byte for byte the same for the same source."""
    read_info(source)  # a broken manifest fails here, naming the file
    files = {
        "[Content_Types].xml": CONTENT_TYPES.encode(),
        "customizations.xml": customizations_xml(source),
        "solution.xml": _tostring(_parse(source / "Other" / "Solution.xml")),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            entry = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.create_system = 0
            entry.external_attr = 0o644 << 16
            archive.writestr(entry, files[name], compresslevel=9)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ reading a zip
def open_zip(data: bytes) -> tuple[SolutionInfo, ET.Element]:
    """The manifest and the parsed `customizations.xml` of a solution zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
            for needed in ("solution.xml", "customizations.xml"):
                if needed not in names:
                    raise SolutionSourceError(f"the solution file has no {needed}")
            manifest = ET.fromstring(archive.read("solution.xml"))
            customizations = ET.fromstring(archive.read("customizations.xml"))
    except zipfile.BadZipFile as exc:
        raise SolutionSourceError(f"the solution file is not a zip: {exc}") from None
    except ET.ParseError as exc:
        raise SolutionSourceError(f"the solution file's XML is not well formed: {exc}") from None
    return _info(manifest, "solution.xml"), customizations


def declared(data: bytes) -> Declared:
    """What a packed solution declares (logical names), for the checks that it covers what we write."""
    _, root = open_zip(data)
    result = Declared()
    for entity in root.iterfind("Entities/Entity"):
        info = entity.find("EntityInfo/entity")
        if info is None:
            continue
        table = str(info.get("Name") or "").lower()
        result.columns[table] = {
            str(a.findtext("LogicalName") or "").lower() for a in info.iterfind("attributes/attribute")
        }
        if info.findtext("EntitySetName"):
            result.new_tables.add(table)
        result.keys[table] = [
            tuple(str(n.text or "").lower() for n in key.iterfind("EntityKeyAttributes/AttributeName"))
            for key in info.iterfind("EntityKeys/EntityKey")
        ]
        result.forms[table] = [str(f.get("type")) for f in entity.iterfind("FormXml/forms")]
    for role in root.iterfind("Roles/Role"):
        result.roles[str(role.get("name"))] = {
            str(p.get("name")) for p in role.iterfind("RolePrivileges/RolePrivilege")
        }
    return result


def missing_columns(declared_columns: dict[str, set[str]], written: Iterable[tuple[str, str]]) -> list[str]:
    """`table.column` pairs written by the service that the solution does not declare, nor the
    standard table has (callers pass only `bcs_` columns, which only the solution can add)."""
    return sorted(f"{t}.{c}" for t, c in written if c not in declared_columns.get(t, set()))
