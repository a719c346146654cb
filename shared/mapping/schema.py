"""The mapping file's schema: pydantic models validated at load time, exported as JSON Schema.

One `MappingSet` per file. It holds settings and table mappings of two kinds:
- `entity`: records that sync (BC entity set <-> Dataverse table), with field mappings;
- `option_set`: a BC code table (payment terms, shipment methods) mapped to a Dataverse choice column by
  a value map. Nothing syncs for it; entity fields refer to it through `lookup`.

Cross-references (lookups, dependencies, ownership) are checked in `MappingSet`, so a file that loads is
consistent. The person-ownership owner field is generated here from a mapping's `owner` section, so the
rest of the code sees it as an ordinary field mapping.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, model_validator

Side = Literal["bc", "dv"]
Direction = Literal["bidirectional", "to_dataverse", "to_bc"]
ConflictPolicy = Literal["none", "bc_wins", "dataverse_wins", "newest_wins"]
DeletionPolicy = Literal["none", "remove_coupling", "restore", "propagate"]
FieldType = Literal["text", "number", "boolean", "guid", "date", "datetime", "person_name"]
Scalar = str | int | float | bool | None

OWNER_FIELD_KEY = "owner"


# BC entity sets a company contact can be related to, with the `relatedType` contactsInformation gives them.
COMPANY_CONTACT_RELATIONS = {"customers": "Customer", "vendors": "Vendor"}


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: refuse them so a misspelt option cannot be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FilterClause(_Strict):
    """One condition of a side's scope filter; all clauses of a side must hold (AND)."""

    field: str = Field(description="Field (BC) or column (Dataverse; lookups as `_x_value`).")
    op: Literal["eq", "ne", "gt", "ge", "lt", "le"] = "eq"
    value: Scalar = Field(description="Literal to compare with; null means empty.")


