"""Metadata generated from the sandbox's own table definitions (`schema.py`), so it cannot disagree
with the data: the service document, `$metadata` (CSDL) and `EntityDefinitions` with `Attributes`,
typed attribute casts (`PicklistAttributeMetadata` with `OptionSet`) and `Keys`.

Shapes follow Microsoft's docs: https://learn.microsoft.com/power-apps/developer/data-platform/webapi/query-metadata-web-api
and the metadata entity type reference (EntityMetadata, AttributeMetadata, EntityKeyMetadata).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import escape

from devstack.dataverse.schema import Column, Kind, Table, single_navigation

_NAMESPACE = uuid.UUID("6f1f2a4e-9d5b-4c1a-8e0b-5a1d0c0ffee5")
MEMO_LENGTH = 2000  # text columns this long or longer are Memo columns (String is at most 4,000)


def metadata_id(*parts: str) -> str:
    """A stable MetadataId: the same table or column always has the same id."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def label(text: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": 1033}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def _display(name: str) -> str:
    return name.removeprefix("bcs_").replace("_", " ").title()


def entity(table: Table) -> dict[str, Any]:
    """EntityMetadata: the properties clients read (no navigation properties)."""
    return {
        "MetadataId": metadata_id(table.logical_name),
        "LogicalName": table.logical_name,
        "SchemaName": table.logical_name,
        "EntitySetName": table.entity_set,
        "LogicalCollectionName": table.entity_set,
        "CollectionSchemaName": table.entity_set,
        "PrimaryIdAttribute": table.primary_key,
        "PrimaryNameAttribute": table.primary_name,
        "DisplayName": label(_display(table.logical_name)),
        "DisplayCollectionName": label(_display(table.entity_set)),
        "IsCustomEntity": table.logical_name.startswith("bcs_"),
        "IsActivity": False,
        "TableType": "Standard",
        "OwnershipType": "UserOwned" if "_ownerid_value" in table.columns else "OrganizationOwned",
        "ChangeTrackingEnabled": table.change_tracking,
        # A BooleanManagedProperty: clients (Airbyte's Dataverse source) read `.Value` before relying on
        # delta links. Tables without change tracking here are system tables that cannot enable it.
        "CanChangeTrackingBeEnabled": {
            "Value": table.change_tracking,
            "CanBeChanged": table.change_tracking,
            "ManagedPropertyLogicalName": "canchangetrackingbeenabled",
        },
    }


# Kind -> (AttributeType, AttributeTypeName, metadata type)
_TYPES: dict[Kind, tuple[str, str, str]] = {
    Kind.STRING: ("String", "StringType", "StringAttributeMetadata"),
    Kind.INT: ("Integer", "IntegerType", "IntegerAttributeMetadata"),
    Kind.BIGINT: ("BigInt", "BigIntType", "BigIntAttributeMetadata"),
    Kind.DECIMAL: ("Decimal", "DecimalType", "DecimalAttributeMetadata"),
    Kind.MONEY: ("Money", "MoneyType", "MoneyAttributeMetadata"),
    Kind.BOOL: ("Boolean", "BooleanType", "BooleanAttributeMetadata"),
    Kind.DATETIME: ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
    Kind.DATE: ("DateTime", "DateTimeType", "DateTimeAttributeMetadata"),
    Kind.GUID: ("Uniqueidentifier", "UniqueidentifierType", "UniqueIdentifierAttributeMetadata"),
    Kind.CHOICE: ("Picklist", "PicklistType", "PicklistAttributeMetadata"),
    Kind.LOOKUP: ("Lookup", "LookupType", "LookupAttributeMetadata"),
}


def attribute_type(table: Table, column: Column) -> tuple[str, str, str]:
    if column.kind is Kind.STRING and (column.max_length or 0) >= MEMO_LENGTH:
        return ("Memo", "MemoType", "MemoAttributeMetadata")
    if column.kind is Kind.CHOICE and column.name == "statecode":
        return ("State", "StateType", "StateAttributeMetadata")
    if column.kind is Kind.CHOICE and column.name == "statuscode":
        return ("Status", "StatusType", "StatusAttributeMetadata")
    if column.kind is Kind.LOOKUP and column.name == "ownerid":
        return ("Owner", "OwnerType", "LookupAttributeMetadata")
    if column.kind is Kind.LOOKUP and column.per_target_navigation:
        return ("Customer", "CustomerType", "LookupAttributeMetadata")
    return _TYPES[column.kind]


