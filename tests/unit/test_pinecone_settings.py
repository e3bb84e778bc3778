"""StoreClass.spec.vector.pinecone parsed into PineconeSettings, with the defaults the CRD documents."""
from __future__ import annotations

import pytest

from tenantstore.models import InvalidResource, PineconeSettings, SecretKeyRef, StoreClass


def class_body(vector: dict) -> dict:
    return {"metadata": {"name": "vectors"},
            "spec": {"postgres": {"adminSecretRef": {"name": "pg-admin", "namespace": "ops"}}, "vector": vector}}


def test_pinecone_settings_default_as_documented() -> None:
    store_class = StoreClass.from_body(class_body({"backend": "pinecone", "pinecone": {
        "apiKeySecretRef": {"name": "pinecone", "namespace": "ops"}}}))
    assert store_class.vector_backend == "pinecone"
    assert store_class.pinecone == PineconeSettings(api_key_secret=SecretKeyRef("pinecone", "ops", "apiKey"),
                                                    cloud="aws", region="us-east-1", host="", expose_api_key=False)


def test_pinecone_settings_take_what_the_class_says() -> None:
    settings = PineconeSettings.from_dict({"apiKeySecretRef": {"name": "pc", "namespace": "ops", "key": "k"},
                                           "cloud": "gcp", "region": "us-central1", "host": "https://proxy:8443",
                                           "exposeApiKey": True})
    assert (settings.api_key_secret.key, settings.cloud, settings.region, settings.host, settings.expose_api_key) \
        == ("k", "gcp", "us-central1", "https://proxy:8443", True)


def test_a_pinecone_class_without_its_secret_names_the_field() -> None:
    with pytest.raises(InvalidResource, match="spec.vector.pinecone.apiKeySecretRef"):
        StoreClass.from_body(class_body({"backend": "pinecone"}))


def test_pgvector_classes_carry_no_pinecone_settings() -> None:
    assert StoreClass.from_body(class_body({"pinecone": {"cloud": "gcp"}})).pinecone is None
