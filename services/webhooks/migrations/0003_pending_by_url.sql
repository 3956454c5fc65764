-- Claims walk the endpoints that have pending deliveries (a loose index scan over url) and take
-- each one's oldest due rows, so a claim costs the same whatever the size of the backlog.
CREATE INDEX deliveries_pending_url ON deliveries (url, next_attempt_at) WHERE status = 'pending';