def attribute(table: Table, column: Column) -> dict[str, Any]:
    """AttributeMetadata of one column, with the derived type's own properties."""
    kind, type_name, odata_type = attribute_type(table, column)
    result: dict[str, Any] = {
        "@odata.type": f"#Microsoft.Dynamics.CRM.{odata_type}",
        "MetadataId": metadata_id(table.logical_name, column.name),
        "LogicalName": column.name,
        "SchemaName": column.name,
        "EntityLogicalName": table.logical_name,
        "AttributeType": kind,
        "AttributeTypeName": {"Value": type_name},
        "DisplayName": label(_display(column.name)),
        "IsPrimaryId": column.name == table.primary_key,
        "IsPrimaryName": column.name == table.primary_name,
        "IsCustomAttribute": column.name.startswith("bcs_"),
        "IsValidForRead": True,
        "IsValidForCreate": not column.read_only,
        "IsValidForUpdate": not column.read_only and column.name != table.primary_key,
    }
    if column.kind is Kind.STRING:
        result["MaxLength"] = column.max_length
    # DateTimeAttributeMetadata.DateTimeBehavior: how the column stores time zones (docs: "Behavior and
    # format of the date and time column"); the sandbox's date-and-time columns are UserLocal, as
    # Dataverse's createdon/modifiedon, and its date columns DateOnly.
    if column.kind is Kind.DATETIME:
        result["Format"] = "DateAndTime"
        result["DateTimeBehavior"] = {"Value": "UserLocal"}
    if column.kind is Kind.DATE:
        result["Format"] = "DateOnly"
        result["DateTimeBehavior"] = {"Value": "DateOnly"}
    if column.kind is Kind.LOOKUP:
        result["Targets"] = list(column.targets)
    return result


def option_set(table: Table, column: Column) -> dict[str, Any]:
    """The (local) OptionSet of a choice column: what `$expand=OptionSet` returns."""
    kind, _, _ = attribute_type(table, column)
    options = []
    for value, text in (column.choices or {}).items():
        options.append({"Value": value, "Label": label(text)})
    return {
        "MetadataId": metadata_id(table.logical_name, column.name, "optionset"),
        "Name": f"{table.logical_name}_{column.name}",
        "IsGlobal": False,
        "OptionSetType": kind,
        "Options": options,
    }


def key(table: Table, columns: tuple[str, ...]) -> dict[str, Any]:
    name = f"{table.logical_name}_{'_'.join(columns)}_key"
    return {
        "MetadataId": metadata_id(table.logical_name, "key", *columns),
        "LogicalName": name,
        "SchemaName": name,
        "EntityLogicalName": table.logical_name,
        "KeyAttributes": list(columns),
        "DisplayName": label(" ".join(_display(c) for c in columns)),
        "EntityKeyIndexStatus": "Active",
    }


def columns_of(table: Table) -> list[Column]:
    return list(table.columns.values())


# --- CSDL -----------------------------------------------------------------------------------------

_EDM = {
    Kind.STRING: "Edm.String",
    Kind.INT: "Edm.Int32",
    Kind.BIGINT: "Edm.Int64",
    Kind.DECIMAL: "Edm.Decimal",
    Kind.MONEY: "Edm.Decimal",
    Kind.BOOL: "Edm.Boolean",
    Kind.DATETIME: "Edm.DateTimeOffset",
    Kind.DATE: "Edm.Date",
    Kind.GUID: "Edm.Guid",
    Kind.CHOICE: "Edm.Int32",
    Kind.LOOKUP: "Edm.Guid",
}


def csdl(tables: Iterable[Table]) -> str:
    """`$metadata`: an OData v4 CSDL document with an EntityType and EntitySet per sandbox table."""
    tables = list(tables)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
        "<edmx:DataServices>",
        '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" '
        'xmlns="http://docs.oasis-open.org/odata/ns/edm">',
    ]
    for table in tables:
        lines.append(f'<EntityType Name="{escape(table.logical_name)}">')
        lines.append(f'<Key><PropertyRef Name="{escape(table.primary_key)}" /></Key>')
        for column in table.columns.values():
            lines.append(f'<Property Name="{escape(column.wire_name)}" Type="{_EDM[column.kind]}" />')
        for name, (_, target) in single_navigation(table).items():
            lines.append(
                f'<NavigationProperty Name="{escape(name)}" Type="mscrm.{escape(target)}" Nullable="false" />'
            )
        lines.append("</EntityType>")
    lines.append('<EntityContainer Name="System">')
    for table in tables:
        lines.append(
            f'<EntitySet Name="{escape(table.entity_set)}" '
            f'EntityType="Microsoft.Dynamics.CRM.{escape(table.logical_name)}" />'
        )
    lines += ["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"]
    return "\n".join(lines)
