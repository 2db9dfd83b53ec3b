-- A client key may carry a signing secret: its submissions must then be signed with
-- HMAC-SHA256 (service/signing.py). The server needs the secret itself to check a
-- signature, so unlike the key it is not stored hashed; it is shown once at creation.
ALTER TABLE api_keys ADD COLUMN signing_secret text;
