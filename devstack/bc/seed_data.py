"""Data the sandbox starts with, and fast generators of bulk records for tests and benchmarks.

Reference data gets ids derived from (company, entity set, code) so they are the same on every
start; generated customers are deterministic for a given `seed`. The sample customers get their
company contacts (`CT00010`, `CT00020`) as any customer does; bulk-generated customers do not,
unless asked (`company_contacts=True`), to keep 100,000-row seeding fast.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

from devstack.bc.store import BcStore

DEFAULT_COMPANY_ID = "5c7f2c4e-8d1a-4b6e-9f3a-2d4c6e8a0b1c"
SECOND_COMPANY_ID = "7e9a1b3c-5d7f-4a2b-8c4d-6e8f0a2b4c6d"
SEED_USER = "SEED"

_NAMESPACE = uuid.UUID("0b8f9c2e-3a4d-4e5f-8a6b-7c8d9e0f1a2b")

REFERENCE_DATA: dict[str, list[dict[str, Any]]] = {
    "currencies": [
        {"code": "EUR", "displayName": "Euro", "symbol": "€", "amountDecimalPlaces": "2:2"},
        {"code": "GBP", "displayName": "Pound Sterling", "symbol": "£", "amountDecimalPlaces": "2:2"},
        {"code": "CAD", "displayName": "Canadian dollar", "symbol": "$", "amountDecimalPlaces": "2:2"},
    ],
    "paymentTerms": [
        {"code": "14 DAYS", "displayName": "Net 14 days", "dueDateCalculation": "14D"},
        {"code": "30 DAYS", "displayName": "Net 30 days", "dueDateCalculation": "30D"},
        {"code": "CM", "displayName": "Current month", "dueDateCalculation": "CM"},
        {"code": "COD", "displayName": "Cash on delivery", "dueDateCalculation": "0D"},
        {
            "code": "1M(8D)",
            "displayName": "1 Month/2% 8 days",
            "dueDateCalculation": "1M",
            "discountDateCalculation": "8D",
            "discountPercent": 2,
        },
    ],
    "shipmentMethods": [
        {"code": "CIF", "displayName": "Cost Insurance and Freight"},
        {"code": "EXW", "displayName": "Ex Warehouse"},
        {"code": "FOB", "displayName": "Free on Board"},
        {"code": "PICKUP", "displayName": "Pickup at Location"},
    ],
    "unitsOfMeasure": [
        {"code": "PCS", "displayName": "Piece", "internationalStandardCode": "EA", "symbol": "pcs"},
        {"code": "BOX", "displayName": "Box", "internationalStandardCode": "BX", "symbol": "box"},
        {"code": "HOUR", "displayName": "Hour", "internationalStandardCode": "HUR", "symbol": "h"},
        {"code": "KG", "displayName": "Kilo", "internationalStandardCode": "KGM", "symbol": "kg"},
    ],
    "salespeoplePurchasers": [
        {"code": "JO", "displayName": "Jim Olive", "email": "jim.olive@contoso.example", "jobTitle": "Sales"},
        {"code": "PS", "displayName": "Peter Saddow", "email": "peter.saddow@contoso.example"},
        {"code": "OF", "displayName": "Otis Falls", "email": "otis.falls@contoso.example"},
    ],
}


def reference_id(company_id: str, entity_set: str, code: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{company_id}/{entity_set}/{code}"))


def seed_company(
    store: BcStore, company_id: str, name: str, *, display_name: str | None = None, with_samples: bool = True
) -> None:
    """A company with reference data and (optionally) a couple of customers and items."""
    store.add_company(company_id, name, display_name=display_name)
    with store.quiet(), store.transaction():
        for entity_set, rows in REFERENCE_DATA.items():
            for row in rows:
                body = {k: v for k, v in row.items() if k != "amountDecimalPlaces"}  # a string in BC
                fixed_id = reference_id(company_id, entity_set, row["code"])
                store.create(company_id, entity_set, body, SEED_USER, record_id=fixed_id)
        if with_samples:
            terms = reference_id(company_id, "paymentTerms", "30 DAYS")
            store.create(
                company_id,
                "customers",
                {"displayName": "Adatum Corporation", "city": "Atlanta", "country": "US",
                 "email": "robert.townes@adatum.example", "paymentTermsId": terms, "salespersonCode": "JO"},
                SEED_USER,
            )  # fmt: skip
            store.create(
                company_id,
                "customers",
                {"displayName": "Trey Research", "city": "Chicago", "country": "US", "currencyCode": "EUR"},
                SEED_USER,
            )
            store.create(
                company_id,
                "items",
                {"displayName": "ATHENS Desk", "unitPrice": 1000.8, "baseUnitOfMeasureCode": "PCS"},
                SEED_USER,
            )
            store.create(
                company_id,
                "items",
                {
                    "displayName": "PARIS Guest Chair, black",
                    "unitPrice": 192.8,
                    "baseUnitOfMeasureCode": "PCS",
                },
                SEED_USER,
            )


_FIRST = ["Adatum", "Alpine", "Blue Yonder", "Coho", "Contoso", "Fabrikam", "Litware", "Northwind",
          "Proseware", "Relecloud", "Tailspin", "Trey", "Wide World", "Woodgrove", "Lucerne",
          "Humongous"]  # fmt: skip
_SECOND = ["Corporation", "Traders", "Ltd.", "Inc.", "Group", "Supplies", "Research", "Partners", "& Sons"]
_CITIES = [("Atlanta", "US", "GA"), ("Chicago", "US", "IL"), ("London", "GB", ""), ("Berlin", "DE", ""),
           ("Toronto", "CA", "ON"), ("Seattle", "US", "WA"), ("Paris", "FR", ""),
           ("Oslo", "NO", "")]  # fmt: skip


def generate_customers(count: int, *, seed: int = 0, start: int = 1) -> Iterator[dict[str, Any]]:
    """`count` plausible customer bodies (numbers `C1000001`...); deterministic for a `seed`."""
    rng = random.Random(seed)
    for n in range(start, start + count):
        name = f"{rng.choice(_FIRST)} {rng.choice(_SECOND)} {n}"
        city, country, state = rng.choice(_CITIES)
        yield {
            "number": f"C{1_000_000 + n}",
            "displayName": name,
            "addressLine1": f"{rng.randint(1, 999)} Main Street",
            "city": city,
            "state": state,
            "country": country,
            "postalCode": f"{rng.randint(10000, 99999)}",
            "phoneNumber": f"+1 555 {rng.randint(1000000, 9999999)}",
            "email": f"contact{n}@example.com",
            "creditLimit": rng.choice([0, 1000, 5000, 25000]),
        }


def seed_customers(
    store: BcStore,
    company_id: str,
    count: int,
    *,
    seed: int = 0,
    start: int = 1,
    company_contacts: bool = False,
) -> list[str]:
    """Insert `count` generated customers without notifications; returns their ids. By default
    without their company contacts (speed); `company_contacts=True` creates them as BC would."""
    return store.seed(
        company_id,
        "customers",
        generate_customers(count, seed=seed, start=start),
        SEED_USER,
        company_contacts=company_contacts,
    )
