"""The console (/console): pages for people, served by the API's own app."""
