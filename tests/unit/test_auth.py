"""Webhook secrets, Entra ID caller tokens and app roles (shared/auth.py)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import auth
from shared.auth import (
    Forbidden,
    HttpJwksSource,
    JwksUnavailable,
    Principal,
    Role,
    RoleNames,
    StaticJwksSource,
    TokenValidator,
    Unauthorized,
    WebhookAuthError,
    authorize,
    build_authvalue,
    check_client_state,
    check_dataverse_webhook_auth,
    parse_authvalue,
)
from tests.support import jwt_keys
from tests.support.jwt_keys import NOW, TEST_AUDIENCE, TEST_ISSUER, claims, key_pair, sign

SECRET = "s3cr3t-webhook-key"

# --------------------------------------------------------------------------------------------------
# Dataverse webhook secrets
# --------------------------------------------------------------------------------------------------


def test_webhook_key_accepts_the_code_query_parameter() -> None:
    check_dataverse_webhook_auth("webhook_key", SECRET, headers={}, query={"code": SECRET})


@pytest.mark.parametrize(
    ("query", "reason_part"),
    [({}, "is missing"), ({"code": "guess"}, "does not match"), ({"code": SECRET[:-1]}, "does not match")],
)
def test_webhook_key_refuses_a_missing_or_wrong_code_without_revealing_it(
    query: dict[str, str], reason_part: str
) -> None:
    with pytest.raises(WebhookAuthError) as caught:
        check_dataverse_webhook_auth("webhook_key", SECRET, headers={}, query=query)
    assert reason_part in caught.value.reason
    assert "`code`" in caught.value.reason
    assert SECRET not in caught.value.reason and "guess" not in caught.value.reason


def test_a_bearer_token_never_replaces_the_webhook_secret() -> None:
    token = sign(key_pair("k1"), claims())
    headers = {"Authorization": f"Bearer {token}"}
    with pytest.raises(WebhookAuthError):
        check_dataverse_webhook_auth("webhook_key", SECRET, headers=headers, query={})
    with pytest.raises(WebhookAuthError):
        check_dataverse_webhook_auth("http_header", {"x-api-key": SECRET}, headers=headers, query={})


def test_an_unconfigured_secret_refuses_everything() -> None:
    with pytest.raises(WebhookAuthError):
        check_dataverse_webhook_auth("webhook_key", "", headers={}, query={"code": ""})
    with pytest.raises(WebhookAuthError, match="no webhook secret is configured"):
        check_dataverse_webhook_auth("http_header", {}, headers={}, query={})


def test_webhook_key_needs_a_plain_key() -> None:
    with pytest.raises(TypeError):
        check_dataverse_webhook_auth("webhook_key", {"code": SECRET}, headers={}, query={"code": SECRET})


def test_http_header_needs_every_configured_header_with_names_case_insensitive() -> None:
    expected = {"X-Api-Key": SECRET, "X-Tenant": "contoso"}
    check_dataverse_webhook_auth(
        "http_header", expected, headers={"x-api-key": SECRET, "X-TENANT": "contoso", "Other": "x"}, query={}
    )
    with pytest.raises(WebhookAuthError) as caught:
        check_dataverse_webhook_auth("http_header", expected, headers={"x-api-key": SECRET}, query={})
    assert caught.value.reason == "header `x-tenant` is missing"
    with pytest.raises(WebhookAuthError) as caught:
        check_dataverse_webhook_auth(
            "http_header", expected, headers={"x-api-key": "nope", "x-tenant": "contoso"}, query={}
        )
    assert caught.value.reason == "header `x-api-key` does not match the registered value"


def test_http_header_values_are_compared_exactly() -> None:
    with pytest.raises(WebhookAuthError):
        check_dataverse_webhook_auth(
            "http_header", {"X-Api-Key": SECRET}, headers={"X-Api-Key": SECRET.upper()}, query={}
        )


def test_http_query_string_needs_every_configured_parameter_with_exact_names() -> None:
    expected = {"Key1": SECRET, "Key2": "two"}
    check_dataverse_webhook_auth(
        "http_query_string", expected, headers={}, query={"Key1": SECRET, "Key2": "two"}
    )
    with pytest.raises(WebhookAuthError) as caught:
        check_dataverse_webhook_auth(
            "http_query_string", expected, headers={}, query={"key1": SECRET, "Key2": "bad"}
        )
    assert caught.value.reason == (
        "query parameter `Key1` is missing; query parameter `Key2` does not match the registered value"
    )


def test_header_and_query_auth_accept_the_registered_authvalue_xml() -> None:
    xml = build_authvalue({"X-Api-Key": SECRET})
    check_dataverse_webhook_auth("http_header", xml, headers={"x-api-key": SECRET}, query={})
    with pytest.raises(WebhookAuthError):
        check_dataverse_webhook_auth("http_query_string", xml, headers={"x-api-key": SECRET}, query={})


def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    check_dataverse_webhook_auth("webhook_key", SECRET, headers={}, query={"code": SECRET})
    assert check_client_state("state", "other") is False
    assert compared == [(SECRET.encode(), SECRET.encode()), (b"state", b"other")]


@pytest.mark.parametrize(
    ("expected", "got", "ok"),
    [
        ("someClientState", "someClientState", True),
        ("someClientState", "someclientstate", False),
        ("someClientState", None, False),
        ("", "", False),
        ("état-ü", "état-ü", True),
    ],
)
def test_check_client_state(expected: str, got: str | None, ok: bool) -> None:
    assert check_client_state(expected, got) is ok


# --------------------------------------------------------------------------------------------------
# authvalue XML
# --------------------------------------------------------------------------------------------------


def test_build_authvalue_has_the_documented_form() -> None:
    assert build_authvalue({"X": "Y"}) == '<settings><setting name="X" value="Y" /></settings>'


def test_parse_authvalue_reads_the_documented_form() -> None:
    xml = '<settings><setting name="Key1" value="Value1" /><setting name="Key2" value="Value2" /></settings>'
    assert parse_authvalue(xml) == {"Key1": "Value1", "Key2": "Value2"}


_xml_text = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40)


# Sized to fit Dataverse's 2,048 characters even with every character escaped (what is longer is
# refused, tested separately): 4 pairs of at most 40 + 30 characters, 6 characters each escaped.
@given(
    st.dictionaries(
        _xml_text,
        st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=30),
        min_size=1,
        max_size=4,
    )
)
def test_authvalue_round_trips(values: dict[str, str]) -> None:
    assert parse_authvalue(build_authvalue(values)) == values


@pytest.mark.parametrize(
    ("xml", "reason"),
    [
        ("plainkey", "not valid XML"),
        ('<config><setting name="a" value="b" /></config>', "<settings> root"),
        ('<settings><setting name="a" /></settings>', "entries must look like"),
        ('<settings><other name="a" value="b" /></settings>', "entries must look like"),
        ('<settings><setting name="a" value="1" /><setting name="a" value="2" /></settings>', "twice"),
        ("<settings></settings>", "no <setting> entries"),
    ],
)
def test_parse_authvalue_names_what_is_wrong(xml: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_authvalue(xml)


def test_build_authvalue_refuses_what_dataverse_cannot_store() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_authvalue({})
    with pytest.raises(ValueError, match="at most 2048"):
        build_authvalue({"X-Api-Key": "k" * 2048})


# --------------------------------------------------------------------------------------------------
# Caller tokens
# --------------------------------------------------------------------------------------------------

KEY = key_pair("key-1")
OTHER_KEY = key_pair("key-2")


def validator(jwks: auth.JwksSource | None = None) -> TokenValidator:
    source = jwks or StaticJwksSource(jwt_keys.jwks_document(KEY))
    return TokenValidator(source, issuer=TEST_ISSUER, audience=TEST_AUDIENCE, clock=lambda: NOW)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_valid_token_gives_the_principal() -> None:
    principal = validator().validate(bearer(sign(KEY, claims(roles=["Integration.User", "Other"]))))
    assert principal.subject == "user-subject-1"
    assert principal.name == "Alex Admin"
    assert principal.roles == frozenset({"Integration.User", "Other"})
    assert principal.claims["aud"] == TEST_AUDIENCE


def test_an_app_only_token_is_named_by_its_app_id() -> None:
    token = sign(KEY, claims(name=None, roles=None, azp="3f1c9d8e-app"))
    principal = validator().validate(bearer(token))
    assert principal.name == "3f1c9d8e-app"
    assert principal.roles == frozenset()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("   ", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "malformed Authorization header"),
        ("Bearer", "malformed Authorization header"),
        ("Bearer a b", "malformed Authorization header"),
        ("Bearer not-a-jwt", "not a well-formed JWT"),
    ],
)
def test_missing_or_malformed_authorization_is_unauthorized(header: str | None, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        validator().validate(header)


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert validator().validate(f"bearer {sign(KEY, claims())}").subject == "user-subject-1"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (claims(exp=NOW - 61), "expired"),
        (claims(nbf=NOW + 61), "not valid yet"),
        (claims(aud="api://someone-else"), "another audience"),
        (claims(iss="https://login.microsoftonline.com/other-tenant/v2.0"), "another issuer"),
        (claims(exp=None), "lacks the `exp` claim"),
        (claims(sub=None), "lacks the `sub` claim"),
        (claims(exp="tomorrow"), "`exp` claim must be a number"),
        (claims(nbf=float("nan")), "`nbf` claim must be a number"),
        (claims(exp=1e308), "more than 24 hours ahead"),
        (claims(exp=NOW + 25 * 3600), "more than 24 hours ahead"),
        (claims(roles="Integration.Administrator"), "`roles` claim must be a list"),
    ],
)
def test_tokens_with_bad_claims_are_unauthorized(payload: dict[str, object], reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        validator().validate(bearer(sign(KEY, payload)))


def test_lifetime_allows_the_leeway() -> None:
    token = sign(KEY, claims(exp=NOW - 59, nbf=NOW + 59))
    assert validator().validate(bearer(token)).subject == "user-subject-1"


def test_a_token_signed_by_another_key_is_unauthorized() -> None:
    forged = sign(OTHER_KEY, claims(), kid=KEY.kid)
    with pytest.raises(Unauthorized, match="signature is invalid"):
        validator().validate(bearer(forged))


def test_a_tampered_payload_is_unauthorized() -> None:
    header, _, signature = sign(KEY, claims(roles=["Integration.User"])).split(".")
    elevated = jwt_keys._b64(json.dumps(claims()).encode())
    with pytest.raises(Unauthorized, match="signature is invalid"):
        validator().validate(bearer(f"{header}.{elevated}.{signature}"))


def test_alg_none_is_refused() -> None:
    with pytest.raises(Unauthorized, match="'none' is not accepted"):
        validator().validate(bearer(jwt_keys.unsigned(claims(), kid=KEY.kid)))


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    with pytest.raises(Unauthorized, match="'HS256' is not accepted"):
        validator().validate(bearer(jwt_keys.hs256_with_public_key(KEY, claims())))


def test_a_token_without_kid_is_unauthorized() -> None:
    token = jwt_keys._compact({"alg": "RS256", "typ": "JWT"}, claims(), b"sig")
    with pytest.raises(Unauthorized, match="no signing key"):
        validator().validate(bearer(token))


def test_an_unknown_kid_is_unauthorized() -> None:
    with pytest.raises(Unauthorized, match="does not publish"):
        validator().validate(bearer(sign(OTHER_KEY, claims())))


# --------------------------------------------------------------------------------------------------
# JWKS over HTTP (httpx.MockTransport: no network)
# --------------------------------------------------------------------------------------------------

JWKS_URL = "https://login.microsoftonline.com/tenant/discovery/v2.0/keys"


class FakeIdentityProvider:
    """Serves a JWKS document that tests can rotate; counts the requests it gets."""

    def __init__(self, *pairs: jwt_keys.KeyPair) -> None:
        self.document = jwt_keys.jwks_document(*pairs)
        self.requests: list[str] = []
        self.fail = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        if self.fail:
            return httpx.Response(503)
        return httpx.Response(200, json=self.document)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def http_source(idp: FakeIdentityProvider, clock: FakeClock, ttl: float = 3600) -> HttpJwksSource:
    client = httpx.Client(transport=httpx.MockTransport(idp.handler))
    return HttpJwksSource(JWKS_URL, ttl, client=client, clock=clock)


def test_jwks_is_fetched_once_and_cached() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    tokens = validator(http_source(idp, clock))
    for _ in range(3):
        tokens.validate(bearer(sign(KEY, claims())))
    assert idp.requests == [JWKS_URL]


def test_jwks_url_comes_from_configuration_not_from_the_token() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    token = jwt_keys.jwt.encode(
        claims(),
        KEY.private_key,
        algorithm="RS256",
        headers={"kid": KEY.kid, "jku": "https://evil.example/k"},
    )
    validator(http_source(idp, clock)).validate(bearer(token))
    assert idp.requests == [JWKS_URL]


def test_an_unknown_kid_triggers_one_refresh_that_finds_a_rotated_key() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    tokens = validator(http_source(idp, clock))
    tokens.validate(bearer(sign(KEY, claims())))
    clock.now += 120
    idp.document = jwt_keys.jwks_document(KEY, OTHER_KEY)  # the identity provider rotates keys
    assert tokens.validate(bearer(sign(OTHER_KEY, claims()))).subject == "user-subject-1"
    assert len(idp.requests) == 2


def test_unknown_kids_refresh_at_most_once_a_minute() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    tokens = validator(http_source(idp, clock))
    tokens.validate(bearer(sign(KEY, claims())))
    clock.now += 61
    for kid in ("forged-1", "forged-2", "forged-3"):
        with pytest.raises(Unauthorized, match="does not publish"):
            tokens.validate(bearer(sign(OTHER_KEY, claims(), kid=kid)))
        clock.now += 10
    assert len(idp.requests) == 2  # the initial fetch and one refresh
    clock.now += 60
    with pytest.raises(Unauthorized):
        tokens.validate(bearer(sign(OTHER_KEY, claims(), kid="forged-4")))
    assert len(idp.requests) == 3


def test_jwks_is_refetched_after_its_ttl() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    source = http_source(idp, clock, ttl=600)
    assert source.signing_key(KEY.kid) is not None
    clock.now += 599
    source.signing_key(KEY.kid)
    assert len(idp.requests) == 1
    clock.now += 1
    source.signing_key(KEY.kid)
    assert len(idp.requests) == 2


def test_a_failing_identity_provider_keeps_the_cached_keys() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    source = http_source(idp, clock, ttl=600)
    source.signing_key(KEY.kid)
    idp.fail = True
    clock.now += 700
    assert source.signing_key(KEY.kid) is not None
    assert len(idp.requests) == 2


def test_no_keys_at_all_is_unavailable_not_unauthorized() -> None:
    idp, clock = FakeIdentityProvider(KEY), FakeClock()
    idp.fail = True
    with pytest.raises(JwksUnavailable):
        http_source(idp, clock).signing_key(KEY.kid)


def test_unusable_jwks_entries_are_skipped() -> None:
    document = jwt_keys.jwks_document(KEY, OTHER_KEY)
    document["keys"][1]["use"] = "enc"
    document["keys"].append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
    document["keys"].append({"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"})
    source = StaticJwksSource(document)
    assert source.signing_key(KEY.kid) is not None
    assert source.signing_key(OTHER_KEY.kid) is None
    assert source.signing_key("hmac") is None
    assert source.signing_key("broken") is None


# --------------------------------------------------------------------------------------------------
# App roles
# --------------------------------------------------------------------------------------------------

NAMES = RoleNames()


def principal(*roles: str) -> Principal:
    return Principal(subject="s", name="n", roles=frozenset(roles), claims={})


@pytest.mark.parametrize(
    ("held", "required", "allowed"),
    [
        ("Integration.Administrator", Role.INTEGRATION_ADMINISTRATOR, True),
        ("Integration.Administrator", Role.INTEGRATION_USER, True),
        ("Integration.Administrator", Role.PRODUCT_AVAILABILITY_USER, True),
        ("Integration.User", Role.INTEGRATION_USER, True),
        ("Integration.User", Role.INTEGRATION_ADMINISTRATOR, False),
        ("Integration.User", Role.PRODUCT_AVAILABILITY_USER, False),
        ("ProductAvailability.User", Role.PRODUCT_AVAILABILITY_USER, True),
        ("ProductAvailability.User", Role.INTEGRATION_USER, False),
        ("ProductAvailability.User", Role.INTEGRATION_ADMINISTRATOR, False),
        ("integration.administrator", Role.INTEGRATION_ADMINISTRATOR, False),  # role values are exact
    ],
)
def test_authorize(held: str, required: Role, allowed: bool) -> None:
    if allowed:
        authorize(principal(held), required, NAMES)
    else:
        with pytest.raises(Forbidden):
            authorize(principal(held), required, NAMES)


def test_a_valid_token_without_the_role_is_forbidden_with_the_role_named() -> None:
    caller = validator().validate(bearer(sign(KEY, claims(roles=["Integration.User"]))))
    with pytest.raises(Forbidden) as caught:
        authorize(caller, Role.PRODUCT_AVAILABILITY_USER, NAMES)
    assert "'ProductAvailability.User' or 'Integration.Administrator'" in caught.value.reason


def test_role_claim_values_are_configurable() -> None:
    names = RoleNames(integration_administrator="Sync.Admin", product_availability_user="Stock.Read")
    authorize(principal("Sync.Admin"), Role.INTEGRATION_USER, names)
    authorize(principal("Stock.Read"), Role.PRODUCT_AVAILABILITY_USER, names)
    with pytest.raises(Forbidden, match=r"'Sync\.Admin'"):
        authorize(principal("Integration.Administrator"), Role.INTEGRATION_ADMINISTRATOR, names)


# --------------------------------------------------------------------------------------------------
# Fuzz: whatever arrives in the header, the answer is a principal or Unauthorized
# --------------------------------------------------------------------------------------------------

_VALID_TOKEN = sign(KEY, claims())


@given(st.one_of(st.none(), st.text(max_size=300), st.text(max_size=300).map(lambda t: f"Bearer {t}")))
def test_arbitrary_authorization_headers_are_unauthorized(header: str | None) -> None:
    with pytest.raises(Unauthorized):
        validator().validate(header)


@given(st.integers(min_value=0, max_value=len(_VALID_TOKEN) - 1), st.sampled_from("AQgw_-.=x"))
def test_mutated_tokens_are_valid_only_when_unchanged(position: int, replacement: str) -> None:
    mutated = _VALID_TOKEN[:position] + replacement + _VALID_TOKEN[position + 1 :]
    try:
        principal = validator().validate(bearer(mutated))
    except Unauthorized:
        return
    # A few base64 characters carry spare bits, so a mutation can decode to the same bytes.
    assert jwt_keys.jwt.get_unverified_header(mutated) == jwt_keys.jwt.get_unverified_header(_VALID_TOKEN)
    assert principal.claims == claims()
