"""Set-up's check of the choice values the mappings use (`shared.mapping.option_values`), on the
shipped mapping file and on hand-made metadata."""

from __future__ import annotations

from pathlib import Path

from shared.mapping.loader import load_mapping_set
from shared.mapping.option_values import OptionValue, casts_needed, option_problems, option_values

MAPPINGS = load_mapping_set(Path(__file__).parents[2] / "mappings" / "default.yaml")
VALUES = option_values(MAPPINGS)

# What a Dataverse environment offers (only the columns the default mappings touch).
OPTIONS: dict[str, dict[str, dict[int, str]]] = {
    "account": {
        "customertypecode": {1: "Competitor", 3: "Customer", 11: "Vendor"},
        "paymenttermscode": {1: "Net 30", 2: "2% 10, Net 30", 3: "Net 45", 4: "Net 60"},
        "address1_freighttermscode": {1: "FOB", 2: "No Charge"},
        "statecode": {0: "Active", 1: "Inactive"},
    },
    "product": {"producttypecode": {1: "Sales Inventory", 2: "Miscellaneous Charges"}},
    "salesorder": {"paymenttermscode": {1: "Net 30", 2: "2% 10, Net 30"}},
    "invoice": {
        "paymenttermscode": {1: "Net 30", 2: "2% 10, Net 30"},
        "statecode": {0: "Active", 1: "Closed", 2: "Paid", 3: "Canceled"},
    },
    "quote": {
        "paymenttermscode": {1: "Net 30", 2: "2% 10, Net 30"},
        "statecode": {0: "Draft", 1: "Active", 2: "Won", 3: "Closed"},
    },
}


def _find(mapping: str, column: str, value: int) -> OptionValue:
    return next(v for v in VALUES if (v.mapping, v.column, v.value) == (mapping, column, value))


def test_the_values_the_default_mappings_use_are_found() -> None:
    assert _find("CUSTOMER", "customertypecode", 3).source == "constant"
    assert _find("VENDOR", "customertypecode", 11).source == "constant"
    assert _find("ITEM-PRODUCT", "producttypecode", 1).table == "product"
    terms = _find("CUSTOMER", "paymenttermscode", 1)
    assert (terms.source, terms.choice_required) == ("option_set PAYMENT TERMS code '30 DAYS'", True)
    assert {v.table for v in VALUES if v.column == "paymenttermscode"} == {
        "account",
        "salesorder",
        "invoice",
        "quote",
    }
    assert _find("CUSTOMER", "address1_freighttermscode", 1).source == "option_set SHIPMENT METHOD code 'FOB'"
    paid = _find("POSTED INVOICE", "statecode", 2)
    assert (paid.field, paid.source) == ("payment", "value_map 'Paid'")
    assert _find("VENDOR", "customertypecode", 11) != _find("CUSTOMER", "customertypecode", 3)
    assert any(v.field == "filter" and v.table == "quote" and v.value == 1 for v in VALUES)
    # Numbers and booleans that are not options are left out or left to the metadata to judge.
    assert not any(v.column == "ispriceoverridden" for v in VALUES)
    assert _find("CURRENCY", "exchangerate", 1).choice_required is False


def test_casts_are_read_only_where_state_or_status_is_written() -> None:
    casts = casts_needed(VALUES)
    assert casts["account"] == ("PicklistAttributeMetadata", "StateAttributeMetadata")  # statecode filter
    assert casts["invoice"] == ("PicklistAttributeMetadata", "StateAttributeMetadata")
    assert casts["product"] == ("PicklistAttributeMetadata",)
    assert "uom" not in casts


def test_the_shipped_mappings_fit_an_environment_that_has_their_options() -> None:
    assert option_problems(VALUES, OPTIONS, mappings_file="mappings/default.yaml") == []


def test_a_value_the_column_lacks_is_named_with_mapping_column_value_and_the_options() -> None:
    options = {
        **OPTIONS,
        "account": {**OPTIONS["account"], "customertypecode": {1: "Competitor", 3: "Customer"}},
    }

    problems = option_problems(VALUES, options, mappings_file="mappings/default.yaml")

    # VENDOR's constant, and its Dataverse filter on the same value.
    assert [p.value.field for p in problems] == ["customertypecode", "filter"]
    problem = problems[0]
    assert (problem.value.mapping, problem.value.column, problem.value.value) == (
        "VENDOR",
        "customertypecode",
        11,
    )
    assert problem.detail == (
        "VENDOR writes 11 (the constant of field customertypecode) to account.customertypecode, which has no "
        "option 11; its options are 1 Competitor, 3 Customer"
    )
    assert "mappings/default.yaml" in problem.fix and "add the option 11" in problem.fix
    assert "make.powerapps.com" in problem.fix


def test_an_option_set_mapping_value_missing_in_one_table_is_reported_for_that_table_only() -> None:
    options = {**OPTIONS, "quote": {**OPTIONS["quote"], "paymenttermscode": {1: "Net 30"}}}

    problems = option_problems(VALUES, options, mappings_file="m.yaml")

    assert [(p.value.mapping, p.value.table, p.value.value) for p in problems] == [
        ("SALES QUOTE", "quote", 2)
    ]
    assert "the option_set PAYMENT TERMS code '1M(8D)' of field paymentTermsId" in problems[0].detail


def test_an_option_set_mapping_into_a_column_that_is_not_a_choice_column_fails() -> None:
    options = {**OPTIONS, "salesorder": {}}

    problems = option_problems(VALUES, options, mappings_file="m.yaml")

    assert {(p.value.table, p.value.column) for p in problems} == {("salesorder", "paymenttermscode")}
    assert "is not a choice column of table salesorder" in problems[0].detail


def test_integer_constants_of_columns_that_are_not_choices_and_tables_not_read_are_not_judged() -> None:
    assert option_problems(VALUES, {"transactioncurrency": {}}, mappings_file="m.yaml") == []
    assert option_problems(VALUES, {}, mappings_file="m.yaml") == []


def test_a_filter_value_the_column_lacks_is_reported_as_a_filter() -> None:
    options = {**OPTIONS, "quote": {**OPTIONS["quote"], "statecode": {0: "Draft", 2: "Won"}}}

    problems = option_problems(VALUES, options, mappings_file="m.yaml")

    assert [p.detail for p in problems] == [
        "SALES QUOTE's Dataverse filter compares quote.statecode with 1, which has no option 1; its options "
        "are 0 Draft, 2 Won"
    ]
