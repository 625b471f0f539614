"""`python -m devtools.schema_registry`: serve the schema registry until interrupted."""

from adapters.settings import get_settings
from devtools.schema_registry.cli import serve

serve(get_settings())
