"""Webhook bodies as the real services send them.

The `*_SAMPLE` bodies are copied verbatim from Microsoft's documentation
(https://learn.microsoft.com/power-apps/developer/data-platform/use-webhooks and
https://learn.microsoft.com/dynamics365/business-central/dev-itpro/api-reference/v2.0/dynamics-subscriptions);
do not "fix" them. The Delete/Create shapes are not documented: they are inferred (an EntityReference
target for Delete, OptionSetValue and Money values) and built here from the documented sample.
"""

# ruff: noqa: E501  (the samples are verbatim; their long lines stay as documented)

from __future__ import annotations

import json
from typing import Any

# use-webhooks: Update / contact / PostOperation / Asynchronous (ParentContext elided).
DATAVERSE_UPDATE_SAMPLE = r"""{
    "BusinessUnitId": "e2b9dd85-e89e-e711-8122-000d3aa2331c",
    "CorrelationId": "b374239d-4233-41a9-8b17-a86cb4f737b5",
    "Depth": 1,
    "InitiatingUserId": "75c2dd85-e89e-e711-8122-000d3aa2331c",
    "InputParameters": [{
        "key": "Target",
        "value": {
            "__type": "Entity:http:\/\/schemas.microsoft.com\/xrm\/2011\/Contracts",
            "Attributes": [{
                "key": "firstname",
                "value": "James"
            }, {
                "key": "contactid",
                "value": "6d81597f-0f9f-e711-8122-000d3aa2331c"
            }, {
                "key": "fullname",
                "value": "James Glynn (sample)"
            }, {
                "key": "yomifullname",
                "value": "James Glynn (sample)"
            }, {
                "key": "modifiedon",
                "value": "\/Date(1506384247000)\/"
            }, {
                "key": "modifiedby",
                "value": {
                    "__type": "EntityReference:http:\/\/schemas.microsoft.com\/xrm\/2011\/Contracts",
                    "Id": "75c2dd85-e89e-e711-8122-000d3aa2331c",
                    "KeyAttributes": [],
                    "LogicalName": "systemuser",
                    "Name": null,
                    "RowVersion": null
                }
            }, {
                "key": "modifiedonbehalfby",
                "value": null
            }],
            "EntityState": null,
            "FormattedValues": [],
            "Id": "6d81597f-0f9f-e711-8122-000d3aa2331c",
            "KeyAttributes": [],
            "LogicalName": "contact",
            "RelatedEntities": [],
            "RowVersion": null
        }
    }],
    "IsExecutingOffline": false,
    "IsInTransaction": false,
    "IsOfflinePlayback": false,
    "IsolationMode": 1,
    "MessageName": "Update",
    "Mode": 1,
    "OperationCreatedOn": "\/Date(1506409448000-0700)\/",
    "OperationId": "4af10637-4ea2-e711-8122-000d3aa2331c",
    "OrganizationId": "4ef5b371-e89e-e711-8122-000d3aa2331c",
    "OrganizationName": "OrgName",
    "OutputParameters": [],
    "OwningExtension": {
        "Id": "75417616-4ea2-e711-8122-000d3aa2331c",
        "KeyAttributes": [],
        "LogicalName": "sdkmessageprocessingstep",
        "Name": null,
        "RowVersion": null
    },
    "ParentContext": { "...": "same shape, Stage 30, with SharedVariables; elided" },
    "PostEntityImages": [{
        "key": "AsynchronousStepPrimaryName",
        "value": {
            "Attributes": [{
                "key": "fullname",
                "value": "James Glynn (sample)"
            }, {
                "key": "contactid",
                "value": "6d81597f-0f9f-e711-8122-000d3aa2331c"
            }],
            "EntityState": null,
            "FormattedValues": [],
            "Id": "6d81597f-0f9f-e711-8122-000d3aa2331c",
            "KeyAttributes": [],
            "LogicalName": "contact",
            "RelatedEntities": [],
            "RowVersion": null
        }
    }],
    "PreEntityImages": [],
    "PrimaryEntityId": "6d81597f-0f9f-e711-8122-000d3aa2331c",
    "PrimaryEntityName": "contact",
    "RequestId": null,
    "SecondaryEntityName": "none",
    "SharedVariables": [],
    "Stage": 40,
    "UserId": "75c2dd85-e89e-e711-8122-000d3aa2331c"
}
"""

