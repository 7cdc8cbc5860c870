-- No UNIQUE index on fingerprint (as SQLite's 0015): a fingerprint is the
-- SHA-256 of the DER, which holds the serial, so the serial's primary key
-- already refuses a certificate recorded twice, and no query looks a
-- certificate up by fingerprint. The index cost every certificate one
-- more index page written.
ALTER TABLE certs DROP CONSTRAINT IF EXISTS certs_fingerprint_key;