class FieldMapping(_Strict):
    """One mapped field: a BC field and a Dataverse column, or a constant written to one side."""

    key: str = Field(
        "",
        description="Name of this field mapping in snapshots, logs and errors. "
        "Defaults to the BC field name (or the Dataverse column for a constant to Dataverse).",
    )
    bc: str | None = Field(None, description="BC API v2.0 field name.")
    dv: str | None = Field(
        None, description="Dataverse column logical name; for lookups the column (`ownerid`), not `_x_value`."
    )
    direction: Direction = "bidirectional"
    type: FieldType = Field(
        "text",
        description="How values are normalised and compared. `person_name`: a full name; written to "
        "Dataverse as firstname/lastname, read from `dv` (e.g. fullname).",
    )
    constant: Scalar = Field(
        None,
        description="Write this value to the target side (the side `direction` points to); "
        "give only that side's field. Set the key explicitly (even to null) to use it.",
    )
    value_map: dict[str, str | int | bool] | None = Field(
        None, description="BC value -> Dataverse value. Unmapped values fail the record, naming the value."
    )
    lookup: str | None = Field(
        None,
        description="Name of the mapping whose couplings (entity) or value map (option_set) translate "
        "this field: BC holds that mapping's `bc.key`, Dataverse the coupled record's id or option value.",
    )
    dv_navigation: str | None = Field(
        None,
        description="Navigation property for `@odata.bind` when it differs from `dv` "
        "(customer lookups: `parentcustomerid_account`).",
    )
    clear_on_failed_lookup: bool = Field(
        False, description="Write an empty value instead of failing when the lookup target is not coupled."
    )
    bc_company_contact: bool = Field(
        False,
        description="BC holds the number of the lookup target's company contact (a person contact's "
        "`companyNumber`), not the target's key: BC links a company contact to its customer or vendor by "
        "contact business relation, read from `contactsInformation`. Only for lookups of customers or "
        "vendors.",
    )
    not_null: bool = Field(False, description="Never write an empty value to the target (e.g. ownerid).")
    conflict: ConflictPolicy | None = Field(
        None, description="Overrides the table mapping's conflict policy."
    )
    match_priority: int | None = Field(
        None,
        ge=1,
        description="Use for match-based coupling; fields with the same priority must all match; "
        "lower priorities are tried first.",
    )
    case_sensitive_match: bool = False
    trim: bool = Field(True, description="Strip leading/trailing whitespace from text before writing.")
    bc_max_length: int | None = Field(None, ge=1, description="Clamp text written to BC to this length.")
    dv_max_length: int | None = Field(
        None, ge=1, description="Clamp text written to Dataverse to this length."
    )
    decimals: int | None = Field(None, ge=0, description="Round numbers to this many decimals.")
    minimum: float | None = Field(None, description="Raise numbers below this to it (inventory: 0).")
    create_only: bool = Field(
        False, description="Only part of create bodies (e.g. a required default); never merged or updated."
    )
    failed_lookup_message: str | None = Field(
        None, description="Error text when the lookup is not coupled; `{value}` is replaced by the value."
    )
    price_list: bool = Field(
        False,
        description="A Dataverse lookup to the Sales price list of `settings.price_list` (bound as "
        "`<dv>@odata.bind: /pricelevels(<its id>)`), written like a constant: give only `dv` and "
        "`direction: to_dataverse`.",
    )
    bc_card_page: int | None = Field(
        None,
        ge=1,
        description="Write to Dataverse a link that opens the BC record on this card page of the BC web "
        "client (21 Customer Card, 26 Vendor Card, 5050 Contact Card, 30 Item Card), filtered on `No.` = "
        "the value of `bc` (the record's number). One-way to Dataverse.",
    )

    @model_validator(mode="after")
    def _check(self) -> FieldMapping:
        if self.bc is None and self.dv is None:
            raise ValueError("a field mapping needs `bc`, `dv` or both")
        if self.price_list and (
            self.bc is not None
            or self.direction != "to_dataverse"
            or "constant" in self.model_fields_set
            or self.lookup is not None
        ):
            raise ValueError(
                "`price_list` binds the Dataverse lookup `dv` to the price list of settings.price_list: "
                "give only `dv` and `direction: to_dataverse` (no `bc`, `constant` or `lookup`)"
            )
        if self.has_constant:
            target = self.target_of_constant
            source_field = self.dv if target == "bc" else self.bc
            if source_field is not None or (self.bc if target == "bc" else self.dv) is None:
                raise ValueError(
                    "a constant is written to one side: give only that side's field and a one-way direction "
                    "(`to_dataverse` with `dv`, or `to_bc` with `bc`)"
                )
        elif self.bc is None or self.dv is None:
            raise ValueError("a field mapping without `constant` needs both `bc` and `dv`")
        if self.clear_on_failed_lookup and self.not_null:
            raise ValueError("`clear_on_failed_lookup` and `not_null` contradict each other; pick one")
        if self.bc_company_contact and (self.lookup is None or self.bc is None):
            raise ValueError("`bc_company_contact` only applies to a field with a `lookup` and a `bc` field")
        if self.clear_on_failed_lookup and self.lookup is None:
            raise ValueError("`clear_on_failed_lookup` only applies to a field with a `lookup`")
        if self.lookup is not None and self.value_map is not None:
            raise ValueError(
                "give `lookup` or `value_map`, not both (an option_set mapping holds a value map)"
            )
        if self.value_map is not None:
            _check_injective(self.value_map, "value_map")
        if (
            self.type == "person_name"
            and self.direction != "to_bc"
            and self.dv in (None, "firstname", "lastname")
        ):
            raise ValueError(
                "`person_name` reads the full name from `dv` (e.g. fullname) and writes firstname/lastname"
            )
        if self.bc_card_page is not None and (
            self.direction != "to_dataverse" or self.bc is None or self.dv is None
        ):
            raise ValueError("`bc_card_page` writes a link to Dataverse: give `bc` (the number), `dv` and "
                             "`direction: to_dataverse`")  # fmt: skip
        if not self.key:
            object.__setattr__(self, "key", self.bc or self.dv)
        return self

    @property
    def has_constant(self) -> bool:
        # A price list lookup is a constant too: the one price list's id, on every sync.
        return "constant" in self.model_fields_set or self.price_list

    @property
    def target_of_constant(self) -> Side:
        if self.direction == "bidirectional":
            raise ValueError("a constant needs a one-way direction (`to_dataverse` or `to_bc`)")
        return "dv" if self.direction == "to_dataverse" else "bc"

    def writes_to(self, side: Side) -> bool:
        """Whether values may flow into `side` through this field."""
        return self.direction == "bidirectional" or self.direction == (
            "to_dataverse" if side == "dv" else "to_bc"
        )


