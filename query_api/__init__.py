"""The thin Starlette API over the read models."""
