"""Names and label values are always valid, stable, and rarely collide."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from modelship_operator import labels, naming

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# A ModelDeployment name: any DNS-1123 subdomain, up to 253 characters.
_segment = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?\Z")
md_names = st.lists(_segment, min_size=1, max_size=8).map(".".join).filter(lambda s: len(s) <= 253)
# An MLflow model name: anything.
model_names = st.text(min_size=1, max_size=300)
versions = st.integers(min_value=1, max_value=10**40).map(str)


def assert_dns_label(name: str) -> None:
    assert len(name) <= 63, name
    assert DNS_1035.match(name), name


def assert_label_value(value: str) -> None:
    assert len(value) <= 63, value
    assert LABEL_VALUE.match(value), value


@pytest.mark.parametrize(
    ("md_name", "expected"),
    [
        ("iris", "iris"),
        ("fraud-detector", "fraud-detector"),
        ("a", "a"),
    ],
)
def test_valid_names_are_unchanged(md_name: str, expected: str) -> None:
    assert naming.service_name(md_name) == expected
    assert naming.deployment_name(md_name, "3") == f"{expected}-v3"
    assert naming.canary_service_name(md_name) == f"{expected}-canary"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iris-classifier", "iris-classifier"),
        ("Iris_Classifier.v2", "Iris_Classifier.v2"),
        ("3", "3"),
        ("", ""),
    ],
)
def test_valid_label_values_are_unchanged(text: str, expected: str) -> None:
    assert naming.label_value(text) == expected


@pytest.mark.parametrize(
    ("md_name", "version"),
    [
        ("x" * 253, "3"),
        ("a" * 61, "12"),
        ("1abc", "1"),
        ("my.model.v2", "7"),
        ("-", "1"),
        ("a" * 60, "9" * 80),
    ],
)
def test_shortened_names_are_valid_and_keep_the_version(md_name: str, version: str) -> None:
    svc = naming.service_name(md_name)
    dep = naming.deployment_name(md_name, version)
    assert_dns_label(svc)
    assert_dns_label(dep)
    if len(version) < 15:
        assert dep.endswith(f"-v{version}")
    assert svc != dep


def test_shortening_keeps_a_readable_prefix_and_a_hash() -> None:
    name = "a" * 100
    short = naming.service_name(name)
    assert short.startswith("a" * 50)
    assert short.endswith("-" + naming.short_hash(name))
    assert len(short) == 63


@pytest.mark.parametrize(
    "model_name",
    ["Iris Classifier", "team/iris", "Ïris-ünïcode-模型", "  spaces  ", "-x-", "a" * 300, "..."],
)
def test_odd_model_names_give_valid_label_values(model_name: str) -> None:
    value = naming.label_value(model_name)
    assert_label_value(value)
    assert value == naming.label_value(model_name)
    assert value != ""


@settings(max_examples=300, deadline=None)
@given(md_names, versions)
def test_child_names_always_valid_and_stable(md_name: str, version: str) -> None:
    for name in (
        naming.service_name(md_name),
        naming.canary_service_name(md_name),
        naming.deployment_name(md_name, version),
    ):
        assert_dns_label(name)
    assert naming.deployment_name(md_name, version) == naming.deployment_name(md_name, version)


@settings(max_examples=300, deadline=None)
@given(model_names)
def test_label_values_always_valid_and_stable(text: str) -> None:
    value = naming.label_value(text)
    assert_label_value(value)
    assert value == naming.label_value(text)
    assert value or not text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300))
def test_dns_label_of_anything_is_valid(text: str, suffix: str) -> None:
    assert_dns_label(naming.dns_label(text, suffix))


@settings(max_examples=200, deadline=None)
@given(md_names, md_names)
def test_distinct_names_do_not_collide(a: str, b: str) -> None:
    if a != b:
        assert naming.service_name(a) != naming.service_name(b)
        assert naming.deployment_name(a, "1") != naming.deployment_name(b, "1")
        assert naming.label_value(a) != naming.label_value(b)


@settings(max_examples=200, deadline=None)
@given(model_names, model_names)
def test_distinct_model_names_do_not_collide(a: str, b: str) -> None:
    if a != b:
        assert naming.label_value(a) != naming.label_value(b)


def test_near_misses_stay_distinct() -> None:
    """Names that clean to the same text differ by their hash."""
    names = ["Iris Classifier", "iris classifier", "iris_classifier ", "iris/classifier"]
    values = {naming.label_value(n) for n in names}
    assert len(values) == len(names)
    long_names = ["x" * 200 + str(i) for i in range(50)]
    assert len({naming.service_name(n) for n in long_names}) == 50


def test_selectors_use_cleaned_values() -> None:
    name = "m" * 100
    assert labels.deployment_selector(name) == {labels.DEPLOYMENT: naming.label_value(name)}
    assert_label_value(labels.version_selector(name, "3")[labels.DEPLOYMENT])