class BcSide(_Strict):
    entity_set: str = Field(description="BC API v2.0 entity set, e.g. `customers`.")
    key: str = Field(
        "id",
        description="Field other mappings' lookups refer to this mapping by "
        "(`code` for salespeople/currencies, `number` for customers, `id` for GUID references).",
    )
    filter: list[FilterClause] = Field(default_factory=list, description="Records in scope (AND).")
    modified_field: str = "lastModifiedDateTime"


class DataverseSide(_Strict):
    table: str = Field(description="Logical name, e.g. `account`.")
    entity_set: str = Field(description="Web API entity set, e.g. `accounts`.")
    primary_key: str = Field("", description="Defaults to `<table>id`.")
    filter: list[FilterClause] = Field(default_factory=list, description="Records in scope (AND).")
    modified_field: str = "modifiedon"
    couple_by_column: str | None = Field(
        None,
        description="Column where a Sales user types the BC record's `bc.key` (its number) into an "
        "uncoupled record to couple it with that BC record; clearing it uncouples. Map it from `bc.key` "
        "too (to_dataverse) so it shows the coupled number.",
    )
    status_column: str | None = Field(
        None,
        description="Text column where the service says why the record is not in sync with BC (empty when "
        "it is), so a salesperson sees it on the form.",
    )

    @model_validator(mode="after")
    def _default_pk(self) -> DataverseSide:
        if not self.primary_key:
            object.__setattr__(self, "primary_key", f"{self.table}id")
        return self


class OwnerSection(_Strict):
    """Who owns the Dataverse records this mapping creates (see settings.ownership)."""

    salesperson_field: str | None = Field(
        None,
        description="Person model: the BC field holding the salesperson code; its coupled systemuser "
        "becomes `ownerid`. Without it, records are owned by the integration user.",
    )


class LinesBcSide(_Strict):
    entity_set: str = Field(
        description="BC API v2.0 line entity set, also the header's navigation property (`salesOrderLines`)."
    )
    parent_field: str = Field("documentId", description="The line field holding its header's `id`.")
    order_field: str | None = Field("sequence", description="The line field BC lists the lines by.")


class LinesDataverseSide(_Strict):
    table: str = Field(description="Logical name of the line table, e.g. `salesorderdetail`.")
    entity_set: str = Field(description="Web API entity set of the lines, e.g. `salesorderdetails`.")
    navigation: str = Field(
        description="The header's collection-valued navigation property to its lines (`order_details`)."
    )
    parent: str = Field(description="The line's lookup column to its header (`salesorderid`).")
    order_column: str | None = Field(
        "sequencenumber", description="The line column Dataverse lists the lines by."
    )
    primary_key: str = Field("", description="Defaults to `<table>id`.")

    @model_validator(mode="after")
    def _default_pk(self) -> LinesDataverseSide:
        if not self.primary_key:
            object.__setattr__(self, "primary_key", f"{self.table}id")
        return self


class LineAvailabilitySection(_Strict):
    """BC's quantity on hand of each line's item (API v2.0's `inventory`, in the item's base unit) shown
    on the Dataverse line while the document is being prepared: one BC read for all the document's
    items, one Dataverse batch for the lines whose value changed."""

    column: str = Field(description="The Dataverse line column that shows it (`bcs_availablequantity`).")
    when: list[FilterClause] = Field(
        default_factory=lambda: [FilterClause(field="statecode", op="le", value=1)],
        description="Dataverse documents it is shown on (default: draft and active).",
    )


