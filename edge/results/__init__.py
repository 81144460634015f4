"""results.db: the one owner of the database every part of edge records to or reads from.

    schema.py    the tables, the migrations of an older database, how a connection is opened
    store.py     the daemon's writer: sessions, frames and cells, one transaction per frame
    sessions.py  recorded sessions and their cells, read by the page, the report, FHIR and the export
    reviews.py   a technician's reviews and the slide's sign-off
    sites.py     a session's microscope (the gate's decision, the scale) and the gate's flag on its cells
    outbox.py    what the MQTT broker has acknowledged

The daemon, the lab side and MQTT depend on this package and not on each other for the database; no
module outside it imports sqlite3 or holds SQL (tests/test_layout.py). It imports nothing of edge but
edge.catalogue and edge.errors.
"""
