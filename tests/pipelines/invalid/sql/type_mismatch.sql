SELECT resource_id, sum(account_id) AS s
FROM metrics
GROUP BY resource_id, tumble(interval '1 minute')
