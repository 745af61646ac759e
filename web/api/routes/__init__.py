"""One APIRouter per entity, aggregated in ``web.api.install_api``."""
