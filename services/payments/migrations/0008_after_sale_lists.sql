-- The operators' lists of disputes and early fraud warnings (issue 17): the open disputes, and the
-- recent ones of either kind, newest first, network-wide or one tenant's.
CREATE INDEX disputes_recent ON disputes (created_at DESC, dispute_id);
CREATE INDEX disputes_open ON disputes (created_at DESC) WHERE phase <> 'closed';
CREATE INDEX fraud_warnings_recent ON fraud_warnings (created_at DESC, warning_id);
