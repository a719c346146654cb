"""Infrastructure shared by the Business Central and Dataverse sandboxes.

`odata_query` parses OData query options; `limits`, `faults`, `counters` and `control` hold service
protection, fault injection, request counting and the `/_sandbox` control surface.
"""