class LinesSection(_Strict):
    """A document's lines: read, merged and written with their header as one unit. Each line pair has
    an identity of its own (kept on the document's coupling); header totals are never mapped (each
    system computes them from its lines)."""

    bc: LinesBcSide
    dataverse: LinesDataverseSide
    direction: Direction | None = Field(
        None,
        description="Defaults to the header mapping's direction; lines are created, changed and "
        "removed in this direction.",
    )
    fields: list[FieldMapping]
    availability: LineAvailabilitySection | None = Field(
        None, description="Show BC's quantity on hand of each line's item on the Dataverse line (quotes)."
    )


class FromQuoteSection(_Strict):
    """BC's "Auto Process Sales Quotes": a Sales order created from a won quote becomes the BC order made
    from the quote's coupled BC quote (BC's `makeOrder`: the order takes the quote's lines and its link
    to the quote; BC deletes the quote), instead of a new BC order, once the Sales order is in scope."""

    quote_mapping: str = Field(description="The quote document mapping (`SALES QUOTE`).")
    quote_column: str = Field("quoteid", description="The order's lookup column to its quote.")
    won: FilterClause = Field(
        default_factory=lambda: FilterClause(field="statecode", value=2),
        description="When a quote counts as won (Dataverse `statecode` 2).",
    )
    action: str = Field("makeOrder", description="The BC quote's bound action that makes it an order.")


class FulfilSection(_Strict):
    """BC's order status back to Sales: once BC has shipped the whole order, the Sales order is closed
    as Fulfilled with Dataverse's `FulfillSalesOrder` message (its state cannot be set directly)."""

    bc_field: str = Field("fullyShipped", description="BC's boolean field: the order is fully shipped.")
    status: int = Field(100001, description="The fulfilled order's status reason (100001 Complete).")


# Header columns each system computes from the lines (BC's totals, Dataverse's `totalamount`...): a
# document mapping that mapped them would write a value the other system recomputes at once.
COMPUTED_TOTALS_BC = ("totalAmountExcludingTax", "totalAmountIncludingTax", "totalTaxAmount")
COMPUTED_TOTALS_DV = ("totalamount", "totalamountlessfreight", "totallineitemamount", "totaltax")


