"""Which Events a reconcile's steps become: routine steps folded into one, the notable ones kept apart."""
from __future__ import annotations

from tenantstore.backends import Step
from tenantstore.events import summarize

CREATE = [Step("RoleCreated", "role created"), Step("SchemaCreated", "schema created"),
          Step("NamespaceCreated", "namespace placed"), Step("IsolationVerified", "only its namespace"),
          Step("SecretWritten", "credentials written")]


def test_provisioning_a_tenant_is_one_event_that_lists_every_step() -> None:
    assert summarize(CREATE) == [Step("Provisioned", "role created; schema created; namespace placed; "
                                                     "only its namespace; credentials written")]


def test_notable_steps_keep_their_own_event_and_order() -> None:
    steps = [Step("SharedIndexCreated", "index 2 created"), *CREATE, Step("VectorsCopied", "5000 vectors copied")]
    assert [event.reason for event in summarize(steps)] == ["Provisioned", "SharedIndexCreated", "VectorsCopied"]


def test_a_single_routine_step_keeps_its_reason() -> None:
    step = Step("VectorAccessGranted", "may write again")
    assert summarize([step]) == [step]


def test_teardown_steps_fold_into_the_verification() -> None:
    steps = [Step("NamespaceDropped", "namespace dropped"), Step("RoleDropped", "role dropped"),
             Step("SecretDeleted", "Secret deleted"), Step("TeardownVerified", "nothing remains")]
    assert summarize(steps) == [Step("TeardownVerified", "namespace dropped; role dropped; Secret deleted; "
                                                         "nothing remains")]


def test_teardown_steps_without_a_verification_are_posted_as_they_are() -> None:
    steps = [Step("RoleDropped", "role dropped"), Step("SchemaDropped", "schema dropped")]
    assert summarize(steps) == steps