# dynamics-subscriptions: three entries for three subscriptions, inconsistent leading slashes.
BC_NOTIFICATION_SAMPLE = r"""{
  "value": [
    {
      "subscriptionId": "webhookItemsId",
      "clientState": "someClientState",
      "expirationDateTime": "2018-10-29T07:52:31Z",
      "resource": "api/v2.0/companies(b18aed47-c385-49d2-b954-dbdf8ad71780)/items(26814998-936a-401c-81c1-0e848a64971d)",
      "changeType": "updated",
      "lastModifiedDateTime": "2018-10-26T12:54:20.467Z"
    },
    {
      "subscriptionId": "webhookCustomersId",
      "clientState": "someClientState",
      "expirationDateTime": "2018-10-29T12:50:30Z",
      "resource": "api/v2.0/companies(b18aed47-c385-49d2-b954-dbdf8ad71780)/customers(4b4f31f0-dc1c-4033-b2aa-ab03ca1d6ebc)",
      "changeType": "deleted",
      "lastModifiedDateTime": "2018-10-26T12:54:30.503Z"
    },
    {
      "subscriptionId": "salesInvoice",
      "clientState": "someClientState",
      "expirationDateTime": "2018-10-20T10:55:01Z",
      "resource": "/api/v2.0/companies(7dbba574-5f69-4167-a43e-fb975045de15)/salesInvoices?$filter=lastDateTimeModified%20gt%202018-10-15T11:00:00Z",
      "changeType": "collection",
      "lastModifiedDateTime": "2018-10-26T12:54:30.503Z"
    }
  ]
}
"""

DATAVERSE_SAMPLE_HEADERS = {
    "x-ms-dynamics-organization": "orgname.crm.dynamics.com",
    "x-ms-dynamics-entity-name": "contact",
    "x-ms-dynamics-request-name": "Update",
    "x-ms-correlation-request-id": "b374239d-4233-41a9-8b17-a86cb4f737b5",
}

# Removed from the body when the whole payload exceeds 256KB (use-webhooks).
SIZE_EXCEEDED_REMOVED = ("ParentContext", "InputParameters", "PreEntityImages", "PostEntityImages")


def dataverse_update() -> dict[str, Any]:
    return json.loads(DATAVERSE_UPDATE_SAMPLE)


def dataverse_size_exceeded_body() -> bytes:
    """The documented sample as it arrives after the 256KB cut."""
    context = dataverse_update()
    for member in SIZE_EXCEEDED_REMOVED:
        del context[member]
    return json.dumps(context).encode()


def dataverse_delete() -> dict[str, Any]:
    """A Delete of the sample contact: the Target is an EntityReference (inferred shape)."""
    context = dataverse_update()
    context["MessageName"] = "Delete"
    context["InputParameters"] = [
        {
            "key": "Target",
            "value": {
                "__type": "EntityReference:http://schemas.microsoft.com/xrm/2011/Contracts",
                "Id": context["PrimaryEntityId"],
                "KeyAttributes": [],
                "LogicalName": "contact",
                "Name": None,
                "RowVersion": None,
            },
        }
    ]
    context["PostEntityImages"] = []
    return context


def dataverse_create() -> dict[str, Any]:
    """A Create of an account with an OptionSetValue and a Money column (inferred shapes)."""
    context = dataverse_update()
    record_id = "0b1f4ac1-5c6e-4a0e-9a8b-3f2d1c0e9a77"
    context.update(MessageName="Create", PrimaryEntityName="account", PrimaryEntityId=record_id)
    context["InputParameters"] = [
        {
            "key": "Target",
            "value": {
                "__type": "Entity:http://schemas.microsoft.com/xrm/2011/Contracts",
                "Attributes": [
                    {"key": "name", "value": "Fourth Coffee"},
                    {"key": "accountid", "value": record_id},
                    {
                        "key": "customertypecode",
                        "value": {
                            "__type": "OptionSetValue:http://schemas.microsoft.com/xrm/2011/Contracts",
                            "Value": 3,
                        },
                    },
                    {
                        "key": "creditlimit",
                        "value": {
                            "__type": "Money:http://schemas.microsoft.com/xrm/2011/Contracts",
                            "Value": 5000.0,
                        },
                    },
                ],
                "Id": record_id,
                "LogicalName": "account",
            },
        }
    ]
    context["PostEntityImages"] = []
    return context
