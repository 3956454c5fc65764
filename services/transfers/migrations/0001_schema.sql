-- The transfers schema exists from the start; its tables arrive with the transfers issue.
SELECT 1;
