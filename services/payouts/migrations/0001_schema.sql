-- The payouts schema exists from the start; its tables arrive with the payouts issue.
SELECT 1;
