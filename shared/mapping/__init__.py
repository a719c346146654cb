"""Mappings as config: the schema, the loader and the value rules `reconcile` builds on."""

from shared.mapping.loader import DEFAULT_MAPPING_FILE, MappingFileError, load_mapping_set, parse_mapping_set
from shared.mapping.lookups import Lookups, StaticLookups
from shared.mapping.queries import (
    LookupKey,
    LookupNeed,
    in_scope,
    lookup_keys,
    lookup_needs,
    match_queries,
    modified_field,
    primary_key,
    scope_filter,
    select_fields,
)
from shared.mapping.schema import (
    EntityMapping,
    FieldMapping,
    MappingSet,
    MappingSettings,
    OptionSetMapping,
    Side,
)
from shared.mapping.values import MissingLookup, RecordShapeError, TranslationError, dataverse_id_for

__all__ = [
    "DEFAULT_MAPPING_FILE",
    "EntityMapping",
    "FieldMapping",
    "LookupKey",
    "LookupNeed",
    "Lookups",
    "MappingFileError",
    "MappingSet",
    "MappingSettings",
    "MissingLookup",
    "OptionSetMapping",
    "RecordShapeError",
    "Side",
    "StaticLookups",
    "TranslationError",
    "dataverse_id_for",
    "in_scope",
    "load_mapping_set",
    "lookup_keys",
    "lookup_needs",
    "match_queries",
    "modified_field",
    "parse_mapping_set",
    "primary_key",
    "scope_filter",
    "select_fields",
]
