"""mappings/default.yaml reproduces the built-in connector's defaults (docs/mappings.md)."""

from __future__ import annotations

from shared.mapping import OptionSetMapping, load_mapping_set, scope_filter

MS = load_mapping_set()


def test_all_default_mappings_exist_in_dependency_order() -> None:
    assert MS.sync_order() == [
        "SALESPEOPLE",
        "CURRENCY",
        "UNIT OF MEASURE",
        "CUSTOMER",
        "VENDOR",
        "CONTACT",
        "OPPORTUNITY",
        "ITEM-PRODUCT",
        "UNIT",
        "ITEM PRICE",
        "SALES ORDER",
        "POSTED INVOICE",
        "SALES QUOTE",
    ]
    assert isinstance(MS.get("PAYMENT TERMS"), OptionSetMapping)
    assert isinstance(MS.get("SHIPMENT METHOD"), OptionSetMapping)


def test_salespeople_are_one_way_to_bc_coupled_by_email_person_only() -> None:
    sp = MS.entity("SALESPEOPLE")
    assert (sp.bc.entity_set, sp.dataverse.table, sp.direction) == (
        "salespeoplePurchasers",
        "systemuser",
        "to_bc",
    )
    assert sp.only_coupled and sp.only_for_ownership == "person"
    assert [f.key for f in sp.fields if f.match_priority == 1] == ["email"]
    assert sp.field("email").dv == "internalemailaddress"
    assert (
        scope_filter(sp, "dv")
        == "(isdisabled eq false) and (islicensed eq true) and (isintegrationuser eq false)"
    )


def test_currency_matches_on_iso_code_and_treats_blank_as_local() -> None:
    cur = MS.entity("CURRENCY")
    assert (cur.dataverse.entity_set, cur.direction, cur.bc.key) == (
        "transactioncurrencies",
        "to_dataverse",
        "code",
    )
    assert cur.field("code").dv == "isocurrencycode" and cur.field("code").match_priority == 1
    assert cur.bc_blank_means_local_currency and MS.settings.bc_local_currency_code == "USD"


def test_option_sets_map_bc_codes_to_account_choices() -> None:
    terms = MS.get("PAYMENT TERMS")
    assert isinstance(terms, OptionSetMapping)
    assert terms.dataverse_column == "paymenttermscode" and terms.value_map["30 DAYS"] == 1
    assert terms.bc.key == "id" and terms.needs_reference
    ship = MS.get("SHIPMENT METHOD")
    assert isinstance(ship, OptionSetMapping) and ship.dataverse_column == "address1_freighttermscode"


def test_customer_field_list_and_credit_limit_one_way() -> None:
    c = MS.entity("CUSTOMER")
    pairs = {(f.bc, f.dv) for f in c.fields}
    for pair in [
        ("displayName", "name"), ("addressLine1", "address1_line1"), ("addressLine2", "address1_line2"),
        ("postalCode", "address1_postalcode"), ("city", "address1_city"), ("country", "address1_country"),
        ("state", "address1_stateorprovince"), ("email", "emailaddress1"), ("website", "websiteurl"),
        ("phoneNumber", "telephone1"), ("currencyCode", "transactioncurrencyid"),
        ("paymentTermsId", "paymenttermscode"), ("shipmentMethodId", "address1_freighttermscode"),
        ("creditLimit", "creditlimit"), ("salespersonCode", "ownerid"),
    ]:  # fmt: skip
        assert pair in pairs, pair
    assert c.field("creditLimit").direction == "to_dataverse"
    assert c.field("displayName").direction == "bidirectional"
    owner = c.field("owner")
    assert (owner.lookup, owner.not_null, owner.direction) == ("SALESPEOPLE", True, "to_dataverse")
    assert scope_filter(c, "bc") == "blocked eq ' '"
    assert scope_filter(c, "dv") == "(statecode eq 0) and (customertypecode eq 3)"
    assert set(MS.dependencies("CUSTOMER")) == {"CURRENCY", "PAYMENT TERMS", "SHIPMENT METHOD", "SALESPEOPLE"}


def test_vendor_is_an_account_with_the_vendor_relationship_type() -> None:
    v = MS.entity("VENDOR")
    assert (v.bc.entity_set, v.dataverse.table) == ("vendors", "account")
    assert v.field("customertypecode").constant == 11
    assert "customertypecode eq 11" in (scope_filter(v, "dv") or "")
    assert "creditLimit" not in [f.key for f in v.fields]


def test_contact_is_a_person_with_a_company_bound_to_an_account() -> None:
    c = MS.entity("CONTACT")
    assert scope_filter(c, "bc") == "(type eq 'Person') and (companyNumber ne '')"
    assert scope_filter(c, "dv") == "(statecode eq 0) and (_parentcustomerid_value ne null)"
    parent = c.field("companyNumber")
    assert (parent.dv, parent.dv_navigation, parent.lookup) == (
        "parentcustomerid",
        "parentcustomerid_account",
        "CUSTOMER",
    )
    assert MS.entity("CUSTOMER").bc.key == "number"


def test_item_product_inventory_never_negative() -> None:
    i = MS.entity("ITEM-PRODUCT")
    inv = i.field("inventory")
    assert (inv.dv, inv.direction, inv.minimum) == ("quantityonhand", "to_dataverse", 0)
    assert i.field("baseUnitOfMeasureCode").lookup == "UNIT OF MEASURE"
    assert MS.entity("UNIT OF MEASURE").dataverse.table == "uomschedule"


def test_item_prices_go_one_way_to_the_price_list_in_the_items_base_unit() -> None:
    m = MS.entity("ITEM PRICE")
    assert (m.bc.entity_set, m.dataverse.entity_set, m.direction) == (
        "items",
        "productpricelevels",
        "to_dataverse",
    )
    assert m.bc.filter == MS.entity("ITEM-PRODUCT").bc.filter  # the same items as their products
    assert MS.settings.price_list is not None and MS.settings.price_list.name == "Business Central"
    assert m.field("pricelist").price_list
    assert (m.field("product").bc, m.field("product").lookup) == ("number", "ITEM-PRODUCT")
    assert (m.field("unit").bc, m.field("unit").lookup) == ("baseUnitOfMeasureCode", "UNIT")
    assert (m.field("unitPrice").dv, m.field("unitPrice").decimals) == ("amount", 2)
    assert MS.dependencies("ITEM PRICE")[:2] == ["ITEM-PRODUCT", "UNIT"]


def test_opportunities_are_the_open_ones_both_ways_linked_to_the_coupled_contact() -> None:
    m = MS.entity("OPPORTUNITY")
    assert (m.bc.entity_set, m.dataverse.entity_set, m.direction) == (
        "opportunities",
        "opportunities",
        "bidirectional",
    )
    assert scope_filter(m, "bc") == "closed eq false" and scope_filter(m, "dv") == "statecode eq 0"
    assert (m.field("contactNumber").dv, m.field("contactNumber").lookup) == ("parentcontactid", "CONTACT")
    assert "waits" in (m.field("contactNumber").failed_lookup_message or "")
    assert (m.field("description").dv, m.field("description").direction) == ("name", "bidirectional")
    # v2.0 makes them read-only: BC's value on create only, and an empty BC date never clears Sales'.
    assert m.field("estimatedValue").create_only and m.field("estimatedValue").direction == "to_dataverse"
    assert m.field("estimatedClosingDate").not_null
    assert m.field("owner").lookup == "SALESPEOPLE"  # salespersonCode -> ownerid, person model
    assert "status" not in {f.bc for f in m.fields}  # closing is never synchronized (read-only in v2.0)
