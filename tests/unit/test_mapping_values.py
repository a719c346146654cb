"""Value rules and engine queries: read, translate, write bodies, scope, $select, match queries, needs."""

from __future__ import annotations

import uuid

import pytest

from shared.mapping import (
    DEFAULT_MAPPING_FILE,
    RecordShapeError,
    StaticLookups,
    TranslationError,
    dataverse_id_for,
    in_scope,
    load_mapping_set,
    lookup_keys,
    lookup_needs,
    match_queries,
    parse_mapping_set,
    select_fields,
)
from shared.mapping.values import (
    LookupMissing,
    dv_entries,
    read,
    same,
    side_type,
    split_person_name,
    translate,
)

MS = load_mapping_set()
CUSTOMER = MS.entity("CUSTOMER")
EUR = "a0000000-0000-0000-0000-0000000000e1"


def test_dataverse_ids_are_deterministic_per_mapping_and_bc_id() -> None:
    a = dataverse_id_for("CUSTOMER", "11111111-1111-1111-1111-111111111111")
    assert a == dataverse_id_for(CUSTOMER, "11111111-1111-1111-1111-111111111111".upper())
    assert a != dataverse_id_for("VENDOR", "11111111-1111-1111-1111-111111111111")


def test_dataverse_id_namespace_is_stable() -> None:
    # Changing the namespace would give every record a new id and duplicate them on the next create.
    namespace = uuid.UUID("6f1c2a4e-5b0d-4d1e-9a37-0c2b8e5f7d10")
    expected = uuid.uuid5(namespace, "CUSTOMER:11111111-1111-1111-1111-111111111111")
    assert dataverse_id_for("CUSTOMER", "11111111-1111-1111-1111-111111111111") == str(expected)


def test_reading_a_field_that_was_not_selected_is_an_error_not_an_empty_value() -> None:
    with pytest.raises(RecordShapeError, match="address1_city"):
        read(MS, CUSTOMER.field("city"), "dv", {"accountid": "x"})


def test_lookup_reads_the_value_property_and_lowercases() -> None:
    f = CUSTOMER.field("currencyCode")
    assert read(MS, f, "dv", {"_transactioncurrencyid_value": EUR.upper()}) == EUR
    assert (
        read(
            MS,
            CUSTOMER.field("paymentTermsId"),
            "bc",
            {"paymentTermsId": "00000000-0000-0000-0000-000000000000"},
        )
        is None
    )


def test_same_ignores_empty_string_vs_null_and_number_formatting() -> None:
    assert same(MS, CUSTOMER.field("city"), "dv", "", None)
    assert same(MS, CUSTOMER.field("creditLimit"), "dv", 1000, 1000.0)
    assert same(MS, CUSTOMER.field("creditLimit"), "dv", 10.004, 10.0)  # decimals: 2
    assert not same(MS, CUSTOMER.field("city"), "dv", "Atlanta", "atlanta")


def test_translate_trims_and_clamps_to_the_target() -> None:
    f = CUSTOMER.field("displayName")
    assert translate(MS, CUSTOMER, f, "bc", "  " + "N" * 150, StaticLookups()) == "N" * 100
    assert translate(MS, CUSTOMER, f, "dv", "   ", StaticLookups()) is None


def test_local_currency_setting_is_required_for_blank_codes() -> None:
    ms = MS.model_copy(update={"settings": MS.settings.model_copy(update={"bc_local_currency_code": None})})
    with pytest.raises(TranslationError, match="bc_local_currency_code"):
        translate(ms, CUSTOMER, CUSTOMER.field("currencyCode"), "dv", "", StaticLookups())


def test_missing_lookup_carries_what_the_engine_must_enqueue() -> None:
    with pytest.raises(LookupMissing) as info:
        translate(MS, CUSTOMER, CUSTOMER.field("currencyCode"), "dv", "GBP", StaticLookups())
    m = info.value.missing
    assert (m.mapping, m.side, m.key_field, m.value, m.resolvable) == ("CURRENCY", "bc", "code", "GBP", True)
    assert "sync CURRENCY first" in str(info.value)


def test_unloaded_code_table_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="lookup_needs"):
        translate(MS, CUSTOMER, CUSTOMER.field("paymentTermsId"), "dv", EUR, StaticLookups())


