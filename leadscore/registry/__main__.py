"""`python -m leadscore.registry`: serve the schema registry until interrupted."""

from leadscore.registry.cli import serve
from leadscore.settings import get_settings

serve(get_settings())
