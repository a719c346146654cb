"""Loading mapping files: valid files load, broken ones fail naming file, line, path and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from shared.mapping import (
    DEFAULT_MAPPING_FILE,
    MappingFileError,
    MappingSet,
    load_mapping_set,
    parse_mapping_set,
)
from shared.mapping.export_schema import SCHEMA_FILE, schema_text

MINIMAL = """\
version: 1
settings:
  ownership: {model: team, team_id: e0000000-0000-0000-0000-000000000001}
mappings:
  - name: CURRENCY
    bc: {entity_set: currencies, key: code}
    dataverse: {table: transactioncurrency, entity_set: transactioncurrencies}
    direction: to_dataverse
    fields:
      - {bc: code, dv: isocurrencycode, direction: to_dataverse}
  - name: CUSTOMER
    bc: {entity_set: customers, key: number}
    dataverse: {table: account, entity_set: accounts}
    fields:
      - {bc: displayName, dv: name}
      - {bc: currencyCode, dv: transactioncurrencyid, lookup: CURRENCY}
"""


def load_error(text: str) -> MappingFileError:
    with pytest.raises(MappingFileError) as info:
        parse_mapping_set(textwrap.dedent(text), "mappings/test.yaml")
    return info.value


def test_minimal_file_loads_with_defaults() -> None:
    ms = parse_mapping_set(MINIMAL)
    customer = ms.entity("CUSTOMER")
    assert customer.direction == "bidirectional"
    assert customer.conflict == "none" and customer.deletion == "none"
    assert customer.dataverse.primary_key == "accountid"
    assert customer.field("displayName").direction == "bidirectional"
    assert ms.dependencies("CUSTOMER") == ["CURRENCY"]
    assert ms.sync_order() == ["CURRENCY", "CUSTOMER"]


def test_bad_value_names_file_line_path_and_reason() -> None:
    error = load_error(
        MINIMAL.replace("{bc: displayName, dv: name}", "{bc: displayName, dv: name, direction: both}")
    )
    (problem,) = error.problems
    assert problem.line == 15
    assert problem.path == "mappings[1](CUSTOMER).fields[0](displayName).direction"
    assert "'bidirectional', 'to_dataverse' or 'to_bc'" in problem.message
    assert str(error).startswith("invalid mapping file mappings/test.yaml:")
    assert "mappings/test.yaml:15: mappings[1](CUSTOMER).fields[0](displayName).direction" in str(error)


def test_unknown_key_is_refused() -> None:
    error = load_error(
        MINIMAL.replace(
            "direction: to_dataverse\n    fields", "direction: to_dataverse\n    conflcit: none\n    fields"
        )
    )
    assert error.problems[0].path == "mappings[0](CURRENCY).conflcit"
    assert error.problems[0].line == 9
    assert "unknown key" in error.problems[0].message


def test_unknown_lookup_target_is_refused_with_the_mapping_named() -> None:
    error = load_error(MINIMAL.replace("lookup: CURRENCY", "lookup: CURRENCIES"))
    assert "lookup names unknown mapping 'CURRENCIES'" in str(error)


def test_a_company_contact_lookup_must_target_customers_or_vendors() -> None:
    error = load_error(MINIMAL.replace("lookup: CURRENCY}", "lookup: CURRENCY, bc_company_contact: true}"))
    assert "bc_company_contact needs a lookup of a mapping of BC customers or vendors, not 'CURRENCY'" in str(
        error
    )
    plain = load_error(
        MINIMAL.replace(
            "{bc: displayName, dv: name}", "{bc: displayName, dv: name, bc_company_contact: true}"
        )
    )
    assert "`bc_company_contact` only applies to a field with a `lookup`" in str(plain)


def test_dependency_cycle_is_refused() -> None:
    text = MINIMAL.replace(
        "direction: to_dataverse\n    fields",
        "direction: to_dataverse\n    depends_on: [CUSTOMER]\n    fields",
    )
    assert "cycle: CURRENCY -> CUSTOMER -> CURRENCY" in str(load_error(text))


def test_yaml_syntax_error_names_the_line() -> None:
    error = load_error("mappings:\n  - name: [unclosed\n")
    assert error.problems[0].line is not None
    assert "not valid YAML" in error.problems[0].message


def test_duplicate_key_is_refused() -> None:
    error = load_error(MINIMAL.replace("key: number}", "key: number, key: id}"))
    assert error.problems[0].path == "key"
    assert error.problems[0].line == 12


def test_empty_and_missing_files() -> None:
    assert "empty" in str(load_error(""))
    with pytest.raises(MappingFileError, match="cannot read"):
        load_mapping_set(Path("/nonexistent/mapping.yaml"))


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("{bc: a, dv: b, clear_on_failed_lookup: true, not_null: true, lookup: CURRENCY}", "contradict"),
        ("{bc: a, dv: b, clear_on_failed_lookup: true}", "only applies to a field with a `lookup`"),
        ("{bc: a}", "needs both `bc` and `dv`"),
        ("{bc: a, dv: b, constant: 1, direction: to_dataverse}", "give only that side's field"),
        ("{dv: b, constant: 1}", "one-way direction"),
        ("{bc: a, dv: b, value_map: {X: 1, Y: 1}}", "both map to 1"),
        ("{bc: a, dv: b, lookup: CURRENCY, value_map: {X: 1}}", "not both"),
        ("{bc: displayName, dv: other}", "field keys must be unique"),
        ("{bc: a, dv: pricelevelid, price_list: true, direction: to_dataverse}", "give only `dv`"),
        ("{dv: pricelevelid, price_list: true}", "give only `dv` and `direction: to_dataverse`"),
        ("{dv: pricelevelid, price_list: true, direction: to_dataverse, constant: 1}", "no `bc`, `constant`"),
    ],
)
def test_field_rules(field: str, reason: str) -> None:
    text = MINIMAL.replace(
        "      - {bc: displayName, dv: name}\n", f"      - {{bc: displayName, dv: name}}\n      - {field}\n"
    )
    assert reason in str(load_error(text))


def test_field_direction_must_fit_a_one_way_mapping() -> None:
    text = MINIMAL.replace(
        "{bc: code, dv: isocurrencycode, direction: to_dataverse}", "{bc: code, dv: isocurrencycode}"
    )
    assert "the mapping is to_dataverse" in str(load_error(text))


def test_team_ownership_needs_a_team_guid() -> None:
    assert "needs `team_id`" in str(
        load_error(MINIMAL.replace(", team_id: e0000000-0000-0000-0000-000000000001", ""))
    )
    assert "is not a GUID" in str(
        load_error(MINIMAL.replace("e0000000-0000-0000-0000-000000000001", "sales-team"))
    )


def test_person_ownership_needs_the_salespeople_mapping() -> None:
    text = MINIMAL.replace("{model: team, team_id: e0000000-0000-0000-0000-000000000001}", "{model: person}")
    text = text.replace(
        "dataverse: {table: account, entity_set: accounts}",
        "dataverse: {table: account, entity_set: accounts}\n    owner: {salesperson_field: salespersonCode}",
    )
    assert "needs the 'SALESPEOPLE' mapping" in str(load_error(text))


def test_option_set_value_map_must_be_one_to_one() -> None:
    text = MINIMAL + textwrap.indent(
        "- {name: TERMS, kind: option_set, bc: {entity_set: paymentTerms}, "
        "dataverse_column: paymenttermscode, value_map: {A: 1, B: 1}}\n",
        "  ",
    )
    assert "one-to-one" in str(load_error(text))


def test_loaded_set_survives_a_dump_and_reload() -> None:
    ms = load_mapping_set()
    again = MappingSet.model_validate(ms.model_dump(exclude_unset=True))
    assert again == ms


def test_committed_json_schema_is_up_to_date() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "mappings/schema.json is stale: run python -m shared.mapping.export_schema"
    )


def test_json_schema_describes_the_file() -> None:
    schema = yaml.safe_load(schema_text())
    assert schema["required"] == ["mappings"]
    field_props = schema["$defs"]["FieldMapping"]["properties"]
    for key in (
        "bc",
        "dv",
        "direction",
        "constant",
        "value_map",
        "lookup",
        "clear_on_failed_lookup",
        "not_null",
        "conflict",
        "match_priority",
        "trim",
        "bc_max_length",
        "dv_max_length",
        "decimals",
    ):
        assert key in field_props
    assert DEFAULT_MAPPING_FILE.read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=./schema.json"
    )


def test_a_price_list_field_needs_the_price_list_setting_and_binds_to_its_id() -> None:
    field = "      - {key: pl, dv: pricelevelid, direction: to_dataverse, price_list: true}\n"
    text = MINIMAL.replace(
        "      - {bc: code, dv: isocurrencycode, direction: to_dataverse}\n",
        "      - {bc: code, dv: isocurrencycode, direction: to_dataverse}\n" + field,
    )
    assert "settings.price_list, which is not set" in str(load_error(text))
    ms = parse_mapping_set(
        text.replace("settings:\n", "settings:\n  price_list: {name: Web prices}\n"), "t.yaml"
    )
    from shared.mapping.values import constant_value, dv_entries, field_name

    assert ms.settings.price_list is not None
    price_list_id = ms.settings.price_list.id
    f = ms.entity("CURRENCY").field("pl")
    assert f.has_constant and field_name(ms, f, "dv") == "_pricelevelid_value"
    assert constant_value(ms, f) == price_list_id
    assert dv_entries(ms, f, price_list_id) == {"pricelevelid@odata.bind": f"/pricelevels({price_list_id})"}
    # The id is derived from the name alone: set-up and every sync agree on it without a read.
    other = parse_mapping_set(
        text.replace("settings:\n", "settings:\n  price_list: {name: WEB PRICES}\n"), "t.yaml"
    )
    assert other.settings.price_list is not None and other.settings.price_list.id == price_list_id
