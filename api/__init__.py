"""The orchard HTTP API and the agronomists' page (FastAPI)."""