class EntityMapping(_Strict):
    """Records that sync between a BC entity set and a Dataverse table."""

    name: str
    kind: Literal["entity"] = "entity"
    bc: BcSide
    dataverse: DataverseSide
    direction: Direction = "bidirectional"
    only_coupled: bool = Field(
        False, description="Uncoupled records are only matched, never created on the other side."
    )
    creates: Direction | None = Field(
        None,
        description="Which way records are created (default: the mapping's direction). Sales orders: "
        "`to_bc` (an order submitted in Sales becomes a BC order; BC's orders are not created in Sales).",
    )
    conflict: ConflictPolicy = "none"
    deletion: DeletionPolicy = "none"
    depends_on: list[str] = Field(
        default_factory=list, description="Mappings to sync first (lookup targets are added automatically)."
    )
    owner: OwnerSection | None = Field(None, description="Set Dataverse ownership on this mapping's records.")
    only_for_ownership: Literal["person", "team"] | None = Field(
        None, description="Active only under this ownership model (SALESPEOPLE: person)."
    )
    bc_blank_means_local_currency: bool = Field(
        False,
        description="Currencies: a blank BC code in a lookup means settings.bc_local_currency_code.",
    )
    fields: list[FieldMapping]
    lines: LinesSection | None = Field(
        None, description="Document lines synchronized with the header as one unit (see docs/mappings.md)."
    )
    from_quote: FromQuoteSection | None = Field(
        None, description="Orders made from won quotes (see docs/mappings.md#quotes-won-in-sales)."
    )
    fulfil: FulfilSection | None = Field(
        None, description="Close the Sales order as Fulfilled once BC has shipped it all."
    )
    _line_cache: EntityMapping | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> EntityMapping:
        if self.lines is not None:
            totals = [f.key for f in self.fields if f.bc in COMPUTED_TOTALS_BC or f.dv in COMPUTED_TOTALS_DV]
            if totals:
                raise ValueError(
                    f"document header totals are computed by each system from the lines and are never "
                    f"written; remove the fields {totals}"
                )
            self.line_mapping()  # the lines' own checks (keys, directions)
        keys = [f.key for f in self.fields]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"field keys must be unique; repeated: {duplicates} (set `key` on one of them)")
        for f in self.fields:
            if self.direction != "bidirectional" and f.direction != self.direction:
                raise ValueError(
                    f"field {f.key!r} has direction {f.direction} but the mapping is {self.direction}"
                )
        return self

    def field(self, key: str) -> FieldMapping:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(f"mapping {self.name} has no field {key!r}")

    def writes_to(self, side: Side) -> bool:
        return self.direction == "bidirectional" or self.direction == (
            "to_dataverse" if side == "dv" else "to_bc"
        )

    def creates_on(self, side: Side) -> bool:
        """Whether an uncoupled record of the other side is created on `side`."""
        creates = self.creates or self.direction
        return self.writes_to(side) and creates in (
            "bidirectional",
            "to_dataverse" if side == "dv" else "to_bc",
        )

    def line_mapping(self) -> EntityMapping:
        """The lines as an entity mapping of their own (never in the mapping set, never synced alone):
        `reconcile` merges each line pair with it, a line missing on one side is removed on the other."""
        if self.lines is None:
            raise KeyError(f"mapping {self.name} has no lines")
        cached = self._line_cache
        if cached is None:
            lines = self.lines
            cached = EntityMapping.model_validate(
                {
                    "name": f"{self.name} LINES",
                    "bc": {"entity_set": lines.bc.entity_set, "key": "id"},
                    "dataverse": {
                        "table": lines.dataverse.table,
                        "entity_set": lines.dataverse.entity_set,
                        "primary_key": lines.dataverse.primary_key,
                    },
                    "direction": lines.direction or self.direction,
                    "conflict": self.conflict,
                    "deletion": "propagate",
                    "fields": [f.model_dump(exclude_unset=True) for f in lines.fields],
                }
            )
            self._line_cache = cached
        return cached


class OptionSetBcSide(_Strict):
    entity_set: str = Field(description="BC code table, e.g. `paymentTerms`.")
    key: str = Field("id", description="Field that referring BC fields hold (`paymentTermsId` holds `id`).")
    code_field: str = Field("code", description="Field whose values are the keys of `value_map`.")


class OptionSetMapping(_Strict):
    """A BC code table mapped to a Dataverse choice column's values."""

    name: str
    kind: Literal["option_set"]
    bc: OptionSetBcSide
    dataverse_column: str = Field(description="The choice column, for documentation and error messages.")
    value_map: dict[str, int] = Field(description="BC code -> Dataverse option value.")

    @model_validator(mode="after")
    def _check(self) -> OptionSetMapping:
        _check_injective(self.value_map, "value_map")
        return self

    @property
    def needs_reference(self) -> bool:
        """Referring fields hold something other than the code, so BC's code table must be read."""
        return self.bc.key != self.bc.code_field


def _kind(value: Any) -> str:
    # `kind` may be left out for the common case, an entity mapping.
    if isinstance(value, dict):
        return str(value.get("kind", "entity"))
    return str(getattr(value, "kind", "entity"))


TableMapping = Annotated[
    Annotated[EntityMapping, Tag("entity")] | Annotated[OptionSetMapping, Tag("option_set")],
    Discriminator(_kind),
]


class Ownership(_Strict):
    model: Literal["person", "team"] = "person"
    team_id: str | None = Field(None, description="Team model: the owning team's id (teamid).")
    salespeople_mapping: str = Field("SALESPEOPLE", description="Person model: the systemuser mapping.")

    @model_validator(mode="after")
    def _check(self) -> Ownership:
        if self.model == "team":
            if self.team_id is None:
                raise ValueError("ownership model `team` needs `team_id` (the owning team's GUID)")
            try:
                uuid.UUID(self.team_id)
            except ValueError:
                raise ValueError(f"ownership.team_id {self.team_id!r} is not a GUID") from None
        return self


