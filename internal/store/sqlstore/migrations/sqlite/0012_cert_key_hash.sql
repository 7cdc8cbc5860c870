-- The certificates of a key, so that revoking one for keyCompromise
-- revokes every live certificate of the key (same-key renewals) in the
-- same transaction, by index rather than by a scan of every certificate.
-- key_hash '' (recorded before certificates carried it) is one more range.
CREATE INDEX certs_key_hash ON certs (key_hash, not_after);
