-- The certificates of a key, so that revoking one for keyCompromise
-- revokes every live certificate of the key (same-key renewals) in the
-- same transaction, by index rather than by a scan of every certificate.
CREATE INDEX certs_key_hash ON certs (key_hash, not_after);
