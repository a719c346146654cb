"""Moved to `shared.odata` (a base module: shared/mapping builds filters with it and may import no
layer). This re-export stays only for shared/sync/, which is being changed elsewhere right now;
point its imports at `shared.odata` and delete this file."""

from shared.odata import *  # noqa: F403
from shared.odata import Scalar as Scalar
