-- The ledger schema exists from the start; its tables arrive with the ledger issue.
SELECT 1;