class PriceListSettings(_Strict):
    """The Sales price list (`pricelevel`) BC's item unit prices go to, as BC's connector keeps its
    default price list when extended prices are off. Set-up creates it in the local currency."""

    name: str = Field(
        "Business Central", min_length=1, max_length=100, description="The price list's name in Sales."
    )

    @property
    def id(self) -> str:
        """Its Dataverse id, derived from the name: set-up and every sync agree on it without a read."""
        return str(uuid.uuid5(PRICE_LIST_NAMESPACE, self.name.casefold()))


PRICE_LIST_NAMESPACE = uuid.UUID("5b0c1a9e-7a43-4c56-9d2e-6f1e0c0a9b71")


class MappingSettings(_Strict):
    bc_local_currency_code: str | None = Field(
        None, description="BC's local currency (a blank `currencyCode` means it), e.g. USD."
    )
    price_list: PriceListSettings | None = Field(
        None,
        description="The Sales price list item prices go to (fields with `price_list: true` bind to it); "
        "set-up creates it in the local currency (settings.bc_local_currency_code).",
    )
    ownership: Ownership = Field(default_factory=lambda: Ownership.model_validate({}))


class MappingSet(_Strict):
    """A whole mapping file."""

    version: Literal[1] = 1
    settings: MappingSettings = Field(default_factory=lambda: MappingSettings.model_validate({}))
    mappings: list[TableMapping]

    @model_validator(mode="after")
    def _check_and_expand(self) -> MappingSet:
        names = [m.name for m in self.mappings]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"mapping names must be unique; repeated: {duplicates}")
        model = self.settings.ownership.model
        active = {m.name: m for m in self.mappings if not _inactive(m, model)}
        for m in self.mappings:
            if not isinstance(m, EntityMapping):
                continue
            for dep in m.depends_on:
                if dep not in names:
                    raise ValueError(f"mapping {m.name}: depends_on names unknown mapping {dep!r}")
            if m.from_quote is not None:
                quote = active.get(m.from_quote.quote_mapping)
                if not isinstance(quote, EntityMapping) or quote.lines is None or m.lines is None:
                    raise ValueError(
                        f"mapping {m.name}: from_quote needs a document mapping with lines and "
                        f"quote_mapping naming another one, not {m.from_quote.quote_mapping!r}"
                    )
            for f in [*m.fields, *(m.lines.fields if m.lines else [])]:
                if f.lookup is not None and f.lookup not in names:
                    raise ValueError(
                        f"mapping {m.name}, field {f.key!r}: lookup names unknown mapping {f.lookup!r}"
                    )
                target = next((t for t in self.mappings if t.name == f.lookup), None)
                if f.bc_company_contact and not (
                    isinstance(target, EntityMapping) and target.bc.entity_set in COMPANY_CONTACT_RELATIONS
                ):
                    raise ValueError(
                        f"mapping {m.name}, field {f.key!r}: bc_company_contact needs a lookup of a "
                        f"mapping of BC {' or '.join(COMPANY_CONTACT_RELATIONS)}, not {f.lookup!r}"
                    )
                if f.lookup is not None and m.name in active and f.lookup not in active:
                    raise ValueError(
                        f"mapping {m.name}, field {f.key!r}: lookup {f.lookup!r} is not active "
                        f"under ownership model {model}"
                    )
        priced = [
            f"{m.name}.{f.key}"
            for m in self.entities()
            for f in [*m.fields, *(m.lines.fields if m.lines else [])]
            if f.price_list
        ]
        if priced and self.settings.price_list is None:
            raise ValueError(
                f"fields {priced} bind to the price list of settings.price_list, which is not set; add "
                "`price_list: {name: ...}` under settings"
            )
        salespeople = self.settings.ownership.salespeople_mapping
        owned = [m.name for m in self.entities() if m.owner is not None and m.owner.salesperson_field]
        if model == "person" and owned and salespeople not in active:
            raise ValueError(
                f"ownership model person needs the {salespeople!r} mapping (systemuser -> salespeople) "
                "for the "
                f"owner of {owned}; add it or switch to ownership model team"
            )
        expanded = [_with_owner_field(m, self.settings) for m in self.mappings]
        object.__setattr__(self, "mappings", expanded)
        self.sync_order()  # raises on a dependency cycle
        return self

    # -- queries -----------------------------------------------------------------------------------

    def get(self, name: str) -> EntityMapping | OptionSetMapping:
        for m in self.mappings:
            if m.name == name:
                return m
        raise KeyError(f"no mapping named {name!r}; known: {[m.name for m in self.mappings]}")

    def entity(self, name: str) -> EntityMapping:
        m = self.get(name)
        if not isinstance(m, EntityMapping):
            raise KeyError(f"mapping {name!r} is an option set, not an entity mapping")
        return m

    def entities(self) -> list[EntityMapping]:
        """Entity mappings active under the configured ownership model: the ones that sync."""
        model = self.settings.ownership.model
        return [m for m in self.mappings if isinstance(m, EntityMapping) and not _inactive(m, model)]

    def dependencies(self, name: str) -> list[str]:
        """Mappings `name` needs first: `depends_on` plus every lookup target, active ones only."""
        m = self.entity(name)
        active = {e.name for e in self.entities()} | {
            o.name for o in self.mappings if isinstance(o, OptionSetMapping)
        }
        fields = [*m.fields, *(m.lines.fields if m.lines else [])]
        deps = list(m.depends_on) + [f.lookup for f in fields if f.lookup is not None]
        return [d for d in dict.fromkeys(deps) if d in active and d != name]

    def sync_order(self) -> list[str]:
        """Active entity mappings, dependencies first (stable: file order among equals)."""
        entities = [m.name for m in self.entities()]
        order: list[str] = []
        visiting: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                cycle = " -> ".join([*visiting[visiting.index(name) :], name])
                raise ValueError(f"mapping dependencies form a cycle: {cycle}")
            visiting.append(name)
            for dep in self.dependencies(name):
                if dep in entities:
                    visit(dep)
            visiting.pop()
            order.append(name)

        for name in entities:
            visit(name)
        return order


