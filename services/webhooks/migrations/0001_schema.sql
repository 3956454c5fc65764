-- The webhooks schema exists from the start; its tables arrive with the webhooks issue.
SELECT 1;
