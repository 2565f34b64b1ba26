"""Tests for mesh.identity: SPIFFE IDs parse strictly and print back the same."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.identity import SpiffeId, check_trust_domain, parse

CHECKOUT = "spiffe://cluster.local/ns/shop/sa/checkout"


def test_parse_splits_the_uri_into_its_parts() -> None:
    assert parse(CHECKOUT) == SpiffeId(
        trust_domain="cluster.local", namespace="shop", service="checkout"
    )


def test_str_is_the_uri_and_principal_drops_the_scheme() -> None:
    spiffe_id = parse(CHECKOUT)
    assert str(spiffe_id) == CHECKOUT
    assert spiffe_id.principal == "cluster.local/ns/shop/sa/checkout"


def test_segments_may_use_the_spiffe_characters() -> None:
    uri = "spiffe://prod_1.example-mesh/ns/team.a/sa/Billing_v2-api"
    assert str(parse(uri)) == uri


def test_spiffe_ids_are_frozen_values() -> None:
    spiffe_id = parse(CHECKOUT)
    assert spiffe_id == parse(CHECKOUT)
    assert hash(spiffe_id) == hash(parse(CHECKOUT))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spiffe_id.service = "admin"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://cluster.local/ns/shop/sa/checkout", "scheme must be 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/shop/sa/checkout", "scheme must be 'spiffe://'"),
        ("spiffe://", "trust domain '' is empty"),
        ("spiffe:///ns/shop/sa/checkout", "trust domain '' is empty"),
        ("spiffe://Cluster.Local/ns/shop/sa/checkout", "lowercase"),
        ("spiffe://cluster.local:8443/ns/shop/sa/checkout", "lowercase"),
        ("spiffe://admin@cluster.local/ns/shop/sa/checkout", "lowercase"),
        ("spiffe://cluster.local", "there is no path"),
        ("spiffe://cluster.local/", "path '/' is not /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/ns/shop", "is not /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/ns/shop/sa/checkout/", "is not /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/ns/shop/sa/checkout/x", "is not /ns/<namespace>/sa/<service>"),
        ("spiffe://cluster.local/namespace/shop/sa/checkout", "is not /ns/"),
        ("spiffe://cluster.local/ns/shop/serviceaccount/checkout", "is not /ns/"),
        ("spiffe://cluster.local/ns//sa/checkout", "namespace '' is empty"),
        ("spiffe://cluster.local/ns/shop/sa/", "service '' is empty"),
        ("spiffe://cluster.local/ns/../sa/checkout", "namespace '..' may not be"),
        ("spiffe://cluster.local/ns/shop/sa/.", "service '.' may not be"),
        ("spiffe://cluster.local/ns/shop/sa/check out", "service 'check out' may hold only"),
        ("spiffe://cluster.local/ns/shop/sa/checkout?x=1", "may hold only"),
        ("spiffe://cluster.local/ns/shop/sa/checkout#frag", "may hold only"),
        ("spiffe://cluster.local/ns/shop/sa/" + "a" * 2048, "longer than 2048 bytes"),
    ],
)
def test_parse_rejects_and_names_the_input_and_the_reason(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match="invalid SPIFFE ID") as caught:
        parse(uri)
    message = str(caught.value)
    assert repr(uri) in message
    assert reason in message


def test_constructor_validates_each_field_by_name() -> None:
    with pytest.raises(ValueError, match=r"SpiffeId service='a/b': may hold only"):
        SpiffeId(trust_domain="cluster.local", namespace="shop", service="a/b")
    with pytest.raises(ValueError, match=r"SpiffeId trust_domain='': is empty"):
        SpiffeId(trust_domain="", namespace="shop", service="checkout")


def test_fields_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SpiffeId("cluster.local", "shop", "checkout")  # type: ignore[call-arg]


def test_check_trust_domain() -> None:
    assert check_trust_domain("prod.example-mesh") == "prod.example-mesh"
    with pytest.raises(ValueError, match=r"invalid trust domain 'mesh:443': may hold only"):
        check_trust_domain("mesh:443")