def _inactive(m: EntityMapping | OptionSetMapping, model: str) -> bool:
    return isinstance(m, EntityMapping) and m.only_for_ownership not in (None, model)


def _with_owner_field(m: EntityMapping | OptionSetMapping, settings: MappingSettings) -> Any:
    """Person model: add `salesperson_field -> ownerid` through the salespeople mapping's couplings."""
    if not isinstance(m, EntityMapping) or m.owner is None or m.owner.salesperson_field is None:
        return m
    if settings.ownership.model != "person" or any(f.key == OWNER_FIELD_KEY for f in m.fields):
        return m
    owner = FieldMapping.model_validate(
        {
            "key": OWNER_FIELD_KEY,
            "bc": m.owner.salesperson_field,
            "dv": "ownerid",
            "direction": "to_dataverse",
            "lookup": settings.ownership.salespeople_mapping,
            "not_null": True,
            "failed_lookup_message": (
                "salesperson {value} is not coupled to a Dataverse user; "
                "couple salespeople or switch to team ownership"
            ),
        }
    )
    return m.model_copy(update={"fields": [*m.fields, owner]})


def _check_injective(value_map: dict[str, Any], what: str) -> None:
    # Values flow back (Dataverse -> BC) through the inverse map, which must be unambiguous.
    seen: dict[Any, str] = {}
    for code, value in value_map.items():
        if value in seen:
            raise ValueError(
                f"{what}: {seen[value]!r} and {code!r} both map to {value!r}; the map must be one-to-one"
            )
        seen[value] = code