def test_dataverse_body_entries() -> None:
    assert dv_entries(MS, CUSTOMER.field("currencyCode"), EUR) == {
        "transactioncurrencyid@odata.bind": f"/transactioncurrencies({EUR})"
    }
    assert dv_entries(MS, CUSTOMER.field("currencyCode"), None) == {"transactioncurrencyid@odata.bind": None}
    assert dv_entries(MS, CUSTOMER.field("owner"), EUR) == {"ownerid@odata.bind": f"/systemusers({EUR})"}
    assert dv_entries(MS, CUSTOMER.field("city"), "Oslo") == {"address1_city": "Oslo"}
    name = MS.entity("CONTACT").field("displayName")
    assert dv_entries(MS, name, "Cher") == {"firstname": None, "lastname": "Cher"}


def test_split_person_name() -> None:
    assert split_person_name("  Ann   Marie Smith ") == ("Ann Marie", "Smith")
    assert split_person_name(None) == (None, None)


def test_in_scope_uses_the_same_clauses_as_the_filter() -> None:
    assert in_scope(CUSTOMER, "bc", {"blocked": " "})
    assert not in_scope(CUSTOMER, "bc", {"blocked": "All"})
    assert in_scope(CUSTOMER, "dv", {"statecode": 0, "customertypecode": 3})
    assert not in_scope(CUSTOMER, "dv", {"statecode": 0, "customertypecode": 11})
    contact = MS.entity("CONTACT")
    assert not in_scope(contact, "bc", {"type": "Person", "companyNumber": ""})
    assert not in_scope(contact, "dv", {"statecode": 0, "_parentcustomerid_value": None})
    with pytest.raises(ValueError, match="customertypecode"):
        in_scope(CUSTOMER, "dv", {"statecode": 0})


def test_select_fields_cover_everything_reconcile_reads() -> None:
    dv = select_fields(MS, CUSTOMER, "dv")
    assert dv[:2] == ["accountid", "modifiedon"]
    assert {
        "_transactioncurrencyid_value",
        "_ownerid_value",
        "statecode",
        "customertypecode",
        "paymenttermscode",
    } <= set(dv)
    bc = select_fields(MS, CUSTOMER, "bc")
    assert {"id", "lastModifiedDateTime", "number", "blocked", "salespersonCode", "paymentTermsId"} <= set(bc)
    assert len(bc) == len(set(bc))


def test_match_queries_by_priority_with_scope_and_escaping() -> None:
    record = {"number": "C1", "displayName": "O'Brien & Co"}
    assert match_queries(MS, CUSTOMER, record, "bc", StaticLookups()) == [
        (1, "(accountnumber eq 'C1') and ((statecode eq 0) and (customertypecode eq 3))"),
        (2, "(name eq 'O''Brien & Co') and ((statecode eq 0) and (customertypecode eq 3))"),
    ]
    assert match_queries(MS, CUSTOMER, {"number": "", "displayName": ""}, "bc", StaticLookups()) == []
    back = match_queries(MS, CUSTOMER, {"accountnumber": None, "name": "Fabrikam"}, "dv", StaticLookups())
    assert back == [(2, "(displayName eq 'Fabrikam') and (blocked eq ' ')")]


def test_lookup_needs_and_keys() -> None:
    needs = {n.mapping: (n.kind, n.bc_entity_set, n.bc_key) for n in lookup_needs(MS, CUSTOMER)}
    assert needs == {
        "CURRENCY": ("couplings", "currencies", "code"),
        "PAYMENT TERMS": ("bc_reference", "paymentTerms", "id"),
        "SHIPMENT METHOD": ("bc_reference", "shipmentMethods", "id"),
        "SALESPEOPLE": ("couplings", "salespeoplePurchasers", "code"),
    }
    keys = lookup_keys(MS, CUSTOMER, "bc", {"currencyCode": "", "salespersonCode": "JO"})
    assert [(k.mapping, k.side, k.value) for k in keys] == [
        ("CURRENCY", "bc", "USD"),
        ("SALESPEOPLE", "bc", "JO"),
    ]
    keys = lookup_keys(MS, CUSTOMER, "dv", {"_transactioncurrencyid_value": EUR, "_ownerid_value": None})
    assert [(k.mapping, k.side, k.value) for k in keys] == [("CURRENCY", "dv", EUR)]


def test_a_company_contact_number_stays_text_when_customers_are_keyed_by_id() -> None:
    text = DEFAULT_MAPPING_FILE.read_text().replace(
        "entity_set: customers\n      key: number", "entity_set: customers\n      key: id"
    )
    assert "key: id" in text
    ms = parse_mapping_set(text, "by-id.yaml")
    company = ms.entity("CONTACT").field("companyNumber")
    assert side_type(ms, company, "bc") == "text"
    assert read(ms, company, "bc", {"companyNumber": "CT000001"}) == "CT000001"  # not lower-cased as a GUID
