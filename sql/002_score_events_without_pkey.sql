-- score_events loses its primary key. Every row is inserted in the transaction that claims
-- its event_id in event_ids (whose primary key is what makes an event apply once), so the
-- (event_id, accepted_at) key only repeated that check, at the price of one more random
-- b-tree insert per event on the ingest path. Nothing looks events up by id.
ALTER TABLE score_events DROP CONSTRAINT score_events_pkey;
