"""The service document and `$metadata` (EDMX, OData CSDL v4) of the sandbox's API v2.0.

Both are generated from the entity definitions the sandbox serves (`devstack/bc/entities.py`), so a
schema-driven client sees exactly the sets, fields, keys and navigation properties the data has. As in
BC, the entity types are in the namespace `Microsoft.NAV`, keyed by `id` (the record's SystemId), and
every set but `companies` and `subscriptions` is reached through a company:
`companies(<id>)/customers` is the containment navigation property `customers` of `company`.

Property facets follow BC's table fields: text has its `MaxLength`, value types (numbers, booleans,
GUIDs, dates) are `Nullable="false"` (AL values are never null); text is nullable and a null is stored
as empty text (see `store._null_as_default`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from xml.sax.saxutils import quoteattr

from devstack.bc.entities import (
    BOOL,
    COMPANIES,
    COMPUTED_SETS,
    CONTACTS_INFORMATION,
    CUSTOMER_FINANCIAL_DETAIL,
    DATE,
    DATETIME,
    ENTITY_SETS,
    GUID,
    NUM,
    EntitySet,
    Field,
)

NAMESPACE = "Microsoft.NAV"
_EDM = {
    "str": "Edm.String",
    NUM: "Edm.Decimal",
    BOOL: "Edm.Boolean",
    GUID: "Edm.Guid",
    DATE: "Edm.Date",
    DATETIME: "Edm.DateTimeOffset",
}

# Navigation properties beyond the company's sets: name -> (target entity set, collection?).
_NAVIGATION: dict[str, tuple[EntitySet, bool]] = {
    "customerFinancialDetail": (CUSTOMER_FINANCIAL_DETAIL, False),
    "contactsInformation": (CONTACTS_INFORMATION, True),
    "salesOrderLines": (ENTITY_SETS["salesOrderLines"], True),
}


def type_name(entity: EntitySet) -> str:
    """The unqualified EDM type name (`customer` for `customers`)."""
    return entity.type_name.removeprefix(NAMESPACE + ".")


def _key(entity: EntitySet) -> str:
    if entity is CONTACTS_INFORMATION:
        return "contactId"  # page 30072's ODataKeyFields
    return "id"


def _property(spec: Field) -> str:
    edm = _EDM.get(spec.kind, "Edm.String")
    attrs = f'Name="{spec.name}" Type="{edm}"'
    if edm == "Edm.Decimal":
        attrs += ' Scale="Variable"'
    if edm == "Edm.String":
        if spec.max_length is not None:
            attrs += f' MaxLength="{spec.max_length}"'
    else:
        attrs += ' Nullable="false"'
    return f"<Property {attrs} />"


def _entity_type(entity: EntitySet, navigation: Iterable[tuple[str, EntitySet, bool]]) -> str:
    parts = [f'<EntityType Name="{type_name(entity)}">', f'<Key><PropertyRef Name="{_key(entity)}" /></Key>']
    parts += [_property(spec) for spec in entity.fields]
    for name, target, collection in navigation:
        target_type = f"{NAMESPACE}.{type_name(target)}"
        target_type = f"Collection({target_type})" if collection else target_type
        parts.append(f'<NavigationProperty Name="{name}" Type="{target_type}" ContainsTarget="true" />')
    parts.append("</EntityType>")
    return "".join(parts)


def _company_sets() -> list[EntitySet]:
    return [*ENTITY_SETS.values(), *COMPUTED_SETS.values()]


@lru_cache(maxsize=1)
def edmx() -> str:
    """The `$metadata` document (the same on every call: the definitions are fixed)."""
    types = [_entity_type(COMPANIES, ((e.name, e, True) for e in _company_sets()))]
    for entity in _company_sets():
        navigation = [(name, *_NAVIGATION[name]) for name in entity.expands]
        types.append(_entity_type(entity, navigation))
    types.append(_entity_type(CUSTOMER_FINANCIAL_DETAIL, ()))
    container = (
        '<EntityContainer Name="default">'
        f'<EntitySet Name="companies" EntityType="{NAMESPACE}.company" />'
        "</EntityContainer>"
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">'
        "<edmx:DataServices>"
        f'<Schema Namespace={quoteattr(NAMESPACE)} xmlns="http://docs.oasis-open.org/odata/ns/edm">'
        + "".join(types)
        + container
        + "</Schema></edmx:DataServices></edmx:Edmx>"
    )


def service_document(service_root: str) -> dict[str, object]:
    """The service document at the API root: the entity sets of the container (only `companies`)."""
    return {
        "@odata.context": f"{service_root}/$metadata",
        "value": [{"name": "companies", "kind": "EntitySet", "url": "companies"}],
    }
