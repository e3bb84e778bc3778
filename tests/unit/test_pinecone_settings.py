"""StoreClass.spec.vector.pinecone: kept raw by the StoreClass model, parsed by the Pinecone backend itself."""
from __future__ import annotations

import pytest

from tenantstore.backends.pinecone import PineconeSettings
from tenantstore.models import InvalidResource, SecretKeyRef, StoreClass


def class_body(vector: dict) -> dict:
    return {"metadata": {"name": "vectors"},
            "spec": {"postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}}, "vector": vector}}


def test_pinecone_settings_default_as_documented() -> None:
    store_class = StoreClass.from_body(class_body({"backend": "pinecone", "pinecone": {
        "apiKeySecretRef": {"name": "pinecone", "namespace": "ops"}}}))
    assert store_class.vector_backend == "pinecone"
    assert PineconeSettings.from_dict(store_class.vector_settings) == PineconeSettings(
        api_key_secret=SecretKeyRef("pinecone", "ops", "apiKey"), cloud="aws", region="us-east-1", host="",
        expose_api_key=False)


def test_pinecone_settings_take_what_the_class_says() -> None:
    settings = PineconeSettings.from_dict({"apiKeySecretRef": {"name": "pc", "namespace": "ops", "key": "k"},
                                           "cloud": "gcp", "region": "us-central1", "host": "https://proxy:8443",
                                           "exposeApiKey": True})
    assert (settings.api_key_secret.key, settings.cloud, settings.region, settings.host, settings.expose_api_key) \
        == ("k", "gcp", "us-central1", "https://proxy:8443", True)


def test_a_pinecone_class_without_its_secret_names_the_field() -> None:
    store_class = StoreClass.from_body(class_body({"backend": "pinecone"}))
    with pytest.raises(InvalidResource, match="spec.vector.pinecone.apiKeySecretRef"):
        PineconeSettings.from_dict(store_class.vector_settings)


def test_a_class_carries_only_its_own_backends_settings() -> None:
    assert StoreClass.from_body(class_body({"pinecone": {"cloud": "gcp"}})).vector_settings == {}
