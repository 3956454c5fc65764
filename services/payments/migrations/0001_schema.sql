-- The payments schema exists from the start; its tables arrive with the payments issue.
SELECT 1;
